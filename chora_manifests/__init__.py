"""Capability manifests: the format teams write, its rules and its JSON Schema.

One code path for every reader: the gitops-sync daemon, the heartbeat daemon and the
``manifest validate`` command all load through here, so a manifest the validator passes
is one the sync accepts, with the same message when it does not. Stands alone (YAML,
pydantic, semver): no etcd, no servers.

>>> cap = load(Path("capabilities/chora.devex.registry.yaml"), root=Path("capabilities"))
>>> cap.namespace, cap.type, cap.version
('chora.devex.registry', 'service', '1.0.0')
"""

from __future__ import annotations

from pathlib import Path

import yaml

from chora_manifests.documents import MAX_BYTES, MAX_DEPTH, MAX_NODES, parse_yaml, read_text
from chora_manifests.errors import ManifestError, Problem
from chora_manifests.model import (
    NAMESPACE_RE,
    SEMVER_RE,
    Capability,
    Manifest,
    check_namespace,
    from_document,
)
from chora_manifests.positions import locate

MANIFEST_SUFFIXES = (".yaml", ".yml")

__all__ = [
    "MANIFEST_SUFFIXES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "NAMESPACE_RE",
    "SEMVER_RE",
    "Capability",
    "Manifest",
    "ManifestError",
    "Problem",
    "check_namespace",
    "from_document",
    "is_manifest_name",
    "load",
    "parse_yaml",
    "read_text",
]


def is_manifest_name(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIXES) and not name.startswith(".")


def load(path: Path, root: Path, *, name: str | None = None) -> Capability:
    """The capability in the file at ``path`` (inside ``root``), or ``ManifestError``
    naming it ``name`` (default: ``path`` as given) with the line and column of each
    problem where the YAML has one."""
    source = name or str(path)
    text = read_text(path, root, name=source)
    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if "found another document" in problem:
            problem = "more than one YAML document; a manifest is one"
        else:
            problem = f"invalid YAML: {problem}"
        at = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise ManifestError(source, problems=(Problem(problem, (), *at),)) from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(source, str(exc) or "nested too deeply") from None
    try:
        return from_document(doc, source)
    except ManifestError as exc:
        raise exc.placed(text, locate) from None
