"""Heartbeats that arrive together share one keep-alive stream.

Each heartbeat is still exactly one keep-alive of its instance's lease, but opening a
gRPC stream costs more than the keep-alive itself: the heartbeats that arrive within
``window`` seconds of each other (and the ones that arrive while a batch is being
sent) go out as one ``refresh_leases`` call, as the heartbeat daemon's rounds do. Under
a trickle a heartbeat waits at most ``window``; under load one stream carries hundreds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

Refresh = Callable[[Sequence[int]], Awaitable[dict[int, int]]]
CHUNK = 500  # leases per stream


class KeepAlives:
    def __init__(self, refresh: Refresh, *, window: float = 0.002) -> None:
        self.refresh = refresh  # runs Store.refresh_leases off the event loop
        self.window = window
        self._pending: dict[int, list[asyncio.Future[int]]] = {}
        self._scheduled = False

    async def keep_alive(self, lease: int) -> int:
        """The lease's new TTL; 0 when etcd no longer knows it. Raises what the batch's
        call raised (the etcd errors of the store)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.setdefault(lease, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(self.window, self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, {}
        leases = list(batch)
        for start in range(0, len(leases), CHUNK):
            chunk = {lease: batch[lease] for lease in leases[start:start + CHUNK]}
            asyncio.get_running_loop().create_task(self._send(chunk))

    async def _send(self, batch: dict[int, list[asyncio.Future[int]]]) -> None:
        try:
            ttls = await self.refresh(list(batch))
        except Exception as exc:  # every heartbeat of the batch gets the error
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for lease, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(ttls.get(lease, 0))
