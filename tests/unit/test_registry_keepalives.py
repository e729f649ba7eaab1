"""Heartbeats arriving together share one keep-alive call (pure asyncio, no etcd)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.core.errors import Unavailable
from services.registry.keepalives import CHUNK, KeepAlives


class Etcd:
    def __init__(self, known: set[int], fail: bool = False) -> None:
        self.known, self.fail = known, fail
        self.calls: list[list[int]] = []

    async def refresh(self, leases: Sequence[int]) -> dict[int, int]:
        self.calls.append(list(leases))
        await asyncio.sleep(0)
        if self.fail:
            raise Unavailable("no leader")
        return {lease: (60 if lease in self.known else 0) for lease in leases}


def test_heartbeats_arriving_together_share_one_call_each_lease_once():
    etcd = Etcd(known={1, 2})
    keepalives = KeepAlives(etcd.refresh, window=0.01)

    async def beats() -> list[int]:
        return await asyncio.gather(*(keepalives.keep_alive(lease) for lease in (1, 2, 2, 3)))

    assert asyncio.run(beats()) == [60, 60, 60, 0]  # 0: etcd no longer knows lease 3
    assert etcd.calls == [[1, 2, 3]]


def test_a_failed_call_fails_every_heartbeat_it_carried_and_the_next_batch_goes_on():
    etcd = Etcd(known={1}, fail=True)
    keepalives = KeepAlives(etcd.refresh, window=0)

    async def beats() -> tuple[list[object], int]:
        failed = await asyncio.gather(keepalives.keep_alive(1), keepalives.keep_alive(1),
                                      return_exceptions=True)
        etcd.fail = False
        return failed, await keepalives.keep_alive(1)

    failed, after = asyncio.run(beats())
    assert all(isinstance(f, Unavailable) for f in failed) and after == 60


def test_a_large_batch_is_split_into_streams_of_bounded_size():
    etcd = Etcd(known=set(range(CHUNK + 10)))
    keepalives = KeepAlives(etcd.refresh, window=0.01)

    async def beats() -> list[int]:
        return await asyncio.gather(*(keepalives.keep_alive(i) for i in range(CHUNK + 10)))

    assert set(asyncio.run(beats())) == {60}
    assert [len(c) for c in etcd.calls] == [CHUNK, 10]


@pytest.mark.parametrize("window", [0, 0.005])
def test_a_lone_heartbeat_waits_at_most_the_window(window):
    etcd = Etcd(known={7})
    keepalives = KeepAlives(etcd.refresh, window=window)

    async def beat() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await keepalives.keep_alive(7) == 60
        return loop.time() - began

    assert asyncio.run(beat()) < window + 0.05
