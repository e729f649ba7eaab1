"""The view's owner on the event loop. The follower and the quorum check run in threads
and hand over full reads, watch events and reachability with ``post_*`` (each becomes
one callback on the loop, in the order posted); requests, the status writer and the
change streams read the view and wait on it here. Only the loop touches the view, so
it needs no lock and a reader never sees half an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from structlog.typing import FilteringBoundLogger

from services.core.kv import Event
from services.registry import changes
from services.registry.changes import Change
from services.registry.metrics import Metrics
from services.registry.records import iso
from services.registry.state import State
from services.registry.view import View


class Hub:
    def __init__(self, view: View, metrics: Metrics, log: FilteringBoundLogger,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None
        # key → monotonic time of the latest registration or keep-alive this process
        # forwarded: what the status writer measures silence against.
        self.beats: dict[str, float] = {}
        self.degraded_reason = ""
        self.etcd_reached: float | None = None  # monotonic time of the last quorum answer
        self.recovered_at = float("-inf")  # when the quorum last came back
        self.subscribers = 0
        # The cluster's members as last checked (``cluster.py``), and how many times
        # they changed: a change stream sends the frame to a subscriber behind it.
        self.cluster: dict[str, Any] = {"checked_at": None, "leader": None, "alarms": [],
                                        "members": []}
        self.cluster_version = 0
        self.cluster_frame = changes.frame(changes.CLUSTER_CHANGED, None, self.cluster)
        self.beats_version = 0  # the same for the latest ``beats`` summary
        self.beats_frame = b""
        self.closing = asyncio.Event()
        self._changed = asyncio.Event()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # -- from threads --------------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self.loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            loop.call_soon_threadsafe(callback, *args)

    def post_state(self, state: State) -> None:
        self._post(self._swap, state)

    def post_events(self, events: Sequence[Event]) -> None:
        self._post(self._apply, events)

    def post_reachable(self, ok: bool, reason: str = "") -> None:
        self._post(self._reachability, ok, reason, self.clock())

    def post_cluster(self, doc: dict[str, Any]) -> None:
        self._post(self._cluster, doc)

    # -- on the loop ---------------------------------------------------------------------

    def _swap(self, state: State) -> None:
        first = not self.view.ready
        found = self.view.swap(state)
        if found is None:
            self.log.warning("a re-read older than the view was ignored",
                             read=state.revision, view=self.view.revision)
            return
        if first:
            self.log.info("first full read done: serving", revision=state.revision,
                          instances=len(state.instances),
                          capabilities=len(state.capabilities))
        elif found:
            self.log.info("re-read applied", revision=state.revision, changes=len(found))
        self._changed_by(found)

    def _apply(self, events: Sequence[Event]) -> None:
        self._changed_by(self.view.apply(events))

    def _changed_by(self, found: list[Change]) -> None:
        self.metrics.revision.set(self.view.revision)
        for item in found:
            self.metrics.changes.labels(item.kind).inc()
        if found:
            self._wake_subscribers()
        self._check_waiters()

    def _reachability(self, ok: bool, reason: str, at: float) -> None:
        if ok:
            self.etcd_reached = at
            self.degraded_reason = ""
            if self.view.set_degraded(False):
                self.recovered_at = at
                self.log.info("etcd quorum answers again: serving statuses")
        else:
            self.degraded_reason = reason
            if self.view.set_degraded(True):
                self.log.warning("etcd quorum unavailable: serving from memory, statuses "
                                 "unknown, writes refused", reason=reason)
        self.metrics.degraded.set(1 if self.view.degraded else 0)

    def _cluster(self, doc: dict[str, Any]) -> None:
        """Keep the latest check; announce it only when more than its time changed."""
        before, self.cluster = self.cluster, doc
        if _without_time(before) == _without_time(doc):
            return
        self.cluster_version += 1
        self.cluster_frame = changes.frame(changes.CLUSTER_CHANGED, None, doc)
        self._wake_subscribers()

    async def summarise_beats(self, period: float) -> None:
        """Every ``period`` seconds, what heartbeats and health rewrites moved, as one
        ``beats`` event for the streams that include it (the status writer's task-mate)."""
        while True:
            await asyncio.sleep(period)
            found = self.view.take_beats()
            if found is not None and self.subscribers:
                self.beats_version += 1
                self.beats_frame = changes.frame(changes.BEATS, None, found)
                self._wake_subscribers()

    def _wake_subscribers(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _check_waiters(self) -> None:
        if not self._waiters:
            return
        still = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    def changed(self) -> asyncio.Event:
        """Set at the next change (or when the streams close): take it before reading
        the ring, then wait on it, and no change falls in between."""
        return self._changed

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` holds after some update of the view; False on timeout."""
        if predicate():
            return True
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((predicate, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    async def wait_revision(self, revision: int, timeout: float) -> bool:
        """Read-your-writes: until the view holds the write made at ``revision``."""
        return await self.wait_for(lambda: self.view.revision >= revision, timeout)

    def beat(self, key: str) -> None:
        """This process forwarded a registration or keep-alive for ``key`` just now."""
        self.beats[key] = self.clock()
        self.view.beat(key, iso())

    def close_streams(self) -> None:
        """Shutdown: every change stream ends after what it is sending now."""
        self.closing.set()
        self._wake_subscribers()


def _without_time(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "checked_at"}
