"""What ``GET /v1/watch`` says, as data, and how it changes a local copy of the instances.

Pure. The stream's event ids are etcd revisions; a ``resync`` event carries the full
list (sent when the stream starts or cannot resume from ``Last-Event-ID``); every other
event carries one instance record, and a removed instance arrives with status ``down``.
``Instances`` applies them so that a copy never goes backwards in revision and is never
emptied except by a full list that is really empty.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chora_manifest_client import records
from chora_manifest_client.records import Key, Record
from chora_manifest_client.sse import ServerSentEvent

RESYNC = "resync"
REMOVAL_KINDS = frozenset({"down", "delete", "deleted", "removed", "deregistered"})


@dataclass(frozen=True)
class WatchEvent:
    """One change. ``kind`` is the SSE event name (``resync``, ``up``, ``down``, ...);
    ``record`` the instance (``None`` for a resync or a non-instance event);
    ``records`` the full list of a resync."""

    kind: str
    revision: int | None
    record: Record | None = None
    records: list[Record] | None = None
    data: Any = None

    @property
    def removed(self) -> bool:
        return self.record is not None and (
            self.kind in REMOVAL_KINDS or self.record.get("status") in REMOVAL_KINDS)

    @property
    def key(self) -> Key | None:
        return records.key_of(self.record) if self.record is not None else None


def parse(sse: ServerSentEvent) -> WatchEvent:
    """An SSE event of the watch stream → ``WatchEvent`` (unreadable data is kept raw)."""
    revision = _int(sse.id)
    try:
        data = json.loads(sse.data)
    except json.JSONDecodeError:
        return WatchEvent(sse.event, revision, data=sse.data)
    if sse.event == RESYNC:
        listed = data.get("services") if isinstance(data, Mapping) else data
        if isinstance(data, Mapping) and revision is None:
            revision = _int(data.get("revision"))
        items = [dict(r) for r in listed or [] if isinstance(r, Mapping)]
        return WatchEvent(RESYNC, revision, records=items, data=data)
    record = _record_in(data)
    kind = sse.event
    if kind == "message" and isinstance(data, Mapping):
        kind = str(data.get("type") or data.get("event") or data.get("status") or kind)
    return WatchEvent(kind, revision, record=record, data=data)


def _record_in(data: Any) -> Record | None:
    if not isinstance(data, Mapping):
        return None
    for nested in ("record", "service", "instance", "value"):
        if isinstance(data.get(nested), Mapping) and records.key_of(data[nested]):
            return dict(data[nested])
    return dict(data) if records.key_of(data) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class Instances:
    """A local copy of every instance, by name then id. Thread-safe; readers get copies.

    ``replace`` installs a full list (the GET made on each connection) and ``apply`` one
    event; both ignore anything older than the revision already held, so a replayed event
    or a list answered by a replica that lags behind cannot undo a newer change. The one
    exception is a ``resync`` event: the registry sends it when it cannot continue from
    our revision, including when etcd's revision went backwards (a restore from a
    snapshot), and then it is the truth even though it is older."""

    revision: int | None = None
    _by_name: dict[str, dict[str, Record]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def replace(self, items: Iterable[Record], revision: int | None, *,
                authoritative: bool = False) -> bool:
        fresh: dict[str, dict[str, Record]] = {}
        for record in items:
            key = records.key_of(record)
            if key is not None:
                fresh.setdefault(key[0], {})[key[1]] = dict(record)
        with self._lock:
            if not authoritative and self._is_stale(revision, allow_equal=True):
                return False
            self._by_name = fresh
            self.revision = revision if revision is not None else self.revision
            return True

    def apply(self, event: WatchEvent) -> bool:
        """``True`` when the event changed the copy."""
        if event.kind == RESYNC and event.records is not None:
            return self.replace(event.records, event.revision, authoritative=True)
        key = event.key
        if key is None:
            return False
        name, instance_id = key
        with self._lock:
            if self._is_stale(event.revision, allow_equal=False):
                return False
            if event.revision is not None:
                self.revision = event.revision
            if event.removed:
                instances = self._by_name.get(name, {})
                gone = instances.pop(instance_id, None)
                if not instances:
                    self._by_name.pop(name, None)
                return gone is not None
            assert event.record is not None
            self._by_name.setdefault(name, {})[instance_id] = dict(event.record)
            return True

    def _is_stale(self, revision: int | None, *, allow_equal: bool) -> bool:
        if revision is None or self.revision is None:
            return False
        return revision < self.revision or (revision == self.revision and not allow_equal)

    def of(self, name: str) -> list[Record]:
        with self._lock:
            found = list(self._by_name.get(name, {}).values())
        return sorted((dict(r) for r in found), key=lambda r: str(r.get("id")))

    def all(self) -> list[Record]:
        with self._lock:
            found = [r for instances in self._by_name.values() for r in instances.values()]
        return [dict(r) for r in found]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_name.values())
