"""The heartbeat loop across restarts, crashes, rejoins and outages, driven by a fake
clock against an in-memory etcd (leases that run out, keys attached to them):
deterministic, no etcd.

What a restart must keep: every adopted lease refreshed before it runs out, the lease TTL
the new daemon was given, and a ``heartbeat_count`` that never repeats or goes back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from services.core import keys
from services.core.errors import LeaseNotFound, Unavailable
from services.core.kv import MAX_TXN_OPS, KeyValue, Op, Put, Unchanged
from services.heartbeat.checks import NO_CHECK
from services.heartbeat.discovering import read_health
from services.heartbeat.loop import Heartbeat
from services.heartbeat.metrics import Metrics
from services.heartbeat.sessions import COUNT_BLOCK
from services.heartbeat.settings import Settings
from services.heartbeat.states import parse_record
from tests.conftest import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEtcd:
    """The part of ``Store`` the heartbeat uses: keys, leases that run out on the clock
    (their keys go with them, recorded in ``deleted``), one revision per txn."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.kv: dict[str, tuple[bytes, int]] = {}
        self.leases: dict[int, tuple[int, float]] = {}  # id -> (granted TTL, runs out at)
        self.deleted: list[str] = []
        self.txns: list[list[Op]] = []
        self.rev = 1
        self.down = False  # no quorum: every call raises Unavailable
        self._next_lease = 100
        self._lock = threading.RLock()

    def expire(self) -> None:
        with self._lock:
            for lease, (_, until) in list(self.leases.items()):
                if until <= self.clock():
                    self._drop(lease)

    def _drop(self, lease: int) -> None:
        del self.leases[lease]
        for key, (_, on) in list(self.kv.items()):
            if on == lease:
                del self.kv[key]
                self.deleted.append(key)

    def _reach(self) -> None:
        if self.down:
            raise Unavailable("UNAVAILABLE: no quorum")

    def grant(self, ttl: int) -> int:
        self._reach()
        with self._lock:
            self._next_lease += 1
            self.leases[self._next_lease] = (ttl, self.clock() + ttl)
            return self._next_lease

    def revoke(self, lease: int) -> None:
        self._reach()
        with self._lock:
            self.expire()
            if lease in self.leases:
                self._drop(lease)

    def refresh_leases(self, ids: Iterable[int]) -> dict[int, int]:
        self._reach()
        with self._lock:
            self.expire()
            out = {}
            for lease in ids:
                ttl = self.leases.get(lease, (0, 0.0))[0]
                if ttl:
                    self.leases[lease] = (ttl, self.clock() + ttl)
                out[lease] = ttl
            return out

    def txn(self, guards: Iterable[Unchanged], ops: Iterable[Op]) -> tuple[bool, int]:
        self._reach()
        ops = list(ops)
        assert not list(guards) and len(ops) <= MAX_TXN_OPS
        with self._lock:
            self.expire()
            if any(isinstance(op, Put) and op.lease and op.lease not in self.leases
                   for op in ops):
                raise LeaseNotFound("requested lease not found")
            for op in ops:
                assert isinstance(op, Put)
                self.kv[op.key] = (op.value, op.lease)
            self.rev += 1
            self.txns.append(ops)
            return True, self.rev

    def get_prefix(self, prefix: str) -> tuple[dict[str, KeyValue], int]:
        with self._lock:
            self.expire()
            return {k: KeyValue(k, v, 0, 0, lease) for k, (v, lease) in self.kv.items()
                    if k.startswith(prefix)}, self.rev

    def revision(self) -> int:
        self._reach()
        return self.rev

    # -- what a test reads -----------------------------------------------------------------

    def count(self, ns: str) -> int | None:
        value = self.kv.get(keys.capability(ns, keys.HEALTH))
        return None if value is None else (parse_record(value[0]) or {})["heartbeat_count"]

    def health_lease(self, ns: str) -> int:
        return self.kv[keys.capability(ns, keys.HEALTH)][1]

    def health_deleted(self) -> list[str]:
        return [k for k in self.deleted if k.endswith("/" + keys.HEALTH)]


def world() -> tuple[Clock, FakeEtcd]:
    clock = Clock()
    return clock, FakeEtcd(clock)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    warning = error = info


def daemon(etcd: FakeEtcd, clock: Clock, *, ttl: int = 30, interval: float = 10.0,
           log: Log | None = None) -> Heartbeat:
    settings = Settings(("127.0.0.1:1",), ttl=ttl, interval=interval, etcd_timeout=1.0)
    return Heartbeat(etcd, settings, Metrics(), log or Log(), clock=clock)  # type: ignore[arg-type]


def start(hb: Heartbeat, etcd: FakeEtcd, services: Iterable[str]) -> None:
    """What discovery does at start: the set, with the hints read from etcd."""
    _, hints, _ = read_health(etcd)  # type: ignore[arg-type]
    hb.update({ns: NO_CHECK for ns in services}, hints)


def run_for(hb: Heartbeat, etcd: FakeEtcd, clock: Clock, seconds: float) -> None:
    """Tick the scheduler every 0.1 s of fake time, as ``run`` does."""
    end = clock.now + seconds
    while clock.now < end:
        etcd.expire()
        hb.step(clock.now)
        clock.now = round(clock.now + 0.1, 6)


def names(n: int) -> list[str]:
    return [f"team.s{i:02d}" for i in range(n)]


# -- defect 1: adopted leases are refreshed before they run out -----------------------------


def test_a_restart_20s_after_a_crash_refreshes_every_adopted_lease_before_it_runs_out():
    """The fault probe's case: TTL 30, interval 10, 11 services, kill -9 mid-interval,
    a new daemon 20 s later. Leases beaten early in the killed daemon's last interval
    have ~9 s left; spreading their first refresh over 10 s lost 4 keys."""
    clock, etcd = world()
    services = names(11)
    first = daemon(etcd, clock)
    start(first, etcd, services)
    run_for(first, etcd, clock, 15.0)  # half-way through its second interval: kill -9
    assert all(etcd.count(ns) for ns in services)
    clock.now += 20.0  # no finish(): the leases are left as they were
    etcd.expire()
    assert all(etcd.count(ns) for ns in services), "all within their TTL at the restart"
    second = daemon(etcd, clock)
    start(second, etcd, services)
    run_for(second, etcd, clock, 60.0)
    assert etcd.health_deleted() == []
    assert {etcd.health_lease(ns) for ns in services} <= set(etcd.leases)
    assert second.metrics.leases_granted._value.get() == 0  # all adopted, none replaced


def test_adopted_sessions_are_due_at_once_and_then_scattered_over_one_interval():
    clock, etcd = world()
    adopted = names(40)
    for ns in adopted:  # left by a previous daemon: health keys on live leases
        lease = etcd.grant(30)
        etcd.txn([], [Put(keys.capability(ns, keys.HEALTH), b'{"heartbeat_count": 5}', lease)])
    hb = daemon(etcd, clock)
    start(hb, etcd, [*adopted, "team.new1", "team.new2"])
    hb.step(clock.now)  # the first round
    assert all(etcd.count(ns) == 6 for ns in adopted), "every adopted lease beat at once"
    assert (etcd.count("team.new1"), etcd.count("team.new2")) == (1, None)  # new: spread
    after = dict(hb.schedule.pop_due(clock.now + 100))
    nxt = [after[ns] for ns in adopted]
    assert all(clock.now <= t <= clock.now + 10.0 for t in nxt)
    assert len(set(nxt)) == len(nxt), "adopted sessions must not beat in lockstep"
    assert after["team.new2"] == clock.now + 5.0  # new ones: spread evenly, as before


def test_a_term_taking_over_beats_services_without_a_key_at_once_and_then_scatters_them():
    """A standby leading after a quorum loss in which a frozen etcd leader revoked the
    leases: no key left to adopt, yet a consumer reads a missing key as "down"."""
    clock, etcd = world()
    lost = names(12)
    hb = daemon(etcd, clock)
    hb.catch_up = True
    start(hb, etcd, lost)
    hb.step(clock.now)  # the first round
    assert all(etcd.count(ns) == 1 for ns in lost), "every service beat in the first round"
    nxt = list(dict(hb.schedule.pop_due(clock.now + 100)).values())
    assert all(clock.now <= t <= clock.now + 10.0 for t in nxt)
    assert len(set(nxt)) == len(nxt), "and then not in lockstep"


# -- defect 6: --ttl applies to adopted leases ---------------------------------------------


def test_an_adopted_lease_with_another_ttl_is_replaced_by_one_with_the_ttl_given():
    clock, etcd = world()
    services = names(3)
    first = daemon(etcd, clock, ttl=30, interval=10)
    start(first, etcd, services)
    run_for(first, etcd, clock, 12.0)
    first.finish()
    old = {ns: etcd.health_lease(ns) for ns in services}
    log = Log()
    second = daemon(etcd, clock, ttl=5, interval=1, log=log)
    start(second, etcd, services)
    run_for(second, etcd, clock, 3.0)
    for ns in services:
        lease = etcd.health_lease(ns)
        assert lease != old[ns] and etcd.leases[lease][0] == 5
    assert etcd.health_deleted() == []  # the key moved to the new lease, no gap
    wait_for(lambda: not set(old.values()) & set(etcd.leases), 5,
             what="the replaced leases revoked")
    lines = [f for e, f in log.lines if "TTL other than --ttl" in e]
    assert sum(f["count"] for f in lines) == 3  # once per lease (one line per round)
    assert all((f["adopted_ttls"], f["ttl"]) == ([30], 5) for f in lines)
    run_for(second, etcd, clock, 5.0)
    assert [f for e, f in log.lines if "TTL other than --ttl" in e] == lines  # no more


def test_an_adopted_lease_with_the_ttl_given_is_kept():
    clock, etcd = world()
    first = daemon(etcd, clock, ttl=30)
    start(first, etcd, ["team.keep"])
    run_for(first, etcd, clock, 1.0)
    lease = etcd.health_lease("team.keep")
    second = daemon(etcd, clock, ttl=30)
    start(second, etcd, ["team.keep"])
    run_for(second, etcd, clock, 25.0)
    assert etcd.health_lease("team.keep") == lease


# -- defect 7: heartbeat_count continues whatever happened to the key ----------------------


def test_the_count_continues_exactly_after_a_clean_stop_even_when_the_key_expired():
    clock, etcd = world()
    first = daemon(etcd, clock, ttl=3, interval=1)
    start(first, etcd, ["team.a"])
    run_for(first, etcd, clock, 5.05)
    last = etcd.count("team.a")
    first.finish()
    clock.now += 10.0  # longer than the TTL: the health key expires
    etcd.expire()
    assert etcd.count("team.a") is None
    second = daemon(etcd, clock, ttl=3, interval=1)
    start(second, etcd, ["team.a"])
    run_for(second, etcd, clock, 0.2)
    assert etcd.count("team.a") == last + 1


def test_after_a_crash_and_an_expiry_the_count_jumps_at_most_one_block_and_never_repeats():
    clock, etcd = world()
    first = daemon(etcd, clock, ttl=3, interval=1)
    start(first, etcd, ["team.a"])
    seen: list[int] = []
    for _ in range(2 * COUNT_BLOCK + 30):  # across two reservations
        run_for(first, etcd, clock, 1.0)
        seen.append(etcd.count("team.a"))
    clock.now += 10.0  # kill -9: no finish(); the key expires
    etcd.expire()
    assert etcd.count("team.a") is None
    second = daemon(etcd, clock, ttl=3, interval=1)
    start(second, etcd, ["team.a"])
    run_for(second, etcd, clock, 0.2)
    assert max(seen) < etcd.count("team.a") <= max(seen) + COUNT_BLOCK + 1


def test_a_service_that_leaves_and_rejoins_continues_its_count():
    clock, etcd = world()
    hb = daemon(etcd, clock, ttl=3, interval=1)
    start(hb, etcd, ["team.a", "team.b"])
    run_for(hb, etcd, clock, 4.0)
    before = etcd.count("team.a")
    hb.update({"team.b": NO_CHECK}, {})  # the watch: team.a is no longer a service
    run_for(hb, etcd, clock, 1.0)
    wait_for(lambda: etcd.count("team.a") is None, 5, what="team.a's lease revoked")
    assert etcd.kv[keys.heartbeat_count("team.a")][0] == str(before).encode()
    hb.update({"team.a": NO_CHECK, "team.b": NO_CHECK}, {})  # back, no hint
    run_for(hb, etcd, clock, 1.0)
    assert etcd.count("team.a") == before + 1
    # a new daemon learning of it only from the counts key continues too
    hb.update({"team.b": NO_CHECK}, {})
    run_for(hb, etcd, clock, 1.0)
    wait_for(lambda: etcd.count("team.a") is None, 5, what="team.a's lease revoked again")
    left = int(etcd.kv[keys.heartbeat_count("team.a")][0])
    hb.finish()
    second = daemon(etcd, clock, ttl=3, interval=1)
    start(second, etcd, ["team.b"])
    run_for(second, etcd, clock, 1.0)
    second.update({"team.a": NO_CHECK, "team.b": NO_CHECK}, {})
    run_for(second, etcd, clock, 1.0)
    assert etcd.count("team.a") == left + 1


def test_a_steady_beat_writes_one_put_per_service_and_reserves_once_per_block():
    clock, etcd = world()
    services = names(5)
    hb = daemon(etcd, clock, ttl=3, interval=1)
    start(hb, etcd, services)
    run_for(hb, etcd, clock, 1.0)  # every service's first beat (and reservation)
    etcd.txns.clear()
    run_for(hb, etcd, clock, 2 * COUNT_BLOCK)
    puts = [op for ops in etcd.txns for op in ops]
    counts = [op for op in puts if op.key.startswith(keys.HEARTBEAT_COUNTS)]
    assert len(puts) - len(counts) == 2 * COUNT_BLOCK * len(services)
    # at most one reservation per service per COUNT_BLOCK beats, each in a beat's own txn
    assert len(services) <= len(counts) <= 2 * len(services)
    assert all(any(p.key.endswith("/health") for p in ops) for ops in etcd.txns)


# -- outages and liveness ------------------------------------------------------------------


def test_rounds_that_cannot_reach_etcd_back_off_and_liveness_says_why_until_one_does():
    clock, etcd = world()
    services = names(3)
    hb = daemon(etcd, clock, ttl=30, interval=10)
    start(hb, etcd, services)
    run_for(hb, etcd, clock, 10.0)
    assert hb.liveness()[0]
    before = {ns: etcd.count(ns) for ns in services}
    etcd.down = True
    run_for(hb, etcd, clock, 20.0)
    ok, detail = hb.liveness()
    assert not ok and "no quorum" in detail["error"] and detail["services"] == 3
    failed = hb.metrics.rounds_failed._value.get()
    assert 1 <= failed < 50, "capped backoff, not a retry every tick (200 ticks)"
    etcd.down = False
    run_for(hb, etcd, clock, 6.0)  # within one backoff cap every key is written again
    assert all(etcd.count(ns) > before[ns] for ns in services)
    assert hb.liveness()[0]


def test_with_no_service_to_beat_a_ping_once_per_interval_keeps_liveness_true():
    clock, etcd = world()
    hb = daemon(etcd, clock, ttl=30, interval=10)
    assert not hb.liveness()[0], "nothing has reached etcd yet"
    start(hb, etcd, [])
    run_for(hb, etcd, clock, 0.2)
    assert hb.liveness() == (True, {"services": 0, "seconds_since_etcd_reached": 0.2,
                                    "error": None})
    run_for(hb, etcd, clock, 25.0)
    assert hb.liveness()[0], "pinged again within two intervals and a deadline"
    etcd.down = True
    run_for(hb, etcd, clock, 10.0)
    assert hb.liveness()[0] is False
