"""One change stream (``GET /v1/watch``): the changes after a position, as they come.

Each subscriber only keeps a position (a revision) and reads the shared ring: an event
is encoded once however many listen. Steady heartbeats are not changes, so a subscriber
of a thousand healthy instances receives nothing but sse-starlette's keep-alive
comments. A subscriber the ring no longer covers (it reconnected too late, or read too
slowly while many changes went by) gets one ``resync`` event with everything current
and goes on from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.registry.changes import comment
from services.registry.hub import Hub
from services.registry.metrics import Metrics


async def changes_after(hub: Hub, metrics: Metrics, position: int | None,
                        name: str | None = None) -> AsyncIterator[bytes]:
    """SSE bytes from ``position`` (Last-Event-ID) on; from now when None."""
    view = hub.view
    hub.subscribers += 1
    metrics.subscribers.inc()
    try:
        if position is None:
            position = view.revision
            yield comment(f"index {position}")  # ignored by clients; says where it starts
        while not hub.closing.is_set():
            changed = hub.changed()
            # No await between reading the ring and the revision: they match.
            batch = view.ring.since(position, name) if position <= view.revision else None
            position_now = view.revision
            if batch is None:
                metrics.resyncs.inc()
                yield view.resync(name)
                position = position_now
                continue
            position = position_now
            if batch:
                yield b"".join(item.frame for item in batch)
                continue
            await changed.wait()
    finally:
        hub.subscribers -= 1
        metrics.subscribers.dec()
