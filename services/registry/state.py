"""The registry's data at one etcd revision: the instances under ``/chora/services/``
and the capability keys under ``/chora/capabilities/`` it serves (contract sections 2
and 3), parsed once, and the sync's status (``/chora/sync/status``), which the
dashboard shows. Pure: built from a full read (off the event loop, by the follower)
or kept current by watch events (``view.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.core import keys
from services.core.kv import KeyValue

# One range and one watch cover both prefixes: everything under their common prefix.
ROOT = os.path.commonpath([keys.SERVICES, keys.CAPABILITIES]) + "/"  # "/chora/"
CAPABILITY_KEYS = (keys.METADATA, keys.TYPE, keys.VERSION, keys.DEPENDENCIES, keys.HEALTH)
DECLARED = (keys.METADATA, keys.TYPE, keys.VERSION, keys.DEPENDENCIES)  # the sync's keys


@dataclass(frozen=True, slots=True)
class Instance:
    key: str
    name: str
    id: str
    record: dict[str, Any]
    lease: int
    mod_revision: int

    @property
    def status(self) -> str:
        return str(self.record.get("status", "up"))

    def field_list(self, field: str) -> list[Any]:
        """``metadata.tags`` / ``metadata.dependencies``, tolerant of a hand-written
        record (a reader must not fail on one odd key)."""
        meta = self.record.get("metadata")
        found = meta.get(field) if isinstance(meta, dict) else None
        return found if isinstance(found, list) else []


def parse_instance(kv: KeyValue) -> Instance | None:
    """A stored record, or None when the key or value is not one (written by hand)."""
    where = keys.split_service(kv.key)
    if where is None:
        return None
    try:
        record = json.loads(kv.value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    name, instance_id = where
    if record.get("name") != name or record.get("id") != instance_id:
        record = {**record, "name": name, "id": instance_id}  # the key is the truth
    return Instance(kv.key, name, instance_id, record, kv.lease, kv.mod_revision)


def json_or(value: bytes | None, default: Any) -> Any:
    if value is None:
        return default
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return default


def health_status(value: bytes | None) -> object:
    """What of a health record is a change worth announcing: its status (the timestamp
    and count move on every beat of the heartbeat daemon)."""
    doc = json_or(value, None)
    return doc.get("status") if isinstance(doc, dict) else doc


class State:
    """Instances by key and by name, capability keys by namespace, and the revision."""

    def __init__(self, revision: int = 0) -> None:
        self.revision = revision
        self.instances: dict[str, Instance] = {}
        self.names: dict[str, dict[str, Instance]] = {}
        self.capabilities: dict[str, dict[str, bytes]] = {}
        self.sync_status: KeyValue | None = None

    @classmethod
    def from_kvs(cls, kvs: Mapping[str, KeyValue], revision: int) -> State:
        state = cls(revision)
        for kv in kvs.values():
            if kv.key.startswith(keys.SERVICES):
                inst = parse_instance(kv)
                if inst is not None:
                    state.put(inst)
            elif kv.key.startswith(keys.CAPABILITIES):
                state.set_capability_key(kv.key, kv.value)
            elif kv.key == keys.SYNC_STATUS:
                state.sync_status = kv
        return state

    def put(self, inst: Instance) -> Instance | None:
        old = self.instances.get(inst.key)
        self.instances[inst.key] = inst
        self.names.setdefault(inst.name, {})[inst.id] = inst
        return old

    def drop(self, key: str) -> Instance | None:
        old = self.instances.pop(key, None)
        if old is not None:
            group = self.names.get(old.name, {})
            group.pop(old.id, None)
            if not group:
                self.names.pop(old.name, None)
        return old

    def set_capability_key(self, key: str, value: bytes | None) -> tuple[str, bool] | None:
        """Store (or, with None, forget) one capability key: (namespace, whether a
        subscriber should hear of it), or None for keys the view does not keep."""
        where = keys.split(key)
        if where is None or where[1] not in CAPABILITY_KEYS:
            return None
        ns, sub = where
        held = self.capabilities.get(ns, {})
        old = held.get(sub)
        if value is None:
            held.pop(sub, None)
            if not held:
                self.capabilities.pop(ns, None)
        else:
            self.capabilities.setdefault(ns, {})[sub] = value
        if sub == keys.HEALTH:
            return ns, health_status(old) != health_status(value)
        return ns, old != value

    def sorted_instances(self, name: str | None = None) -> list[Instance]:
        if name is not None:
            group = self.names.get(name, {})
            return [group[i] for i in sorted(group)]
        return [self.instances[k] for k in sorted(self.instances)]

    def capability(self, ns: str) -> dict[str, Any] | None:
        """The contract's capability view without its instances; None when the sync
        declares nothing for ``ns`` (a lone health key is not a capability)."""
        held = self.capabilities.get(ns)
        if not held or not self.declared(ns):
            return None
        text = {k: held[k].decode(errors="replace") for k in (keys.TYPE, keys.VERSION)
                if k in held}
        return {
            "namespace": ns,
            "type": text.get(keys.TYPE),
            "version": text.get(keys.VERSION),
            "metadata": json_or(held.get(keys.METADATA), None),
            "dependencies": json_or(held.get(keys.DEPENDENCIES), []),
            "health": json_or(held.get(keys.HEALTH), None),
        }

    def declared(self, ns: str) -> bool:
        """The sync declares ``ns`` (a lone health key is not a capability)."""
        return any(k in self.capabilities.get(ns, ()) for k in DECLARED)

    def health(self, ns: str) -> Any:
        """``ns``'s health record alone, decoded (without the rest of its keys)."""
        return json_or(self.capabilities.get(ns, {}).get(keys.HEALTH), None)

    def capabilities_held(self) -> list[dict[str, Any]]:
        """Every capability's view (as ``capability``), sorted by namespace."""
        return [d for ns in sorted(self.capabilities) if (d := self.capability(ns)) is not None]

    def sync(self) -> dict[str, Any]:
        """``GET /v1/sync``: the sync's status as it wrote it, with the revision of that
        write; ``{"present": false}`` before any sync wrote one."""
        kv = self.sync_status
        if kv is None:
            return {"present": False}
        doc = json_or(kv.value, None)
        if not isinstance(doc, dict):  # written by hand: say so rather than fail
            return {"present": True, "revision": kv.mod_revision, "unreadable": True}
        return {"present": True, "revision": kv.mod_revision, **doc}


def depends_on(capability: Mapping[str, Any], name: str) -> bool:
    deps = capability.get("dependencies")
    return isinstance(deps, list) and any(
        (d.get("capability") if isinstance(d, dict) else d) == name for d in deps)
