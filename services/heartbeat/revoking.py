"""The revoke queue: leases to revoke (a service left the set, a lease retired after its
key moved to a new one), sent on the lease pool, retried until they would have run out
anyway. Apart from the loop because a revoke is the one write no transaction can fence:
each batch is sent only after ``may_revoke`` proved this process still leads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Protocol

from services.heartbeat.metrics import Metrics

RETRY_AFTER = 1.0  # seconds before a failed revoke is sent again


class Revoker(Protocol):
    def revoke(self, lease_id: int) -> None: ...


class Revokes:
    def __init__(self, store: Revoker, pool: Executor, metrics: Metrics,
                 clock: Callable[[], float], may_revoke: Callable[[], bool]) -> None:
        self.store, self.pool, self.metrics, self.clock = store, pool, metrics, clock
        self.may_revoke = may_revoke
        self._queue: deque[tuple[int, float, float]] = deque()  # lease, give up at, not before

    def add(self, lease: int, give_up: float) -> None:
        """Revoke ``lease``, trying until ``give_up`` (when it expires by itself)."""
        self._queue.append((lease, give_up, 0.0))

    def leases(self) -> list[int]:
        """The leases still queued (``--revoke-on-exit`` revokes them at once)."""
        return [lease for lease, _, _ in self._queue]

    def submit(self, now: float) -> None:
        """Send the queued revokes on the pool; a failed one is queued again (not before
        ``RETRY_AFTER`` from then), until its lease would have run out anyway."""
        if self._queue and not self.may_revoke():
            return
        for _ in range(len(self._queue)):
            lease, give_up, not_before = self._queue.popleft()
            if now > give_up:
                continue  # expired by now anyway
            if now < not_before:
                self._queue.append((lease, give_up, not_before))
                continue
            fut = self.pool.submit(self.store.revoke, lease)
            fut.add_done_callback(lambda f, lease=lease, g=give_up: self._done(f, lease, g))

    def _done(self, fut: Future[None], lease: int, give_up: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._queue.append((lease, give_up, self.clock() + RETRY_AFTER))
        else:
            self.metrics.leases_revoked.inc()
