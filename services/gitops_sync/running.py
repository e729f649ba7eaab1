"""The daemon's loop: when to reconcile, and what to do when etcd is away.

Triggers: a full reconcile at start and every ``interval``; debounced file events in
between, each reconciling only the files concerned. On an etcd failure the loop backs off
(capped, jittered) and folds everything pending into the next full reconcile, so it
neither spins nor exits, and converges once etcd is back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.core import logs
from services.core.retry import Backoff
from services.core.store import StoreError, Unavailable
from services.gitops_sync import telemetry
from services.gitops_sync.reconciling import Outcome, Reconciler
from services.gitops_sync.scanning import DirectoryMissing
from services.gitops_sync.watching import RESCAN, Debouncer, Watcher

log = logs.get("gitops_sync")


@dataclass
class Health:
    """What /healthz reports: are we reaching etcd, and when did we last succeed."""

    etcd_ok: bool = False
    last_error: str = ""
    last_success: float = 0.0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> tuple[bool, dict[str, object]]:
        with self.lock:
            age = time.time() - self.last_success if self.last_success else None
            return self.etcd_ok, {
                "etcd": "reachable" if self.etcd_ok else f"unreachable: {self.last_error}",
                "last_success_seconds_ago": round(age, 1) if age is not None else None,
                "manifest_errors": self.errors,
            }


def run(
    reconciler: Reconciler,
    stop: threading.Event,
    *,
    interval: float = 60.0,
    debounce: float = 0.05,
    health: Health | None = None,
) -> None:
    health = health or Health()
    events = Debouncer(quiet=debounce)
    watcher: Watcher | None = None
    backoff = Backoff(initial=0.5, cap=30.0)
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
                ok = _attempt(reconciler.full, health, backoff)
                next_full = time.monotonic() + (interval if ok else backoff.next())
                if ok:
                    log.info("next full reconcile", in_seconds=interval)
                continue
            names = events.take(timeout=min(next_full - now, 0.5))
            if not names or stop.is_set():
                continue
            if backoff.failures:
                continue  # failing: the full reconcile the backoff scheduled covers these files
            if RESCAN in names:
                next_full = 0.0  # a directory changed: one full pass covers it
                continue
            if not _attempt(lambda n=names: reconciler.partial(n), health, backoff):
                next_full = time.monotonic() + backoff.next()
    finally:
        if watcher is not None:
            watcher.stop()


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


def _attempt(action: object, health: Health, backoff: Backoff) -> bool:
    try:
        outcome: Outcome = action()  # type: ignore[operator]
    except Unavailable as exc:
        telemetry.ETCD_FAILURES.inc()
        telemetry.RECONCILES.labels("any", "etcd_unavailable").inc()
        with health.lock:
            health.etcd_ok, health.last_error = False, str(exc)
        log.warning("etcd unavailable; will retry", error=str(exc), failures=backoff.failures + 1)
        return False
    except DirectoryMissing as exc:
        log.error("nothing synced", reason=str(exc))
        return False
    except StoreError as exc:
        log.error("etcd rejected a request", error=str(exc))
        return False
    except Exception:  # a daemon logs a bug and retries; it does not die
        log.exception("reconcile failed unexpectedly; will retry")
        return False
    backoff.reset()
    with health.lock:
        health.etcd_ok, health.last_error = True, ""
        health.last_success, health.errors = time.time(), len(outcome.errors)
    if outcome.plan.changes or outcome.kind == "full":
        log.info(
            "reconcile finished",
            kind=outcome.kind,
            changes=outcome.applied,
            errors=len(outcome.errors),
            conflicts=len(outcome.conflicts),
            seconds=round(outcome.seconds, 3),
        )
    return True
