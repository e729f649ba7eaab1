"""The daemon's loop: when to reconcile, and what to do when etcd is away.

Triggers: a full reconcile at start and every ``interval``; debounced file events in
between, each reconciling only the files concerned; and a watch on the keys we own in
etcd, which reconciles a capability someone else changed within a debounce. On an etcd
failure the loop backs off (capped, jittered) and folds everything pending into the next
full reconcile, so it neither spins nor exits; a cheap ping (one alarm query, which
needs a quorum) every second notices the moment etcd is back, and every few seconds
while idle keeps ``/healthz`` true.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from services.core import keys, logs
from services.core.backoff import Backoff
from services.core.errors import Fenced, NoSpace, StoreError, Unavailable
from services.core.scanning import DirectoryMissing
from services.gitops_sync.drifting import Drifted, DriftWatch
from services.gitops_sync.metrics import Metrics
from services.gitops_sync.reconciling import Outcome, Reconciler
from services.gitops_sync.watching import RESCAN, Debouncer, Watcher

log = logs.get("gitops_sync")

PING_IDLE = 5.0  # seconds between pings when nothing else reached etcd
PING_FAILING = 1.0  # ... and while etcd is failing: recovery is noticed within this


@dataclass
class Liveness:
    """What /healthz reports. It must tell the truth within seconds: 503 when etcd has
    not been reached for a while, when etcd refuses writes (NOSPACE), and when the loop
    itself is stuck in one step (the reason names the step), never a stale 200."""

    stall_after: float = 10.0
    """A step running longer than this makes /healthz 503 "stalled"."""
    unreachable_after: float = 12.0
    """No successful contact with etcd for this long makes /healthz 503."""
    etcd_error: str = ""
    sync_error: str = ""  # not etcd's fault: the directory is missing, a bug
    contact_at: float | None = None  # monotonic time etcd last answered us
    last_success: float = 0.0  # wall time of the last successful reconcile
    errors: int = 0
    step: str = ""
    step_since: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def etcd_ok(self) -> bool:
        return self.contact_at is not None and not self.etcd_error

    def reached(self) -> None:
        with self.lock:
            self.contact_at, self.etcd_error = time.monotonic(), ""

    def failed(self, error: str) -> None:
        with self.lock:
            self.etcd_error = error

    @contextmanager
    def running(self, step: str) -> Iterator[None]:
        with self.lock:
            self.step, self.step_since = step, time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                self.step = ""

    def check(self) -> tuple[bool, dict[str, object]]:
        now = time.monotonic()
        with self.lock:
            reasons = []
            if self.step and now - self.step_since > self.stall_after:
                reasons.append(
                    f"stalled: {self.step} has been running for {now - self.step_since:.0f} s")
            if self.etcd_error:
                reasons.append(self.etcd_error if "NOSPACE" in self.etcd_error
                               else f"etcd unreachable: {self.etcd_error}")
            elif self.contact_at is None:
                reasons.append("starting: the first full reconcile has not reached etcd yet")
            elif now - self.contact_at > self.unreachable_after:
                reasons.append(f"etcd unreachable: not reached for {now - self.contact_at:.0f} s")
            if self.sync_error:
                reasons.append(self.sync_error)
            age = time.time() - self.last_success if self.last_success else None
            return not reasons, {
                "reason": "; ".join(reasons),
                "etcd": "reachable" if self.etcd_ok else f"unreachable: {self.etcd_error}",
                "last_success_seconds_ago": round(age, 1) if age is not None else None,
                "manifest_errors": self.errors,
            }


def run(
    reconciler: Reconciler,
    stop: threading.Event,  # set when the daemon stops or its term as leader ends
    *,
    interval: float = 60.0,
    debounce: float = 0.05,
    liveness: Liveness | None = None,
) -> None:
    liveness = liveness or Liveness()
    events = Debouncer(quiet=debounce)
    # A stop wakes the wait for file events at once: a standby leads within a round trip
    # of the resignation, which comes after this loop ends.
    threading.Thread(target=_wake_on_stop, args=(stop, events), name="sync-stop",
                     daemon=True).start()
    watcher: Watcher | None = None
    drift: list[DriftWatch] = []
    backoff = Backoff(initial=0.5, cap=10.0)
    next_full = 0.0
    try:
        while not stop.is_set():
            if watcher is not None and watcher.stale():
                log.warning("capabilities directory replaced or removed; re-watching",
                            capabilities=str(reconciler.root))
                watcher.stop()
                watcher, next_full = None, 0.0
            if watcher is None and reconciler.root.is_dir():
                watcher = _watch(reconciler.root, events)
                if watcher is not None:
                    next_full = 0.0  # files that arrived before the watch began
            now = time.monotonic()
            if now >= next_full:
                with liveness.running("full reconcile"):
                    ok = _attempt(reconciler.full, liveness, backoff, reconciler.metrics)
                next_full = time.monotonic() + (interval if ok else backoff.next())
                if ok:
                    log.info("next full reconcile", in_seconds=interval)
                    if not drift:
                        drift = _watch_drift(reconciler, events)
                continue
            if _ping_due(liveness, now) and _ping(reconciler, liveness):
                next_full = 0.0  # etcd is back (quorum regained, alarm disarmed): at once
                continue
            items = events.take(timeout=min(next_full - now, 0.5))
            if not items or stop.is_set():
                continue
            if backoff.failures:
                continue  # failing: the full reconcile the backoff scheduled covers these
            if RESCAN in items:
                next_full = 0.0  # a directory changed, or the watch was compacted
                continue
            names = {i for i in items if isinstance(i, str)}
            drifted = {i.namespace for i in items if isinstance(i, Drifted)}
            with liveness.running("partial reconcile"):
                ok = _attempt(partial(reconciler.partial, names, drifted), liveness, backoff,
                              reconciler.metrics)
            if not ok:
                next_full = time.monotonic() + backoff.next()
    finally:
        for w in drift:
            w.stop()
        if watcher is not None:
            watcher.stop()


def _wake_on_stop(stop: threading.Event, events: Debouncer) -> None:
    stop.wait()
    events.add(RESCAN)


def _watch_drift(reconciler: Reconciler, events: Debouncer) -> list[DriftWatch]:
    """From the first full read on, so no change falls between reading and watching."""
    watches = [
        DriftWatch(
            reconciler.store, prefix, reconciler.revision + 1,
            is_ours=reconciler.own_writes.__contains__,
            on_drift=events.add,
            on_compacted=lambda: events.add(RESCAN),
        )
        for prefix in (keys.CAPABILITIES, keys.SYNC_OWNED)
    ]
    for w in watches:
        w.start()
    return watches


def _ping_due(liveness: Liveness, now: float) -> bool:
    every = PING_FAILING if liveness.etcd_error else PING_IDLE
    return liveness.contact_at is None or now - liveness.contact_at >= every


def _ping(reconciler: Reconciler, liveness: Liveness) -> bool:
    """Ask etcd for its alarms: the answer needs a quorum, and names NOSPACE. True when
    etcd was failing and is now fine again."""
    was_failing = bool(liveness.etcd_error)
    with liveness.running("etcd ping"):
        try:
            alarms = reconciler.store.alarms(retry=False)
        except StoreError as exc:
            liveness.failed(str(exc) or type(exc).__name__)
            return False
    if "NOSPACE" in alarms:
        liveness.reached()
        liveness.failed(NoSpace.HOW_TO_CLEAR)
        return False
    liveness.reached()
    if was_failing:
        log.info("etcd reachable again; reconciling now", alarms=alarms or None)
    return was_failing


def _watch(root: Path, events: Debouncer) -> Watcher | None:
    """None when the directory vanished between the check and the watch: the next turn
    of the loop tries again, the full reconcile reports the missing directory."""
    watcher = Watcher(root, events)
    try:
        watcher.start()
    except OSError as exc:  # watchdog has already dropped the failed emitter
        log.warning("cannot watch the capabilities directory yet", error=str(exc))
        return None
    return watcher


def _attempt(
    action: Callable[[], Outcome], liveness: Liveness, backoff: Backoff, metrics: Metrics
) -> bool:
    try:
        outcome = action()
    except Fenced:
        raise  # not this instance's to write any more: the daemon ends its term
    except NoSpace as exc:
        metrics.etcd_failures.inc()
        metrics.reconciles.labels("any", "etcd_nospace").inc()
        liveness.failed(str(exc))
        if not backoff.failures:
            log.error("etcd refuses writes: NOSPACE alarm; will retry", error=str(exc))
        return False
    except Unavailable as exc:
        metrics.etcd_failures.inc()
        metrics.reconciles.labels("any", "etcd_unavailable").inc()
        liveness.failed(str(exc) or type(exc).__name__)
        log.warning("etcd unavailable; will retry", error=str(exc), failures=backoff.failures + 1)
        return False
    except DirectoryMissing as exc:
        log.error("nothing synced", reason=str(exc))
        liveness.sync_error = f"nothing synced: {exc}"
        return False
    except StoreError as exc:
        log.error("etcd rejected a request", error=str(exc))
        liveness.sync_error = f"etcd rejected a request: {exc}"
        return False
    except Exception as exc:  # a daemon logs a bug and retries; it does not die
        log.exception("reconcile failed unexpectedly; will retry")
        liveness.sync_error = f"reconcile failed unexpectedly: {exc!r}"
        return False
    backoff.reset()
    liveness.reached()
    with liveness.lock:
        liveness.last_success, liveness.errors = time.time(), len(outcome.errors)
        liveness.sync_error = ""
    if outcome.plan.changes or outcome.kind == "full":
        log.info(
            "reconcile finished",
            kind=outcome.kind,
            changes=outcome.applied,
            errors=len(outcome.errors),
            conflicts=len(outcome.conflicts),
            parsed=outcome.parsed,  # of ``files``: only files whose bytes changed
            files=outcome.files,
            seconds=round(outcome.seconds, 3),
        )
    return True
