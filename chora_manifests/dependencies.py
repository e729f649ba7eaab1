"""Capability dependencies checked against what the registry (or a directory of
manifests) holds. Pure: no I/O. ``manifest deps`` asks it about the registry,
``manifest validate`` about the files about to be committed: one set of rules.

Each capability declares ``dependencies`` (contract section 2): ``{capability, version,
relationship}`` where ``version`` is an npm-style range (``^1.0.0``, ``~1.2``,
``>=1.0.0 <2``, ``*``). A requirement is *satisfied* when the registry holds the
capability at a version inside the range, *unsatisfied* when it holds another version,
*missing* when it holds no such capability, and *invalid* when the range or the held
version cannot be read. Ranges are matched by node-semver (npm's own rules, including
"a pre-release only matches a range that names that pre-release"), never by hand.

``tree(capabilities, root)`` walks the requirements transitively and names every cycle
it meets; ``dependents(capabilities, ns)`` answers the reverse question.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import nodesemver

Status = Literal["satisfied", "unsatisfied", "missing", "invalid"]
STATUSES: tuple[Status, ...] = ("satisfied", "unsatisfied", "missing", "invalid")
ANY_VERSION = "*"


@dataclass(frozen=True)
class Dependency:
    """One declared requirement: ``capability`` at a version in ``range``."""

    capability: str
    range: str = ANY_VERSION
    relationship: str = "requires"

    @classmethod
    def parse(cls, item: Any) -> Dependency | None:
        """A dependency as the registry stores it (a dict, or a bare namespace string);
        ``None`` for an item that names no capability."""
        if isinstance(item, str):
            return cls(item.strip()) if item.strip() else None
        if not isinstance(item, Mapping) or not str(item.get("capability") or "").strip():
            return None
        version = item.get("version")
        return cls(capability=str(item["capability"]).strip(),
                   range=str(version).strip() if version not in (None, "") else ANY_VERSION,
                   relationship=str(item.get("relationship") or "requires"))


@dataclass(frozen=True)
class Capability:
    namespace: str
    version: str | None
    dependencies: tuple[Dependency, ...] = ()

    @classmethod
    def from_view(cls, view: Mapping[str, Any]) -> Capability:
        """From a ``GET /v1/capabilities`` item (``{namespace, version, dependencies}``)."""
        raw = view.get("dependencies") or []
        found = (Dependency.parse(item) for item in (raw if isinstance(raw, list) else []))
        version = view.get("version")
        return cls(namespace=str(view["namespace"]),
                   version=str(version) if version not in (None, "") else None,
                   dependencies=tuple(d for d in found if d is not None))


def index(views: Iterable[Mapping[str, Any]]) -> dict[str, Capability]:
    """Capability views (the API's list) → ``{namespace: Capability}``."""
    return {c.namespace: c for c in (Capability.from_view(v) for v in views)}


@dataclass(frozen=True)
class Check:
    """One requirement checked: what was asked, what the registry holds, the verdict."""

    dependency: Dependency
    held: str | None
    status: Status
    reason: str


@functools.lru_cache(maxsize=4096)
def check_range(range_: str, version: str | None) -> tuple[Status, str]:
    """``(status, reason)`` for a held ``version`` (``None``: not in the registry)
    against an npm-style ``range_``. Remembered: node-semver takes ~0.3 ms to parse a
    range, a registry of 1,000 capabilities asks about a few dozen pairs 3,000 times."""
    range_ = range_.strip() or ANY_VERSION
    if nodesemver.valid_range(range_, loose=False) is None:
        return "invalid", f"{range_!r} is not a version range"
    if version is None:
        return "missing", "not in the registry"
    if nodesemver.valid(version, loose=False) is None:
        return "invalid", f"the registry holds {version!r}, which is not a SemVer version"
    if nodesemver.satisfies(version, range_, loose=False):
        return "satisfied", f"{version} satisfies {range_}"
    return "unsatisfied", f"{version} does not satisfy {range_}"


def check(dependency: Dependency, capabilities: Mapping[str, Capability]) -> Check:
    target = capabilities.get(dependency.capability)
    if target is not None and target.version is None:
        return Check(dependency, None, "invalid", "the registry holds it without a version")
    held = target.version if target is not None else None
    status, reason = check_range(dependency.range, held)
    return Check(dependency, held, status, reason)


@dataclass(frozen=True)
class Node:
    """A capability in the tree, reached through ``via`` (``None`` at the root).

    ``cycle`` is set when this requirement leads back to a capability already on the
    path: the path from it back to itself (``("a", "b", "a")``), not expanded again.
    ``repeated`` is set when the capability was already expanded elsewhere in the tree
    (npm's "deduped"): its requirements are listed there, keeping the tree linear in size.
    """

    namespace: str
    version: str | None
    via: Check | None = None
    children: tuple[Node, ...] = ()
    cycle: tuple[str, ...] | None = None
    repeated: bool = False


@dataclass(frozen=True)
class Report:
    root: Node
    cycles: tuple[tuple[str, ...], ...]
    counts: dict[str, int] = field(default_factory=dict)
    """How many requirements in the tree got each status."""

    @property
    def ok(self) -> bool:
        return not self.cycles and all(self.counts.get(s, 0) == 0 for s in STATUSES[1:])


def tree(capabilities: Mapping[str, Capability], root: str) -> Report:
    """The dependency tree under ``root`` (which must be in ``capabilities``)."""
    expanded: set[str] = set()
    cycles: list[tuple[str, ...]] = []
    rings: set[tuple[str, ...]] = set()
    counts = dict.fromkeys(STATUSES, 0)

    def walk(namespace: str, via: Check | None, path: tuple[str, ...]) -> Node:
        capability = capabilities.get(namespace)
        version = capability.version if capability else None
        if namespace in path:
            cycle = (*path[path.index(namespace):], namespace)
            if _ring(cycle) not in rings:
                rings.add(_ring(cycle))
                cycles.append(cycle)
            return Node(namespace, version, via, cycle=cycle)
        if capability is None:
            return Node(namespace, None, via)
        if namespace in expanded:
            return Node(namespace, version, via, repeated=bool(capability.dependencies))
        expanded.add(namespace)
        children = []
        for dependency in capability.dependencies:
            checked = check(dependency, capabilities)
            counts[checked.status] += 1
            children.append(walk(dependency.capability, checked, (*path, namespace)))
        return Node(namespace, version, via, tuple(children))

    if root not in capabilities:
        raise KeyError(root)
    top = walk(root, None, ())
    return Report(top, tuple(cycles), counts)


def cycles(capabilities: Mapping[str, Capability]) -> list[tuple[str, ...]]:
    """Every dependency cycle among ``capabilities`` (each once, whichever member it is
    entered at; at least one per strongly connected group), by a depth-first walk that
    is linear in the number of requirements."""
    found: list[tuple[str, ...]] = []
    rings: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(capabilities):
        if start in state:
            continue
        path: list[str] = [start]
        state[start] = 1
        stack = [iter(_targets(capabilities, start))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(target) == 1:
                cycle = (*path[path.index(target):], target)
                if _ring(cycle) not in rings:
                    rings.add(_ring(cycle))
                    found.append(cycle)
            elif target not in state and target in capabilities:
                state[target] = 1
                path.append(target)
                stack.append(iter(_targets(capabilities, target)))
    return found


def _targets(capabilities: Mapping[str, Capability], namespace: str) -> list[str]:
    return sorted({d.capability for d in capabilities[namespace].dependencies})


def _ring(cycle: tuple[str, ...]) -> tuple[str, ...]:
    """One name for a cycle wherever it was entered: ``a → b → a`` and ``b → a → b``
    are both ``(a, b)`` (its members rotated to start at the smallest; a cycle found
    on a walk's path names each member once)."""
    ring = cycle[:-1]
    first = ring.index(min(ring))
    return ring[first:] + ring[:first]


@dataclass(frozen=True)
class Dependent:
    """``namespace`` (at ``version``) requires the capability asked about: ``check``."""

    namespace: str
    version: str | None
    check: Check


def dependents(capabilities: Mapping[str, Capability], namespace: str) -> list[Dependent]:
    """Every capability that declares a requirement on ``namespace``, sorted by name."""
    found = []
    for capability in sorted(capabilities.values(), key=lambda c: c.namespace):
        for dependency in capability.dependencies:
            if dependency.capability == namespace:
                found.append(Dependent(capability.namespace, capability.version,
                                       check(dependency, capabilities)))
    return found


def format_cycle(cycle: Iterable[str]) -> str:
    return " → ".join(cycle)


def node_to_json(node: Node) -> dict[str, Any]:
    """The tree as plain data, for ``manifest deps -o json``."""
    out: dict[str, Any] = {"capability": node.namespace, "version": node.version}
    if node.via is not None:
        out.update(range=node.via.dependency.range,
                   relationship=node.via.dependency.relationship,
                   status=node.via.status, reason=node.via.reason)
    if node.cycle:
        out["cycle"] = list(node.cycle)
    if node.repeated:
        out["repeated"] = True
    out["dependencies"] = [node_to_json(child) for child in node.children]
    return out


def report_to_json(report: Report) -> dict[str, Any]:
    return {"tree": node_to_json(report.root), "cycles": [list(c) for c in report.cycles],
            "counts": report.counts, "ok": report.ok}


def dependent_to_json(dependent: Dependent) -> dict[str, Any]:
    c = dependent.check
    return {"capability": dependent.namespace, "version": dependent.version,
            "range": c.dependency.range, "relationship": c.dependency.relationship,
            "held": c.held, "status": c.status, "reason": c.reason}
