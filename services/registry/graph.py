"""The dependency graph as the dashboard draws it: every declared dependency checked
against the version the registry holds, and the cycles. Pure. The checks are
``chora_manifests.dependencies``', the rules ``manifest deps`` and ``manifest validate``
apply: one verdict for a range wherever it is shown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from chora_manifests import dependencies


def checked(views: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"edges": [...], "cycles": [...]}`` for capability views as the API serves them
    (``{namespace, version, dependencies}``)."""
    held = dependencies.index(views)
    edges = []
    for capability in sorted(held.values(), key=lambda c: c.namespace):
        for dependency in capability.dependencies:
            check = dependencies.check(dependency, held)
            edges.append({"from": capability.namespace, "to": dependency.capability,
                          "relationship": dependency.relationship,
                          "range": dependency.range, "held": check.held,
                          "status": check.status, "reason": check.reason})
    return {"edges": edges, "cycles": [list(c) for c in dependencies.cycles(held)]}
