"""The status writer: the one loop that writes without a client asking, and only when a
state changes. Steady heartbeats write nothing (they are lease keep-alives); this loop
marks an instance ``unhealthy`` once it has been silent for more than
``--heartbeat-timeout``, and etcd removes it at ``--removal-timeout`` by itself.

Silence is measured against the latest keep-alive this process forwarded (``Hub.beats``).
An instance it knows nothing about (after a restart, or heartbeating through another
replica) gets one remaining-TTL lookup of its lease: last beat ≈ now - (removal_timeout
- remaining). The same lookup confirms every verdict before the write, so a replica
never marks unhealthy an instance that beats through another one. etcd resets the
remaining TTL on a leader change (TTL is a minimum): that can only delay a verdict.

Nothing is marked while the view is not ready or has no quorum, and silence is counted
from the moment the quorum came back, since heartbeats could not arrive meanwhile.
Every write is guarded by the record's mod revision, on the same lease: it cannot
overwrite a newer state, nor bring back a removed instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.to_thread
from structlog.typing import FilteringBoundLogger

from services.core.errors import StoreError
from services.core.kv import Put, Unchanged
from services.core.store import Store
from services.registry.hub import Hub
from services.registry.metrics import Metrics
from services.registry.records import iso, with_status
from services.registry.settings import Settings
from services.registry.state import Instance

BATCH = 512  # lookups per step at most: a registry restarted under 10,000 instances
PRUNE_EVERY = 60  # steps between two clean-ups of forgotten beats
TTL_GRAIN = 1.0  # etcd reports remaining TTL in whole seconds, rounded down


class StatusWriter:
    def __init__(self, store: Store, hub: Hub, settings: Settings, metrics: Metrics,
                 log: FilteringBoundLogger, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.store, self.hub, self.settings = store, hub, settings
        self.metrics, self.log, self.clock = metrics, log, clock
        self.limiter = anyio.CapacityLimiter(settings.lookup_workers)
        self._steps = 0

    async def run(self) -> None:
        """Until cancelled (the daemon's shutdown)."""
        while True:
            try:
                await self.step()
            except Exception:  # a bug here must not end the loop for good
                self.log.exception("status writer step failed")
            await asyncio.sleep(self.settings.status_tick)

    def due(self) -> list[Instance]:
        """Instances stored as ``up`` whose silence may have passed the timeout."""
        view, beats = self.hub.view, self.hub.beats
        if not view.ready or view.degraded:
            return []
        now, floor = self.clock(), self.hub.recovered_at
        timeout = self.settings.heartbeat_timeout
        out = []
        for inst in view.state.instances.values():
            if inst.status != "up" or inst.lease == 0:
                continue
            last = beats.get(inst.key)
            if last is None or now - max(last, floor) > timeout:
                out.append(inst)
                if len(out) >= BATCH:
                    break
        return out

    async def step(self) -> int:
        """One pass: the instances marked ``unhealthy``."""
        self._steps += 1
        if self._steps % PRUNE_EVERY == 0:
            held = self.hub.view.state.instances
            for key in [k for k in self.hub.beats if k not in held]:
                del self.hub.beats[key]
        found = self.due()
        if not found:
            return 0
        results = await asyncio.gather(*(self._judge(inst) for inst in found))
        return sum(results)

    async def _judge(self, inst: Instance) -> bool:
        try:
            remaining = await anyio.to_thread.run_sync(
                self.store.lease_ttl, inst.lease, limiter=self.limiter)
        except StoreError as exc:
            self.log.debug("lease lookup failed", key=inst.key, error=str(exc))
            return False
        self.metrics.lease_lookups.inc()
        if remaining < 0:
            return False  # the lease is gone: etcd is deleting the key right now
        now = self.clock()
        # The latest the last beat can have been (whole seconds, rounded down): a verdict
        # from a lookup may come a second late, never early.
        estimate = now - max(0.0, self.settings.removal_timeout - remaining - TTL_GRAIN)
        known = self.hub.beats.get(inst.key)
        # Within that rounding, what this process saw itself is the better figure.
        last = known if known is not None and estimate <= known + TTL_GRAIN else estimate
        self.hub.beats[inst.key] = last
        silent = now - max(last, self.hub.recovered_at)
        if silent <= self.settings.heartbeat_timeout:
            return False
        current = self.hub.view.instance(inst.key)
        if (current is None or current.mod_revision != inst.mod_revision
                or current.status != "up" or self.hub.view.degraded):
            return False
        last_beat = iso(datetime.now(UTC) - timedelta(seconds=now - last))
        value = with_status(current.record, "unhealthy", last_beat)
        try:
            ok, _ = await anyio.to_thread.run_sync(
                self.store.txn, [Unchanged(inst.key, inst.mod_revision)],
                [Put(inst.key, value, inst.lease)], limiter=self.limiter)
        except StoreError as exc:  # LeaseNotFound: removed meanwhile; else: next step
            self.log.debug("marking unhealthy failed", key=inst.key, error=str(exc))
            return False
        self.metrics.writes.labels("unhealthy", "ok" if ok else "conflict").inc()
        if ok:
            self.log.info("instance silent: marked unhealthy", name=inst.name, id=inst.id,
                          silent_seconds=round(silent, 1))
        return ok
