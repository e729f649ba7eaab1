"""``manifest``: the registry from a terminal (seed 000's CLI, plus watch and dependencies).

Tables for people, ``-o json`` for scripts. Exit codes: 0 done, 1 not found (or the
registry refused the request or the token), 2 registry unreachable (no URL answered)
or a bad ``--url`` / ``--cacert``; the error is one line on stderr. ``MANIFEST_URL``
(one URL or several, comma-separated, tried in turn) defaults to http://localhost:8500;
``MANIFEST_TOKEN`` (or ``MANIFEST_AUTH_TOKEN``) is the bearer token, ``MANIFEST_CACERT``
the CA bundle for https URLs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from chora_manifest_client import authoring, render
from chora_manifest_client.client import ManifestClient
from chora_manifest_client.credentials import CACERT_VAR, TOKEN_VARS
from chora_manifest_client.endpoints import DEFAULT_URL
from chora_manifest_client.errors import (
    CapabilityNotFoundError,
    ManifestAuthError,
    ManifestError,
    NotFoundError,
    RegistryUnavailableError,
)
from chora_manifest_client.events import RESYNC, WatchEvent
from chora_manifests import dependencies as deps

EXIT_NOT_FOUND = 1
EXIT_UNREACHABLE = 2

app = typer.Typer(
    name="manifest",
    help="Query the chora registry (SAP-044): services, capabilities, dependencies; "
         "and check manifests before committing them (validate, schema: offline).\n\n"
         "Exit codes: 0 ok, 1 not found or refused (validate: problems found), 2 registry "
         "unreachable (validate: no such path).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Output(StrEnum):
    table = "table"
    json = "json"


class CapabilityType(StrEnum):
    service = "service"
    pattern = "pattern"


OutputOption = Annotated[Output, typer.Option(
    "--output", "-o", help="table for people, json for scripts.")]


@dataclass(frozen=True)
class Settings:
    url: str
    timeout: float
    token: str | None
    cacert: str | None = None


def _console() -> Console:
    # Piped output gets wide lines, so `manifest list | grep` sees whole rows.
    return Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=160)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[ManifestClient]:
    """The client for this command; registry errors become one line and an exit code."""
    settings: Settings = ctx.obj
    try:
        client = ManifestClient(settings.url, auth_token=settings.token,
                                timeout=settings.timeout, cacert=settings.cacert)
    except ValueError as exc:
        said = str(exc)
        flag = ("--cacert / MANIFEST_CACERT" if said.startswith("cacert")
                else "--token / MANIFEST_TOKEN" if said.startswith("auth_token")
                else "--url / MANIFEST_URL")
        _fail(f"{flag}: {said}", EXIT_UNREACHABLE)
    try:
        with client:
            yield client
    except ManifestAuthError as exc:
        hint = " (set MANIFEST_TOKEN or --token)" if exc.status_code == 401 else ""
        _fail(f"the registry refused: {exc}{hint}", EXIT_NOT_FOUND)
    except NotFoundError as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except RegistryUnavailableError as exc:
        _fail(f"registry unreachable at {', '.join(client.urls)}: {exc}", EXIT_UNREACHABLE)
    except ManifestError as exc:
        _fail(str(exc), EXIT_NOT_FOUND)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(
        "--url", envvar="MANIFEST_URL",
        help="Registry URL; several comma-separated are tried in turn.")] = DEFAULT_URL,
    timeout: Annotated[float, typer.Option(help="Seconds per request to one URL.")] = 5.0,
    token: Annotated[str | None, typer.Option(
        envvar=list(TOKEN_VARS), help="Bearer token, if the registry wants one "
        "(MANIFEST_AUTH_TOKEN is read too).", show_default=False)] = None,
    cacert: Annotated[str | None, typer.Option(
        envvar=CACERT_VAR, help="PEM CA bundle to verify https registry URLs with "
        "(default: the system's trust store).", show_default=False)] = None,
) -> None:
    """Query the chora registry (SAP-044)."""
    ctx.obj = Settings(url, timeout, token, cacert)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = Output.table) -> None:
    """List every registered service instance."""
    with _client(ctx) as client:
        found = client.list_services()
    _show_instances(found, output)


@app.command()
def get(ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="The service name.")],
        output: OutputOption = Output.table) -> None:
    """Show the instances of one service.

    Exit 1 if none is registered. -o json prints the registry's answer: the record, or
    a list when several instances run."""
    with _client(ctx) as client:
        answer = client.get_service(name)
    if output is Output.json:
        _print_json(answer)
    else:
        _console().print(render.instances(answer if isinstance(answer, list) else [answer]))


@app.command()
def query(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        help="up, unhealthy or unknown.", show_default=False)] = None,
    tag: Annotated[str | None, typer.Option(
        help="Only instances with this tag.", show_default=False)] = None,
    dependency: Annotated[str | None, typer.Option(
        help="Only instances depending on this name.", show_default=False)] = None,
    output: OutputOption = Output.table,
) -> None:
    """List the instances matching every filter given.

    Example: manifest query --status up --tag core"""
    with _client(ctx) as client:
        found = client.list_services(status=status, tag=tag, dependency=dependency)
    _show_instances(found, output)


def _show_instances(found: list[dict[str, Any]], output: Output) -> None:
    if output is Output.json:
        _print_json(found)
    elif not found:
        typer.echo("no service instances")
    else:
        _console().print(render.instances(found))


@app.command()
def watch(
    ctx: typer.Context,
    since: Annotated[int | None, typer.Option(
        help="Replay changes after this revision (X-Registry-Index) first.",
        show_default=False)] = None,
    count: Annotated[int | None, typer.Option(
        help="Exit after this many changes (a resync is not a change).",
        show_default=False)] = None,
    output: Annotated[Output, typer.Option(
        "--output", "-o", help="table: one line per change; json: one JSON object per line."
    )] = Output.table,
) -> None:
    """Print each change to the registered instances as it happens.

    Runs until Ctrl-C (or --count changes). Reconnects by itself when the registry
    restarts, resuming from the last revision seen; exits 2 only if the registry cannot
    be reached at start."""
    console = _console()
    shown = 0

    def print_event(event: WatchEvent) -> None:
        if output is Output.json:
            typer.echo(json.dumps({"kind": event.kind, "revision": event.revision,
                                   "removed": event.removed, "record": event.record,
                                   "records": event.records}, default=str))
        else:
            console.print(render.event_line(event), soft_wrap=True)
        sys.stdout.flush()

    def disconnected(reason: str) -> None:
        typer.echo(f"(disconnected, reconnecting: {' '.join(reason.split())})", err=True)

    if count is not None and count <= 0:
        return
    with _client(ctx) as client:
        try:
            for event in client.watch(since=since, on_disconnect=disconnected):
                print_event(event)
                if event.kind != RESYNC:
                    shown += 1
                    if count is not None and shown >= count:
                        return
        except KeyboardInterrupt:
            return


@app.command()
def capabilities(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Argument(
        help="Show this capability only (exit 1 if unknown).", show_default=False)] = None,
    type_: Annotated[CapabilityType | None, typer.Option(
        "--type", help="Only services or only patterns.", show_default=False)] = None,
    output: OutputOption = Output.table,
) -> None:
    """List the capabilities declared in git, or show one."""
    with _client(ctx) as client:
        if namespace is not None:
            views = [client.get_capability(namespace)]
        else:
            views = client.list_capabilities(type=type_.value if type_ else None)
    if output is Output.json:
        _print_json(views[0] if namespace is not None else views)
    elif not views:
        typer.echo("no capabilities")
    else:
        console = _console()
        console.print(render.capabilities(views))
        if namespace is not None and views[0].get("instances"):
            console.print(render.instances(views[0]["instances"], title="instances"))


def _capability_index(client: ManifestClient, root: str | None = None
                      ) -> dict[str, deps.Capability]:
    found = deps.index(client.list_capabilities())
    if root is not None:
        found[root] = deps.Capability.from_view(client.get_capability(root))
    return found


@app.command("deps")
def deps_(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="The capability namespace.")],
    output: OutputOption = Output.table,
) -> None:
    """Show a capability's dependency tree, each range checked.

    Each npm-style range (^1.0.0, ~1.2, >=1.0.0 <2, *) is checked against the version the
    registry holds: satisfied, unsatisfied, missing or invalid. Cycles are named. With
    -o json, "ok" is false when anything is not satisfied or a cycle exists."""
    with _client(ctx) as client:
        report = deps.tree(_capability_index(client, root=namespace), namespace)
    if output is Output.json:
        _print_json(deps.report_to_json(report))
        return
    console = _console()
    console.print(render.dependency_tree(report))
    console.print(render.dependency_summary(report))


@app.command()
def dependents(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="The capability namespace.")],
    output: OutputOption = Output.table,
) -> None:
    """List what depends on a capability.

    The capabilities declaring it as a dependency (with their range checked against its
    version), and the service instances naming it in metadata.dependencies. Exit 1 if
    it is neither a capability nor depended on."""
    with _client(ctx) as client:
        index = _capability_index(client)
        found = deps.dependents(index, namespace)
        instances = client.list_services(dependency=namespace)
        if namespace not in index and not found and not instances:
            raise CapabilityNotFoundError(
                f"{namespace!r}: no such capability, and nothing depends on it")
    if output is Output.json:
        _print_json({"capability": namespace,
                     "version": index[namespace].version if namespace in index else None,
                     "capabilities": [deps.dependent_to_json(d) for d in found],
                     "instances": instances})
        return
    console = _console()
    if found:
        console.print(render.dependents(namespace, found))
    else:
        typer.echo(f"no capability depends on {namespace}")
    if instances:
        console.print(render.instances(instances, title=f"instances that depend on {namespace}"))
    else:
        typer.echo(f"no service instance depends on {namespace}")


authoring.register(app)  # validate, schema: offline, for people writing manifests


if __name__ == "__main__":
    app()
