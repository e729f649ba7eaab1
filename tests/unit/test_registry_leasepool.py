"""Leases granted ahead of time (pure asyncio against a fake etcd of leases, no etcd)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest
import structlog

from services.core.errors import Unavailable
from services.registry.keepalives import KeepAlives
from services.registry.leasepool import LeasePool

LOG = structlog.get_logger("test")


class Leases:
    """etcd's leases as far as the pool sees them: grant, revoke, keep-alive."""

    def __init__(self) -> None:
        self.alive: set[int] = set()
        self.ids = itertools.count(1)
        self.grants = self.revokes = 0
        self.renewed: list[int] = []
        self.down = False

    async def grant(self) -> int:
        if self.down:
            raise Unavailable("no leader")
        self.grants += 1
        lease = next(self.ids)
        self.alive.add(lease)
        return lease

    async def revoke(self, lease: int) -> None:
        self.revokes += 1
        self.alive.discard(lease)

    async def refresh(self, leases: Sequence[int]) -> dict[int, int]:
        if self.down:
            raise Unavailable("no leader")
        self.renewed += leases
        return {lease: (60 if lease in self.alive else 0) for lease in leases}


def pool_of(etcd: Leases, size: int = 3) -> LeasePool:
    return LeasePool(etcd.grant, etcd.revoke, KeepAlives(etcd.refresh, window=0), ttl=60,
                     size=size, log=LOG)


async def filled(pool: LeasePool, etcd: Leases) -> asyncio.Task[None]:
    task = asyncio.create_task(pool.run())
    for _ in range(100):
        if len(pool) == pool.size:
            return task
        await asyncio.sleep(0)
    raise AssertionError(f"pool not filled: {len(pool)} of {pool.size}")


def test_a_waiting_lease_is_renewed_when_handed_out_and_the_pool_refills():
    etcd = Leases()

    async def scenario() -> tuple[int, int]:
        pool = pool_of(etcd)
        task = await filled(pool, etcd)
        grants_before = etcd.grants
        lease = await pool.take()
        await filled(pool, etcd)  # the refill is the next grant, off the register's path
        task.cancel()
        return lease, grants_before

    lease, grants_before = asyncio.run(scenario())
    assert grants_before == 3 and etcd.grants == 4
    assert lease in etcd.alive and lease in etcd.renewed  # its whole TTL from the take on


def test_a_lease_etcd_forgot_is_never_handed_out():
    etcd = Leases()

    async def scenario() -> int:
        pool = pool_of(etcd)
        task = await filled(pool, etcd)
        etcd.alive.clear()  # expired during a quorum loss, or a restored snapshot
        lease = await pool.take()
        task.cancel()
        return lease

    lease = asyncio.run(scenario())
    assert lease == 4, "the three forgotten leases were skipped and one granted inline"


def test_an_empty_pool_grants_inline_and_a_refusing_etcd_is_the_callers_error():
    etcd = Leases()

    async def scenario() -> tuple[int, BaseException | None]:
        pool = pool_of(etcd, size=0)
        lease = await pool.take()
        etcd.down = True
        try:
            await pool.take()
        except Unavailable as exc:
            return lease, exc
        return lease, None

    lease, error = asyncio.run(scenario())
    assert lease == 1 and isinstance(error, Unavailable)


def test_while_etcd_refuses_the_pool_backs_off_instead_of_spinning():
    etcd = Leases()
    etcd.down = True
    attempts = 0
    grant = etcd.grant

    async def counting() -> int:
        nonlocal attempts
        attempts += 1
        return await grant()

    async def scenario() -> None:
        pool = LeasePool(counting, etcd.revoke, KeepAlives(etcd.refresh, window=0), ttl=60,
                         size=3, log=LOG)
        task = asyncio.create_task(pool.run())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert 1 <= attempts <= 4, f"{attempts} grants tried in 0.5 s"


def test_close_revokes_the_leases_still_waiting():
    etcd = Leases()

    async def scenario() -> int:
        pool = pool_of(etcd)
        task = await filled(pool, etcd)
        taken = await pool.take()
        task.cancel()
        await pool.close(timeout=1)
        return taken

    taken = asyncio.run(scenario())
    assert etcd.alive == {taken}, "only the lease handed out outlives the pool"
