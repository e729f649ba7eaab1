"""The project's own manifests in ``capabilities/``: they load, and their graph is sound."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chora_manifests import Capability, is_manifest_name, load

ROOT = Path(__file__).resolve().parents[2] / "capabilities"
REQUIRED_SERVICES = ("chora.devex.registry", "chora.awareness.sap_self_evaluation")

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def _parse(version: str) -> tuple[int, int, int, str]:
    m = _VERSION.fullmatch(version.strip().removeprefix("v"))
    if not m:
        raise ValueError(f"not a version: {version!r}")
    return int(m[1]), int(m[2]), int(m[3]), m[4] or ""


def _key(version: str) -> tuple[int, int, int, int, str]:
    major, minor, patch, pre = _parse(version)
    # A pre-release sorts below its release (1.0.0-rc.1 < 1.0.0).
    return major, minor, patch, 0 if pre else 1, pre


def satisfies(version: str, spec: str) -> bool:
    """A small npm range checker: ``*``/empty, exact, ``^``, ``~``, comparators
    (``>=`` ``>`` ``<=`` ``<`` ``=``), space-separated intersections, ``||`` unions."""
    spec = spec.strip()
    if "||" in spec:
        return any(satisfies(version, part) for part in spec.split("||"))
    parts = spec.split()
    if len(parts) > 1:
        return all(satisfies(version, part) for part in parts)
    if spec in ("", "*", "x", "latest"):
        return True
    v = _key(version)
    if spec.startswith("^"):
        major, minor, patch, _ = _parse(spec[1:])
        low = _key(spec[1:])
        if major:
            high = (major + 1, 0, 0, 0, "")
        elif minor:
            high = (0, minor + 1, 0, 0, "")
        else:
            high = (0, 0, patch + 1, 0, "")
        return low <= v < high
    if spec.startswith("~"):
        major, minor, _, _ = _parse(spec[1:])
        return _key(spec[1:]) <= v < (major, minor + 1, 0, 0, "")
    for op in (">=", "<=", ">", "<", "="):
        if spec.startswith(op):
            other = _key(spec[len(op):])
            return {
                ">=": v >= other, "<=": v <= other, ">": v > other, "<": v < other,
                "=": v == other,
            }[op]
    return v == _key(spec)


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("1.2.3", "*", True),
        ("1.2.3", "1.2.3", True),
        ("1.2.4", "1.2.3", False),
        ("1.9.0", "^1.2.0", True),
        ("2.0.0", "^1.2.0", False),
        ("1.1.9", "^1.2.0", False),
        ("0.3.5", "^0.3.0", True),
        ("0.4.0", "^0.3.0", False),
        ("1.2.9", "~1.2.0", True),
        ("1.3.0", "~1.2.0", False),
        ("3.0.0", ">=1.0.0", True),
        ("0.9.9", ">=1.0.0", False),
        ("1.5.0", ">=1.0.0 <2.0.0", True),
        ("2.5.0", "^1.0.0 || ^2.0.0", True),
        ("1.0.0-rc.1", ">=1.0.0", False),
    ],
)
def test_range_checker_follows_npm_semantics(version: str, spec: str, expected: bool) -> None:
    assert satisfies(version, spec) is expected


@pytest.fixture(scope="module")
def capabilities() -> dict[str, Capability]:
    files = sorted(p for p in ROOT.iterdir() if is_manifest_name(p.name))
    caps = [load(p, ROOT) for p in files]  # raises ManifestError naming a broken file
    by_ns = {c.namespace: c for c in caps}
    assert len(by_ns) == len(caps), "two files claim one namespace"
    return by_ns


def test_every_manifest_loads_and_there_are_at_least_eight(capabilities):
    assert len(capabilities) >= 8


def test_the_services_the_e2e_test_and_the_registry_need_are_services(capabilities):
    for namespace in REQUIRED_SERVICES:
        cap = capabilities[namespace]
        assert cap.type == "service"
        health = cap.document["chora_service"]["health"]
        assert health["heartbeat_ttl"] == 30
        # No server runs for them here: a probe would only ever report them down.
        assert "url" not in health and "tcp" not in health


def test_both_kinds_of_capability_are_present(capabilities):
    assert {c.type for c in capabilities.values()} == {"service", "pattern"}


def test_every_dependency_names_an_existing_capability(capabilities):
    missing = [
        (c.namespace, d["capability"])
        for c in capabilities.values()
        for d in c.dependencies
        if d["capability"] not in capabilities
    ]
    assert missing == []


def test_every_version_range_is_satisfied_by_its_target(capabilities):
    unsatisfied = [
        (c.namespace, d["capability"], d["version"], capabilities[d["capability"]].version)
        for c in capabilities.values()
        for d in c.dependencies
        if not satisfies(capabilities[d["capability"]].version, d["version"])
    ]
    assert unsatisfied == []


def test_the_dependency_graph_has_no_cycles(capabilities):
    graph = {ns: [d["capability"] for d in c.dependencies] for ns, c in capabilities.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for target in graph.get(node, []):
            visit(target, [*path, node])
        done.add(node)

    for ns in graph:
        visit(ns, [])


def test_the_real_world_variations_are_represented(capabilities):
    texts = {p.name: p.read_text() for p in ROOT.iterdir() if is_manifest_name(p.name)}
    docs = [c.document for c in capabilities.values()]
    assert any("apiVersion" not in d and "kind" not in d for d in docs)
    assert any(t.startswith("#") for t in texts.values())
    assert any("dc_description: >" in t for t in texts.values())
    assert any(d["metadata"]["dc_type"].lower() == "pattern" and "chora_pattern" not in d
               for d in docs)
    assert any("dc_hasVersion" not in d["metadata"] and "chora_version" in d for d in docs)
    relations = [d.get("dc_relation") or {} for d in docs]
    assert any(set(r) - {"requires"} for r in relations)
    items = [i for r in relations for kind in r.values() for i in kind or []]
    assert any(isinstance(i, str) for i in items)
    assert any(isinstance(i, dict) and set(i) - {"capability", "version", "relationship"}
               for i in items)
