"""Leases granted ahead of time, so that a register is one raft write, not two.

A lease grant is a raft write of its own: granted on the register's path, it doubled the
fsyncs a register waits for, and at 4 registrations in flight the grant alone put p99
over 20 ms on a shared disk. So a few leases of ``ttl`` seconds are granted in the
background and kept alive while they wait; ``take()`` hands one out after one
keep-alive (not a raft write, and batched with the heartbeats: ``keepalives.py``), so
the instance gets its whole ``ttl`` from the moment it registers, exactly as a lease
granted then would. A lease etcd no longer knows (expired during a quorum loss,
revoked by a restored snapshot) is dropped, never handed out; an empty pool grants
inline, so the pool only ever makes a register faster, never wrong.

Lifecycle, in one place: ``run()`` (a task of the daemon) fills the pool, refreshes
the waiting leases every third of their ``ttl`` and backs off while etcd refuses;
``close()`` revokes the ones still waiting, so a clean stop leaves none behind (a crash
leaves at most ``size`` of them, which expire after ``ttl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from structlog.typing import FilteringBoundLogger

from services.core.backoff import Backoff
from services.registry.keepalives import KeepAlives

Grant = Callable[[], Awaitable[int]]
Revoke = Callable[[int], Awaitable[None]]


class LeasePool:
    def __init__(self, grant: Grant, revoke: Revoke, keepalives: KeepAlives, *, ttl: int,
                 size: int, log: FilteringBoundLogger) -> None:
        self._grant, self._revoke, self._keepalives = grant, revoke, keepalives
        self.ttl, self.size, self.log = ttl, size, log
        self._spare: list[int] = []
        self._wanted = asyncio.Event()

    def __len__(self) -> int:
        return len(self._spare)

    def waiting(self) -> list[int]:
        """The leases waiting to be handed out (a copy)."""
        return list(self._spare)

    async def take(self) -> int:
        """A lease with its whole ``ttl`` ahead: a waiting one renewed now, else a new
        grant. Raises what the store raises when etcd refuses both."""
        self._wanted.set()
        while self._spare:
            lease = self._spare.pop()
            try:
                if await self._keepalives.keep_alive(lease) > 0:
                    return lease
            except Exception:  # etcd refuses now: grant inline, which says why
                self._spare.append(lease)
                break
        return await self._grant()

    async def run(self) -> None:
        """Keep ``size`` leases waiting, alive; until cancelled. Woken by every take."""
        backoff = Backoff(initial=0.2, cap=5.0)
        refresh_every = max(1.0, self.ttl / 3)
        refreshed = time.monotonic()
        while True:
            self._wanted.clear()  # before refilling: a take meanwhile wakes the next turn
            try:
                while len(self._spare) < self.size:
                    self._spare.append(await self._grant())
                if time.monotonic() - refreshed >= refresh_every:
                    await self._refresh()
                    refreshed = time.monotonic()
            except Exception as exc:  # unavailable, no space: a write fails the same way
                delay = backoff.next()
                self.log.debug("lease pool not refilled; retrying", error=str(exc),
                               retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), refresh_every)

    async def _refresh(self) -> None:
        """Renew the waiting leases (one batch); drop the ones etcd has forgotten."""
        waiting = list(self._spare)
        ttls = await asyncio.gather(*(self._keepalives.keep_alive(lease) for lease in waiting))
        dead = {lease for lease, ttl in zip(waiting, ttls, strict=True) if ttl <= 0}
        if dead:
            self._spare = [lease for lease in self._spare if lease not in dead]

    async def close(self, timeout: float) -> None:
        """Revoke the waiting leases (bounded: whatever is left expires after ``ttl``)."""
        spare, self._spare = self._spare, []
        if not spare:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._revoke(lease) for lease in spare),
                               return_exceptions=True), timeout)
        except TimeoutError:
            self.log.warning("spare leases not revoked in time; they expire by themselves",
                             count=len(spare), ttl=self.ttl)
