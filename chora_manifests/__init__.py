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

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chora_manifests.errors import ManifestError, Problem
from chora_manifests.files import MAX_BYTES, decode, read_bytes, read_text

if TYPE_CHECKING:
    from chora_manifests.documents import MAX_DEPTH, MAX_NODES, parse_yaml
    from chora_manifests.model import (
        NAMESPACE_RE,
        SEMVER_RE,
        Capability,
        Manifest,
        check_namespace,
        from_document,
    )
    from chora_manifests.parsing import parse

MANIFEST_SUFFIXES = (".yaml", ".yml")

# Imported on first use (PEP 562): reading and hashing files must not pay for PyYAML and
# pydantic (~80 ms of the sync's unchanged restart, which parses nothing).
_LAZY = {
    "MAX_DEPTH": "documents", "MAX_NODES": "documents", "parse_yaml": "documents",
    "NAMESPACE_RE": "model", "SEMVER_RE": "model", "Capability": "model",
    "Manifest": "model", "check_namespace": "model", "from_document": "model",
    "parse": "parsing",
}

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
    "decode",
    "from_document",
    "is_manifest_name",
    "load",
    "parse",
    "parse_yaml",
    "read_bytes",
    "read_text",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chora_manifests' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"chora_manifests.{module}"), name)
    globals()[name] = value
    return value


def is_manifest_name(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIXES) and not name.startswith(".")


def load(path: Path, root: Path, *, name: str | None = None) -> Capability:
    """The capability in the file at ``path`` (inside ``root``), or ``ManifestError``
    naming it ``name`` (default: ``path`` as given) with the line and column of each
    problem where the YAML has one."""
    from chora_manifests.parsing import parse

    source = name or str(path)
    return parse(read_text(path, root, name=source), name=source)
