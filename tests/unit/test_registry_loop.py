"""The status writer against an in-memory store and a fake clock: one remaining-TTL lookup
decides, steady instances cost nothing, a write is guarded, and no quorum means no
verdict."""

from __future__ import annotations

import asyncio
import json

from services.core import keys, logs
from services.core.errors import LeaseNotFound
from services.core.kv import KeyValue, Put, Unchanged
from services.registry.hub import Hub
from services.registry.loop import StatusWriter
from services.registry.metrics import Metrics
from services.registry.settings import Settings
from services.registry.state import State
from services.registry.view import View

KEY = keys.service("svc", "svc-00000001")
LEASE = 42


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Etcd:
    def __init__(self, remaining: int = -1) -> None:
        self.remaining = remaining
        self.lookups: list[int] = []
        self.txns: list[tuple[list[Unchanged], list[Put]]] = []
        self.fail_txn: Exception | None = None

    def lease_ttl(self, lease: int) -> int:
        self.lookups.append(lease)
        return self.remaining

    def txn(self, guards: list[Unchanged], ops: list[Put]) -> tuple[bool, int]:
        if self.fail_txn is not None:
            raise self.fail_txn
        self.txns.append((guards, ops))
        return True, 99


def writer(etcd: Etcd, status: str = "up") -> tuple[StatusWriter, Hub, Clock]:
    value = json.dumps({"name": "svc", "id": "svc-00000001", "status": status,
                        "last_heartbeat": "2026-11-23T10:00:00.000Z"}).encode()
    view = View()
    view.swap(State.from_kvs({KEY: KeyValue(KEY, value, 5, 5, LEASE)}, 5))
    clock = Clock()
    hub = Hub(view, Metrics(), logs.get("test"), clock=clock)
    settings = Settings(("127.0.0.1:1",), heartbeat_timeout=30, removal_timeout=60)
    return StatusWriter(etcd, hub, settings, Metrics(), logs.get("test"), clock=clock), hub, clock


def step(w: StatusWriter) -> int:
    return asyncio.run(w.step())


def test_an_instance_heard_here_within_the_timeout_costs_no_lookup_and_no_write():
    etcd = Etcd()
    w, hub, clock = writer(etcd)
    hub.beats[KEY] = clock.now - 29
    assert step(w) == 0 and etcd.lookups == [] and etcd.txns == []


def test_a_silence_confirmed_by_the_lease_is_written_as_unhealthy_guarded_on_the_lease():
    etcd = Etcd(remaining=28)  # the lease says 31-32 s of silence too
    w, hub, clock = writer(etcd)
    hub.beats[KEY] = clock.now - 31
    assert step(w) == 1 and etcd.lookups == [LEASE]
    [(guards, ops)] = etcd.txns
    assert guards == [Unchanged(KEY, 5)]
    assert ops[0].key == KEY and ops[0].lease == LEASE
    assert json.loads(ops[0].value)["status"] == "unhealthy"


def test_beats_through_another_replica_keep_the_instance_up_and_are_looked_up_once():
    etcd = Etcd(remaining=56)  # refreshed ~3 s ago, not through this process
    w, hub, clock = writer(etcd)
    hub.beats[KEY] = clock.now - 45
    assert step(w) == 0 and etcd.txns == []
    assert hub.beats[KEY] >= clock.now - 4
    clock.now += 10
    assert step(w) == 0 and len(etcd.lookups) == 1  # no lookup until it could be silent


def test_an_instance_never_heard_here_is_judged_from_its_lease_once():
    etcd = Etcd(remaining=50)
    w, _, clock = writer(etcd)
    assert step(w) == 0 and etcd.lookups == [LEASE]
    assert step(w) == 0 and etcd.lookups == [LEASE]
    clock.now += 25
    etcd.remaining = 25  # ~34 s of silence by the lease's account, rounded towards later
    assert step(w) == 1 and len(etcd.lookups) == 2


def test_a_lease_etcd_no_longer_knows_is_left_for_etcd_to_remove():
    etcd = Etcd(remaining=-1)
    w, _, _ = writer(etcd)
    assert step(w) == 0 and etcd.txns == []


def test_no_verdict_without_a_quorum_and_silence_counts_again_from_its_return():
    etcd = Etcd(remaining=0)
    w, hub, clock = writer(etcd)
    hub.beats[KEY] = clock.now - 50
    hub.view.set_degraded(True)
    assert step(w) == 0 and etcd.lookups == []
    hub.view.set_degraded(False)
    hub.recovered_at = clock.now
    assert step(w) == 0 and etcd.lookups == []
    clock.now += 31
    assert step(w) == 1


def test_instances_already_unhealthy_are_left_alone_and_a_lost_race_writes_nothing():
    etcd = Etcd(remaining=0)
    w, _, _ = writer(etcd, status="unhealthy")
    assert step(w) == 0 and etcd.lookups == []
    etcd = Etcd(remaining=0)
    etcd.fail_txn = LeaseNotFound("requested lease not found")
    w, _, _ = writer(etcd)
    assert step(w) == 0
