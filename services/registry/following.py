"""The two threads that keep the view true to etcd.

``Follower``: one range over ``/chora/`` (both prefixes at one revision R), then one
watch from R + 1, so nothing falls between them (etcd's naming/endpoints does the same).
A failed watch is re-created from the last revision seen + 1, with capped backoff; a
compacted one, and every ``resync`` seconds anyway, means a full re-read, swapped into
the view in one step. Parsing a re-read happens here, off the event loop.

``QuorumCheck``: a linearizable read every ``period`` seconds. A member cut off from the
majority keeps a watch open and sends nothing, so the watch alone cannot tell "nothing
changed" from "cannot see": this read can. It marks the view degraded while it fails,
asks for a re-read when the quorum comes back, and when the cluster's revision stays
ahead of everything the watch delivered for ``stall_after`` seconds (a silent watch).
"""

from __future__ import annotations

import threading
import time

from structlog.typing import FilteringBoundLogger

from services.core.backoff import Backoff
from services.core.errors import Compacted, StoreError
from services.core.store import Store, Watch
from services.registry.hub import Hub
from services.registry.metrics import Metrics
from services.registry.state import ROOT, State


class Follower(threading.Thread):
    def __init__(self, store: Store, hub: Hub, metrics: Metrics, log: FilteringBoundLogger,
                 *, resync: float) -> None:
        super().__init__(name="registry-follower", daemon=True)
        self.store, self.hub, self.metrics, self.log = store, hub, metrics, log
        self.resync = resync
        self.last = 0  # the newest revision handed to the view (read or event)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._reread_reason: str | None = None

    def stop(self) -> None:
        self._halt.set()
        self._cancel_watch()

    def reread(self, reason: str) -> None:
        """Ask for a full re-read now (any thread)."""
        with self._lock:
            self._reread_reason = reason
        self._cancel_watch()

    def _cancel_watch(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.cancel()

    def run(self) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        reason: str | None = "start"
        while not self._halt.is_set():
            try:
                reason = self._step(reason, backoff)
            except Exception:  # a bug must not leave the view frozen for good
                delay = backoff.next()
                self.log.exception("follower failed; re-reading", retry_in=round(delay, 2))
                self._halt.wait(delay)
                reason = "error"

    def _step(self, reason: str | None, backoff: Backoff) -> str | None:
        """One read (if ``reason``) and one watch; the reason for the next read, if any."""
        if reason is not None and not self._read(reason, backoff):
            return reason
        try:
            self._follow(self.last + 1, time.monotonic() + self.resync, backoff)
        except Compacted as exc:
            self.log.info("watch revision compacted; re-reading", revision=exc.revision)
            return "compacted"
        except StoreError as exc:
            delay = backoff.next()
            self.metrics.watch_failures.inc()
            self.log.warning("watch failed; re-creating it", error=str(exc),
                             from_revision=self.last + 1, retry_in=round(delay, 2))
            self._halt.wait(delay)
            return None
        with self._lock:  # the watch ended without error: cancelled on purpose
            reason, self._reread_reason = self._reread_reason or "resync", None
        return reason

    def _read(self, reason: str, backoff: Backoff) -> bool:
        try:
            kvs, revision = self.store.get_prefix(ROOT)
        except StoreError as exc:
            delay = backoff.next()
            self.log.warning("reading etcd failed; retrying", reason=reason, error=str(exc),
                             retry_in=round(delay, 2))
            self._halt.wait(delay)
            return False
        state = State.from_kvs(kvs, revision)
        if reason != "start":
            self.metrics.rereads.labels(reason).inc()
        self.last = max(self.last, revision)
        self.hub.post_state(state)
        return True

    def _follow(self, start: int, until: float, backoff: Backoff) -> None:
        """Hand events to the view until the stream fails (raises), is cancelled (a
        re-read was asked for) or ``until`` passes (the periodic re-read)."""
        with self._lock:
            if self._halt.is_set() or self._reread_reason is not None:
                return
            watch = self.store.watch_prefix(ROOT, start)
            self._watch = watch
        timer = threading.Timer(max(0.0, until - time.monotonic()), watch.cancel)
        timer.daemon = True
        timer.start()
        try:
            for events in watch:
                backoff.reset()
                self.last = max(self.last, events[-1].kv.mod_revision)
                self.hub.post_events(events)
        finally:
            timer.cancel()
            watch.cancel()
            with self._lock:
                self._watch = None


class QuorumCheck(threading.Thread):
    def __init__(self, store: Store, hub: Hub, follower: Follower, log: FilteringBoundLogger,
                 *, period: float, stall_after: float) -> None:
        super().__init__(name="registry-quorum-check", daemon=True)
        self.store, self.hub, self.follower, self.log = store, hub, follower, log
        self.period, self.stall_after = period, stall_after
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        down = False
        behind: tuple[float, int] | None = None  # since when, at which follower revision
        while not self._halt.is_set():
            try:
                cluster = self.store.revision()
            except Exception as exc:  # StoreError, or anything else: cannot confirm
                self.hub.post_reachable(False, str(exc))
                down, behind = True, None
                self._halt.wait(self.period)
                continue
            self.hub.post_reachable(True)
            if down:
                down = False
                self.follower.reread("quorum back")
            seen, now = self.follower.last, time.monotonic()
            if cluster <= seen or seen == 0:  # caught up, or the first read is not done
                behind = None
            elif behind is None or behind[1] != seen:
                behind = (now, seen)
            elif now - behind[0] >= self.stall_after:
                self.log.info("etcd moved on but the watch delivered nothing; re-reading",
                              cluster=cluster, seen=seen)
                self.follower.reread("watch silent")
                behind = None
            self._halt.wait(self.period)
