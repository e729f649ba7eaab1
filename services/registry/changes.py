"""What the change stream (``GET /v1/watch``) sends: one Server-Sent Event per change,
its id the etcd revision that made it, encoded once and shared by every subscriber, and
a bounded ring of the latest ones so a client that reconnects with ``Last-Event-ID``
gets exactly what it missed. Pure: no I/O, no event loop.

A client behind the ring (or from before this process's first read) cannot be given
what it missed one event at a time: it gets one ``resync`` event with the whole current
list instead, never silence.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

REGISTERED = "registered"
STATUS_CHANGED = "status_changed"
UPDATED = "updated"  # the record changed, its status did not (a write outside the registry)
DEREGISTERED = "deregistered"  # deregistered or removed; the data says "status": "down"
CAPABILITY_CHANGED = "capability_changed"
RESYNC = "resync"
# Only to subscribers that ask (``?include=sync,cluster``: the dashboard), so the
# stream the contract describes stays what it was for everyone else.
SYNC_CHANGED = "sync_changed"  # /chora/sync/status was written; data as GET /v1/sync
CLUSTER_CHANGED = "cluster_changed"  # members or leader changed; data as GET /v1/cluster
BEATS = "beats"  # heartbeats and health rewrites of the last moments; data: View.take_beats
OPTIONAL = {"sync": SYNC_CHANGED, "cluster": CLUSTER_CHANGED, "beats": BEATS}
KINDS = (REGISTERED, STATUS_CHANGED, UPDATED, DEREGISTERED, CAPABILITY_CHANGED, RESYNC,
         SYNC_CHANGED, CLUSTER_CHANGED, BEATS)

SEP = "\r\n"  # as sse-starlette's keep-alive comments


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    kind: str
    name: str  # the service name, or the capability's namespace
    frame: bytes  # the whole SSE event, ready to send


def frame(kind: str, revision: int | None, payload: object) -> bytes:
    """One SSE event. ``revision`` None: an event that is no etcd change (the cluster's
    members, beats) has no ``id``, so a client's Last-Event-ID stays the revision it
    last saw."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    number = "" if revision is None else f"id: {revision}{SEP}"
    return f"{number}event: {kind}{SEP}data: {data}{SEP}{SEP}".encode()


def change(kind: str, revision: int, name: str, payload: object) -> Change:
    return Change(revision, kind, name, frame(kind, revision, payload))


def comment(text: str) -> bytes:
    return f": {text}{SEP}{SEP}".encode()


class Ring:
    """The latest ``size`` changes, oldest first. ``floor`` is the newest revision a
    reader can no longer be given in full: the first read's, or the last one evicted
    (a revision's changes may be evicted in part, so all of it counts as gone)."""

    def __init__(self, size: int, floor: int = 0) -> None:
        if size < 1:
            raise ValueError("the change ring holds at least one change")
        self.size = size
        self.floor = floor
        self._items: deque[Change] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def newest(self) -> int:
        return self._items[-1].revision if self._items else self.floor

    def append(self, item: Change) -> None:
        if len(self._items) >= self.size:
            self.floor = max(self.floor, self._items.popleft().revision)
        self._items.append(item)

    def since(self, revision: int, name: str | None = None) -> list[Change] | None:
        """Changes after ``revision`` (of ``name`` only, if given), oldest first; None
        when some of them are no longer held (the reader must resync)."""
        if revision < self.floor:
            return None
        out: list[Change] = []
        for item in reversed(self._items):  # readers are nearly always at the tip
            if item.revision <= revision:
                break
            if name is None or item.name == name:
                out.append(item)
        out.reverse()
        return out
