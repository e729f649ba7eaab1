"""What the registry should hold for a capability: the contract's keys and our inventory.

Pure and deterministic: the same manifest always yields byte-identical values, which is
what lets an unchanged reconcile write nothing at all.

The inventory entry ``/chora/sync/owned/{ns}`` says which file the sync wrote the
capability from, and what it wrote: ``{"source": "a.yaml", "sha256": <hex sha256 of the
file's bytes, as sha256sum prints it>, "keys": <hex sha256 of the capability keys
written>}``. A file that still hashes to ``sha256``, whose keys in etcd still hash to
``keys``, needs no parsing: etcd already holds exactly what parsing would give. The two
hashes were added to the record (the contract adds fields, never renames them); an entry
without them, as older versions wrote, only means "parse this file", once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chora_manifests.errors import ManifestError
from services.core import keys
from services.core.kv import MAX_REQUEST_BYTES, KeyValue

if TYPE_CHECKING:
    from chora_manifests import Capability

Desired = dict[str, bytes]  # key → value, for one capability


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def keys_digest(values: Mapping[str, bytes]) -> str:
    """sha256 of the sync's capability keys among ``values`` (one namespace's keys, as
    projected or as read back from etcd): each key's name, length and value, in name
    order. The inventory entry is not among them: it holds this digest."""
    named = {}
    for key, value in values.items():
        split = keys.split(key)
        if split and split[1] in keys.SYNC_KEYS:
            named[split[1]] = value
    return _digest(named)


def _digest(named: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(b"%s\0%d\0%s" % (name.encode(), len(named[name]), named[name]))
    return h.hexdigest()


def project(cap: Capability, digest: str) -> Desired:
    """The keys the sync writes for ``cap``, parsed from bytes whose sha256 is
    ``digest``, including its inventory entry."""
    ns = cap.namespace
    named = {
        keys.METADATA: _json({**cap.metadata, "type": cap.type}),
        keys.TYPE: cap.type.encode(),
        keys.VERSION: cap.version.encode(),
        keys.DEPENDENCIES: _json(cap.dependencies),
        keys.MANIFEST: _json(cap.document),
    }
    values = {keys.capability(ns, name): value for name, value in named.items()}
    record = {"source": Path(cap.source).name, "sha256": digest, "keys": _digest(named)}
    values[keys.owned(ns)] = _json(record)
    size = sum(len(k) + len(v) for k, v in values.items())
    if size > MAX_REQUEST_BYTES:
        raise ManifestError(
            cap.source,
            f"its keys take {size} bytes, more than one etcd transaction carries "
            f"({MAX_REQUEST_BYTES})",
            ns,
        )
    return values


@dataclass(frozen=True)
class Record:
    """An inventory entry as read back; a field the entry lacks (older versions wrote
    only ``source``) or that is not a string reads as ""."""

    source: str = ""
    sha256: str = ""
    keys: str = ""

    @classmethod
    def parse(cls, value: bytes) -> Record:
        try:
            doc = json.loads(value.decode())
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return cls()
        if not isinstance(doc, dict):
            return cls()
        fields = [doc.get(f) for f in ("source", "sha256", "keys")]
        return cls(*(f if isinstance(f, str) else "" for f in fields))


def still_projected(
    namespace: str, file: str, digest: str, kvs: Mapping[str, KeyValue]
) -> Desired | None:
    """What etcd holds for ``namespace`` (``kvs``: its keys, read now), when that is
    provably the projection of ``file`` with bytes of sha256 ``digest``: its inventory
    entry names that file and those bytes, and its capability keys still hash to what the
    entry recorded. None when not: the file must be parsed (and the keys repaired)."""
    inventory = kvs.get(keys.owned(namespace))
    if inventory is None:
        return None
    record = Record.parse(inventory.value)
    if not record.keys or record.sha256 != digest or record.source != file:
        return None
    values = {k: kv.value for k, kv in kvs.items() if k != keys.owned(namespace)}
    if keys_digest(values) != record.keys:
        return None
    return {**{k: v for k, v in values.items() if _is_sync_key(k)},
            keys.owned(namespace): inventory.value}


def _is_sync_key(key: str) -> bool:
    split = keys.split(key)
    return bool(split and split[1] in keys.SYNC_KEYS)
