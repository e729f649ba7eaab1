"""Watch the keys the sync owns in etcd, and name the capabilities someone else changed.

Without it, a key edited or deleted by hand (an operator with etcdctl, a misbehaving
script) stayed wrong until the next full reconcile, up to a minute, and was then
repaired as if it were an ordinary update. The watch only says *which* namespace to look
at: the loop reconciles it against its file, and the reconcile, not the event, decides
whether anything is to be repaired. Our own transactions are recognised by their
revision and skipped; one that slips through costs a partial reconcile that finds
nothing to do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from services.core import keys, logs
from services.core.backoff import Backoff
from services.core.errors import Compacted, StoreError
from services.core.store import Store, Watch

log = logs.get("gitops_sync")


@dataclass(frozen=True, slots=True)
class Drifted:
    """A capability whose sync-owned keys were changed by someone other than us."""

    namespace: str


def drifted_namespace(key: str) -> str | None:
    """The namespace whose sync-owned key (or inventory entry) ``key`` is, else None:
    the heartbeat's ``health`` keys and anything unknown are not ours to repair."""
    if key.startswith(keys.SYNC_OWNED):
        return key[len(keys.SYNC_OWNED) :] or None
    split = keys.split(key)
    return split[0] if split and split[1] in keys.SYNC_KEYS else None


class DriftWatch(threading.Thread):
    """One watch on one prefix, from ``start_revision`` on, re-created from the last
    revision seen after a failure (with backoff). A compacted start asks the loop for a
    full reconcile (``on_compacted``) and goes on from the current revision."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        start_revision: int,
        *,
        is_ours: Callable[[int], bool],
        on_drift: Callable[[Drifted], None],
        on_compacted: Callable[[], None],
    ) -> None:
        super().__init__(name=f"drift-watch {prefix}", daemon=True)
        self.store, self.prefix, self.next_revision = store, prefix, start_revision
        self.is_ours, self.on_drift, self.on_compacted = is_ours, on_drift, on_compacted
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._watch: Watch | None = None

    def stop(self) -> None:
        self._halt.set()
        with self._lock:
            if self._watch is not None:
                self._watch.cancel()

    def run(self) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        while not self._halt.is_set():
            try:
                self._follow(backoff)
            except Compacted:
                self.on_compacted()
                try:
                    self.next_revision = self.store.revision() + 1
                except StoreError:
                    self._halt.wait(backoff.next())
            except StoreError as exc:
                delay = backoff.next()
                log.debug("drift watch failed; re-creating", prefix=self.prefix,
                          error=str(exc), retry_in=round(delay, 2))
                self._halt.wait(delay)

    def _follow(self, backoff: Backoff) -> None:
        with self._lock:
            if self._halt.is_set():
                return
            self._watch = watch = self.store.watch_prefix(self.prefix, self.next_revision)
        try:
            for events in watch:
                backoff.reset()
                for ev in events:
                    self.next_revision = max(self.next_revision, ev.kv.mod_revision + 1)
                    ns = drifted_namespace(ev.kv.key)
                    if ns is not None and not self.is_ours(ev.kv.mod_revision):
                        self.on_drift(Drifted(ns))
        finally:
            watch.cancel()
            with self._lock:
                self._watch = None
