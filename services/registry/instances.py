"""Registration, heartbeat and deregistration: the registry's only writes on behalf of
clients, each a few etcd calls made in a thread (the store is synchronous gRPC), never
on the event loop.

- register: a lease of ``removal_timeout`` seconds, then the record put on it in a txn
  guarded by "key absent"; etcd, not this process, removes a silent instance.
- heartbeat: ONE lease keep-alive (heartbeats arriving together share a stream,
  ``keepalives.py``), nothing written, unless the stored status is
  ``unhealthy`` (then the record goes back to ``up``, guarded by its mod revision). A
  lease etcd no longer knows answers 404: a DELETE revokes the lease, so a late
  heartbeat can never bring a deregistered instance back.
- deregister: revoke the lease (the key goes with it); already gone is fine.

After a write at revision W the answer waits (bounded) until the view holds W, so a GET
on this process right after it sees the write. Without an etcd quorum every write is
refused with 503 and the reason, at once: the client retries, nothing is half-done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from structlog.typing import FilteringBoundLogger

from services.core import keys
from services.core.errors import LeaseNotFound, NoSpace, StoreError, Unavailable
from services.core.kv import Delete, Put, Unchanged
from services.core.store import Store
from services.registry.hub import Hub
from services.registry.keepalives import KeepAlives
from services.registry.metrics import Metrics
from services.registry.records import (
    ServiceCreate,
    build_record,
    encode,
    iso,
    new_id,
    registered,
    with_status,
)
from services.registry.settings import Settings
from services.registry.state import Instance, parse_instance

T = TypeVar("T")
ID_ATTEMPTS = 3  # a clash of 32 random bits within one name: new id, new try


class NotFound(Exception):
    """404: the instance is not registered (never was, deregistered, or removed)."""


class Refused(Exception):
    """503: etcd cannot take the write now; ``str()`` says why."""


class Instances:
    def __init__(self, store: Store, hub: Hub, settings: Settings, metrics: Metrics,
                 log: FilteringBoundLogger) -> None:
        self.store, self.hub, self.settings = store, hub, settings
        self.metrics, self.log = metrics, log
        self.limiter = anyio.CapacityLimiter(settings.etcd_workers)
        self.keepalives = KeepAlives(self._refresh)

    async def _refresh(self, leases: Sequence[int]) -> dict[int, int]:
        return await self._etcd(self.store.refresh_leases, leases)

    async def _etcd(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(call, *args, limiter=self.limiter)
        except NoSpace as exc:
            raise Refused(str(exc)) from exc
        except Unavailable as exc:
            raise Refused(f"etcd quorum unavailable: {exc}") from exc

    def _writable(self) -> None:
        view = self.hub.view
        if not view.ready:
            raise Refused("registry starting: the first read of etcd is not done yet")
        if view.degraded:
            raise Refused(f"etcd quorum unavailable: {self.hub.degraded_reason}")

    async def _settle(self, revision: int) -> None:
        if not await self.hub.wait_revision(revision, self.settings.write_wait):
            self.metrics.ryw_timeouts.inc()
            self.log.warning("answering before the view shows the write", revision=revision,
                             view=self.hub.view.revision)

    # -- register ------------------------------------------------------------------------

    async def register(self, body: ServiceCreate) -> dict[str, Any]:
        self._writable()
        s = self.settings
        for _ in range(ID_ATTEMPTS):
            instance_id = new_id(body.name)
            key = keys.service(body.name, instance_id)
            record = build_record(body, instance_id, iso())
            lease = await self._etcd(self.store.grant, s.removal_timeout)
            try:
                ok, revision = await self._etcd(
                    self.store.txn, [Unchanged(key, 0)], [Put(key, encode(record), lease)])
            except (Refused, StoreError):
                # A timed-out put may have landed: revoking the lease removes it either way.
                await self._revoke_quietly(lease)
                self.metrics.writes.labels("register", "failed").inc()
                raise
            if ok:
                break
            await self._revoke_quietly(lease)
        else:
            raise Refused("no free instance id after several tries")
        self.metrics.writes.labels("register", "ok").inc()
        await self._settle(revision)
        self.hub.beat(key)
        self.log.info("instance registered", name=body.name, id=instance_id)
        return registered(record, s.heartbeat_timeout, s.removal_timeout)

    async def _revoke_quietly(self, lease: int) -> None:
        try:
            await self._etcd(self.store.revoke, lease)
        except (Refused, StoreError) as exc:
            self.log.warning("could not revoke an unused lease; it expires by itself",
                             lease=lease, error=str(exc))

    # -- heartbeat -----------------------------------------------------------------------

    async def heartbeat(self, name: str, instance_id: str) -> None:
        self._writable()
        key = keys.service(name, instance_id)
        inst = await self._find(key)
        if inst is None or inst.lease == 0:
            self.metrics.keepalives.labels("unknown").inc()
            raise NotFound(f"instance {instance_id!r} of {name!r} is not registered "
                           "(removed or never registered): register again")
        if await self.keepalives.keep_alive(inst.lease) <= 0:
            self.metrics.keepalives.labels("expired").inc()
            raise NotFound(f"instance {instance_id!r} of {name!r} was removed (its lease "
                           "expired or it was deregistered): register again")
        self.metrics.keepalives.labels("ok").inc()
        self.hub.beat(key)
        if inst.status != "up":
            await self._revive(inst)

    async def _find(self, key: str) -> Instance | None:
        """From the view; from etcd when the view does not have it (yet): an instance
        registered through another replica a moment ago must not get a 404."""
        inst = self.hub.view.instance(key)
        if inst is not None:
            return inst
        kv = await self._etcd(self.store.get, key)
        return None if kv is None else parse_instance(kv)

    async def _revive(self, inst: Instance) -> None:
        """``unhealthy`` → ``up``: the record rewritten on the same lease, only if nobody
        changed it since it was read (else re-read and decide again)."""
        for _ in range(3):
            value = with_status(inst.record, "up", iso())
            try:
                ok, revision = await self._etcd(
                    self.store.txn, [Unchanged(inst.key, inst.mod_revision)],
                    [Put(inst.key, value, inst.lease)])
            except LeaseNotFound as exc:
                raise NotFound(f"instance {inst.id!r} was removed: register again") from exc
            self.metrics.writes.labels("revive", "ok" if ok else "conflict").inc()
            if ok:
                self.log.info("instance heartbeating again: up", name=inst.name, id=inst.id)
                await self._settle(revision)
                return
            kv = await self._etcd(self.store.get, inst.key)
            found = None if kv is None else parse_instance(kv)
            if found is None:
                raise NotFound(f"instance {inst.id!r} was removed: register again")
            if found.status == "up":
                return
            inst = found

    # -- deregister ----------------------------------------------------------------------

    async def deregister(self, name: str, instance_id: str) -> None:
        self._writable()
        key = keys.service(name, instance_id)
        inst = self.hub.view.instance(key)
        lease, mod_revision = (inst.lease, inst.mod_revision) if inst else (0, 0)
        if inst is None:
            kv = await self._etcd(self.store.get, key)
            if kv is None:
                return  # already gone: 204 all the same
            lease, mod_revision = kv.lease, kv.mod_revision
        if lease:
            await self._etcd(self.store.revoke, lease)
        else:  # written by hand, without a lease
            await self._etcd(self.store.txn, [Unchanged(key, mod_revision)], [Delete(key)])
        self.metrics.writes.labels("deregister", "ok").inc()
        self.log.info("instance deregistered", name=name, id=instance_id)
        if not await self.hub.wait_for(lambda: self.hub.view.instance(key) is None,
                                       self.settings.write_wait):
            self.metrics.ryw_timeouts.inc()
