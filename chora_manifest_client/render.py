"""What the CLI shows people: rich tables and trees. Pure formatting, no registry calls.

Scripts use ``-o json`` instead, which prints the registry's data unchanged (or, for
``deps``/``dependents``, the checked data of ``deps.py``), so this module is free to
change how things look.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from chora_manifest_client import records
from chora_manifest_client.events import RESYNC, WatchEvent
from chora_manifests import dependencies as deps

STATUS_STYLE = {"up": "green", "unhealthy": "yellow", "unknown": "magenta", "down": "red",
                "healthy": "green", "degraded": "yellow"}
CHECK_STYLE = {"satisfied": ("✓", "green"), "unsatisfied": ("✗", "red"),
               "missing": ("?", "red"), "invalid": ("!", "magenta")}
NONE = "—"


def status(value: Any) -> Text:
    text = str(value) if value not in (None, "") else NONE
    return Text(text, style=STATUS_STYLE.get(text.strip(), ""))


def _interfaces(record: Mapping[str, Any]) -> str:
    found = record.get("interfaces")
    if not isinstance(found, Mapping):
        return NONE
    return " ".join(f"{k}={v}" for k, v in found.items()) or NONE


def instances(items: Iterable[Mapping[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for header in ("NAME", "ID", "VERSION"):
        table.add_column(header, no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("INTERFACES")
    table.add_column("TAGS")
    table.add_column("LAST HEARTBEAT", no_wrap=True)
    for r in items:
        table.add_row(str(r.get("name", NONE)), str(r.get("id", NONE)),
                      str(r.get("version") or NONE), status(r.get("status")),
                      _interfaces(r), ", ".join(records.tags(r)) or NONE,
                      str(r.get("last_heartbeat") or NONE))
    return table


def _health_of(view: Mapping[str, Any]) -> Any:
    health = view.get("health")
    return health.get("status") if isinstance(health, Mapping) else health


def capabilities(views: Iterable[Mapping[str, Any]]) -> Table:
    table = Table()
    for header in ("NAMESPACE", "TYPE", "VERSION"):
        table.add_column(header, no_wrap=True)
    table.add_column("HEALTH", no_wrap=True)
    table.add_column("INSTANCES", justify="right")
    table.add_column("DEPENDS ON")
    for v in views:
        wanted = [d.capability for d in deps.Capability.from_view(v).dependencies]
        listed = v.get("instances")
        table.add_row(str(v.get("namespace")), str(v.get("type") or NONE),
                      str(v.get("version") or NONE), status(_health_of(v)),
                      str(len(listed)) if isinstance(listed, list) else NONE,
                      ", ".join(wanted) or NONE)
    return table


def _check_label(node: deps.Node) -> Text:
    held = node.version or NONE
    if node.via is None:
        return Text.assemble((node.namespace, "bold"), f" {held}")
    c = node.via
    mark, style = CHECK_STYLE[c.status]
    label = Text.assemble((f"{mark} ", style), (node.namespace, "bold"),
                          f" {c.dependency.range} → {c.held or 'not in the registry'}  ",
                          (c.status, style), f"  ({c.dependency.relationship})")
    if node.cycle:
        label.append(f"  cycle: {deps.format_cycle(node.cycle)}", style="bold red")
    elif node.repeated:
        label.append("  (requirements listed above)", style="dim")
    return label


def dependency_tree(report: deps.Report) -> Tree:
    def add(branch: Tree, node: deps.Node) -> None:
        for child in node.children:
            add(branch.add(_check_label(child)), child)

    top = Tree(_check_label(report.root))
    add(top, report.root)
    return top


def dependency_summary(report: deps.Report) -> Text:
    parts = [f"{report.counts.get(s, 0)} {s}" for s in deps.STATUSES if report.counts.get(s)]
    text = Text(", ".join(parts) or "no dependencies")
    for cycle in report.cycles:
        text.append(f"\ncycle: {deps.format_cycle(cycle)}", style="bold red")
    return text


def dependents(namespace: str, found: Iterable[deps.Dependent]) -> Table:
    table = Table(title=f"capabilities that depend on {namespace}", title_justify="left")
    for header in ("CAPABILITY", "VERSION", "RELATIONSHIP", "RANGE", "HOLDS", "STATUS"):
        table.add_column(header, no_wrap=True)
    for d in found:
        _, style = CHECK_STYLE[d.check.status]
        table.add_row(d.namespace, d.version or NONE, d.check.dependency.relationship,
                      d.check.dependency.range, d.check.held or NONE,
                      Text(d.check.status, style=style))
    return table


def event_line(event: WatchEvent) -> Text:
    revision = f"rev {event.revision}" if event.revision is not None else "rev ?"
    if event.kind == RESYNC:
        count = len(event.records or [])
        return Text.assemble((f"{revision:<12}", "dim"), ("resync", "bold"),
                             f"  {count} instance(s) registered")
    r = event.record
    if r is None:
        return Text.assemble((f"{revision:<12}", "dim"), (event.kind, "bold"), f"  {event.data}")
    shown = "down" if event.removed else str(r.get("status"))
    return Text.assemble((f"{revision:<12}", "dim"), status(f"{shown:<10}"), "  ",
                         (f"{r.get('name')}/{r.get('id')}", "bold"),
                         f"  {r.get('version') or ''}  {_interfaces(r)}")
