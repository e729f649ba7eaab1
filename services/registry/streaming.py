"""One change stream (``GET /v1/watch``): the changes after a position, as they come.

Each subscriber only keeps a position (a revision) and reads the shared ring: an event
is encoded once however many listen. Steady heartbeats are not changes, so a subscriber
of a thousand healthy instances receives nothing but sse-starlette's keep-alive
comments. A subscriber the ring no longer covers (it reconnected too late, or read too
slowly while many changes went by) gets one ``resync`` event with everything current
and goes on from there.

``include`` (the dashboard's ``?include=sync,cluster,beats``) adds the events nobody
else asked for: ``sync_changed`` from the ring like any change; ``cluster_changed``,
which is no etcd change: the latest one is sent when the subscriber has not seen it
(at once on connecting, then whenever the members change); and ``beats``, the latest
summary of heartbeats, sent as it comes (a subscriber that was busy gets only the
newest: ages, not history).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.registry import changes
from services.registry.changes import comment
from services.registry.hub import Hub
from services.registry.metrics import Metrics


async def changes_after(hub: Hub, metrics: Metrics, position: int | None,
                        name: str | None = None, include: frozenset[str] = frozenset()
                        ) -> AsyncIterator[bytes]:
    """SSE bytes from ``position`` (Last-Event-ID) on; from now when None."""
    view = hub.view
    left_out = {kind for what, kind in changes.OPTIONAL.items() if what not in include}
    cluster_seen = -1 if "cluster" in include else None  # -1: send the latest at once
    beats_seen = hub.beats_version if "beats" in include else None
    hub.subscribers += 1
    metrics.subscribers.inc()
    try:
        if position is None:
            position = view.revision
            yield comment(f"index {position}")  # ignored by clients; says where it starts
        while not hub.closing.is_set():
            changed = hub.changed()
            if cluster_seen is not None and hub.cluster_version != cluster_seen:
                cluster_seen = hub.cluster_version
                yield hub.cluster_frame
            if beats_seen is not None and hub.beats_version != beats_seen:
                beats_seen = hub.beats_version
                yield hub.beats_frame
            # No await between reading the ring and the revision: they match.
            batch = view.ring.since(position, name) if position <= view.revision else None
            position_now = view.revision
            if batch is None:
                metrics.resyncs.inc()
                yield view.resync(name)
                if "sync" in include:  # the resync's lists do not carry it
                    yield view.sync_change(position_now).frame
                position = position_now
                continue
            position = position_now
            frames = [item.frame for item in batch if item.kind not in left_out]
            if frames:
                yield b"".join(frames)
                continue
            await changed.wait()
    finally:
        hub.subscribers -= 1
        metrics.subscribers.dec()
