"""What the registry should hold for a capability: the contract's keys and our inventory.

Pure and deterministic: the same manifest always yields byte-identical values, which is
what lets an unchanged reconcile write nothing at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chora_manifests import Capability, ManifestError
from services.core import keys
from services.core.kv import MAX_REQUEST_BYTES

Desired = dict[str, bytes]  # key → value, for one capability


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def project(cap: Capability) -> Desired:
    """The keys the sync writes for ``cap``, including its inventory entry."""
    ns = cap.namespace
    values = {
        keys.capability(ns, keys.METADATA): _json({**cap.metadata, "type": cap.type}),
        keys.capability(ns, keys.TYPE): cap.type.encode(),
        keys.capability(ns, keys.VERSION): cap.version.encode(),
        keys.capability(ns, keys.DEPENDENCIES): _json(cap.dependencies),
        keys.capability(ns, keys.MANIFEST): _json(cap.document),
        keys.owned(ns): _json({"source": Path(cap.source).name}),
    }
    size = sum(len(k) + len(v) for k, v in values.items())
    if size > MAX_REQUEST_BYTES:
        raise ManifestError(
            cap.source,
            f"its keys take {size} bytes, more than one etcd transaction carries "
            f"({MAX_REQUEST_BYTES})",
            ns,
        )
    return values
