"""One beat round against an in-memory lease store: the failure paths etcd can take a
round through (unreachable, leases it forgot, grants and txns that fail, an adopted
lease with another TTL), without etcd."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.core import keys
from services.core.errors import LeaseNotFound, StoreError, Unavailable
from services.core.kv import MAX_TXN_OPS, Op, Put, Unchanged
from services.heartbeat.checks import NO_CHECK
from services.heartbeat.metrics import Metrics
from services.heartbeat.rounds import MIN_STREAM, Beat, Item, Outcome, Round, pack
from services.heartbeat.sessions import COUNT_BLOCK, Session
from services.heartbeat.settings import Settings
from services.heartbeat.states import HEALTHY, UNHEALTHY, Assessment

TTL = 30


class FakeLeases:
    """What a round sees of etcd: leases with their granted TTL, keys on them, and
    failures to inject. Thread-safe: a round refreshes, grants and writes in parallel."""

    def __init__(self) -> None:
        self.leases: dict[int, int] = {}  # id -> granted TTL
        self.kv: dict[str, tuple[bytes, int]] = {}  # key -> (value, lease)
        self.txns: list[list[Op]] = []
        self.refresh_calls: list[list[int]] = []
        self.revoked: list[int] = []
        self.refresh_error: StoreError | None = None
        self.grant_failures = 0  # this many grants fail (Unavailable) before they work again
        self.txn_errors: list[StoreError] = []  # the next txns raise these, in order
        self.before_txn: Callable[[FakeLeases], None] | None = None  # runs once, first txn
        self._next_lease = 100
        self._lock = threading.Lock()

    def add_lease(self, ttl: int = TTL) -> int:
        with self._lock:
            self._next_lease += 1
            self.leases[self._next_lease] = ttl
            return self._next_lease

    def refresh_leases(self, lease_ids: Iterable[int]) -> dict[int, int]:
        ids = list(lease_ids)
        with self._lock:
            self.refresh_calls.append(ids)
            if self.refresh_error is not None:
                raise self.refresh_error
            return {lease: self.leases.get(lease, 0) for lease in ids}

    def grant(self, ttl: int) -> int:
        with self._lock:
            if self.grant_failures > 0:
                self.grant_failures -= 1
                raise Unavailable("DEADLINE_EXCEEDED: grant")
        return self.add_lease(ttl)

    def revoke(self, lease_id: int) -> None:
        with self._lock:
            self.revoked.append(lease_id)
            self.leases.pop(lease_id, None)

    def txn(self, guards: Iterable[Unchanged], ops: Iterable[Op]) -> tuple[bool, int]:
        ops = list(ops)
        assert not list(guards) and len(ops) <= MAX_TXN_OPS
        hook, self.before_txn = self.before_txn, None
        if hook is not None:
            hook(self)
        with self._lock:
            if self.txn_errors:
                raise self.txn_errors.pop(0)
            if any(isinstance(op, Put) and op.lease and op.lease not in self.leases
                   for op in ops):
                raise LeaseNotFound("etcdserver: requested lease not found")
            for op in ops:
                assert isinstance(op, Put)
                self.kv[op.key] = (op.value, op.lease)
            self.txns.append(ops)
            return True, len(self.txns)

    # -- what a test reads -----------------------------------------------------------------

    def record(self, ns: str) -> dict[str, object] | None:
        value = self.kv.get(keys.capability(ns, keys.HEALTH))
        return None if value is None else json.loads(value[0])

    def lease_of(self, ns: str) -> int:
        return self.kv[keys.capability(ns, keys.HEALTH)][1]


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    warning = error = info

    def events(self, words: str) -> list[dict[str, object]]:
        return [fields for event, fields in self.lines if words in event]


class Rig:
    """A round wired to the fake, with the loop's executors."""

    def __init__(self, etcd: FakeLeases, io: ThreadPoolExecutor,
                 leases: ThreadPoolExecutor) -> None:
        self.etcd = etcd
        self.log = Log()
        self.metrics = Metrics()
        settings = Settings(("127.0.0.1:1",), ttl=TTL, interval=10.0, etcd_timeout=1.0)
        self.round = Round(etcd, settings, self.metrics, self.log, io=io, leases=leases,  # type: ignore[arg-type]
                           clock=lambda: 500.0, wall=lambda: 1_700_000_000.0)

    def run(self, beats: list[Beat]) -> Outcome:
        return self.round.run(beats)

    def counter(self, name: str) -> float:
        return getattr(self.metrics, name)._value.get()


@pytest.fixture
def rig() -> Iterator[Rig]:
    io, leases = ThreadPoolExecutor(4, "io"), ThreadPoolExecutor(8, "lease")
    yield Rig(FakeLeases(), io, leases)
    io.shutdown(cancel_futures=True)
    leases.shutdown(cancel_futures=True)


def session(ns: str, lease: int = 0, **fields: object) -> Session:
    return Session(ns, NO_CHECK, keys.capability(ns, keys.HEALTH), lease=lease,
                   **fields)  # type: ignore[arg-type]


def beats_of(*sessions: Session, status: str = HEALTHY) -> list[Beat]:
    return [(s, 490.0, Assessment(status, True)) for s in sessions]


def leased(etcd: FakeLeases, n: int, prefix: str = "team.s") -> list[Session]:
    return [session(f"{prefix}{i:03d}", etcd.add_lease()) for i in range(n)]


def namespaces(beats: list[Beat]) -> set[str]:
    return {s.namespace for s, _, _ in beats}


# -- the steady case ------------------------------------------------------------------------


def test_a_round_refreshes_every_lease_and_writes_each_record_on_its_own_lease(rig):
    sessions = leased(rig.etcd, 3)
    outcome = rig.run(beats_of(*sessions))
    assert (len(outcome.written), outcome.failed, outcome.error) == (3, [], None)
    assert outcome.done == 500.0
    assert rig.etcd.refresh_calls == [[s.lease for s in sessions]]
    for s in sessions:
        assert rig.etcd.lease_of(s.namespace) == s.lease
        assert rig.etcd.record(s.namespace) == {
            "status": "healthy", "timestamp": "2023-11-14T22:13:20.000Z",
            "namespace": s.namespace, "heartbeat_count": 1, "check": "none",
            "ttl": TTL, "interval": 10.0,
        }
    assert len(rig.etcd.txns) == 1, "three records, one txn"
    assert rig.counter("leases_granted") == 0


def test_the_first_beat_reserves_a_block_of_counts_in_the_same_txn_as_its_record(rig):
    (s,) = leased(rig.etcd, 1)
    rig.run(beats_of(s))
    (ops,) = rig.etcd.txns
    assert [op.key for op in ops] == [s.key, keys.heartbeat_count(s.namespace)]
    assert ops[1].value == str(1 + COUNT_BLOCK).encode() and ops[1].lease == 0
    assert s.ceiling == 1 + COUNT_BLOCK
    rig.run(beats_of(s))
    assert [op.key for op in rig.etcd.txns[1]] == [s.key], "covered: no reservation"


def test_an_unhealthy_record_says_since_when_the_probe_fails_in_wall_clock_time(rig):
    (s,) = leased(rig.etcd, 1)
    s.failing_since = 488.0  # 12 s before the round's clock
    rig.run([(s, 490.0, Assessment(UNHEALTHY, True, "HTTP 500"))])
    record = rig.etcd.record(s.namespace)
    assert record["status"] == "unhealthy" and record["reason"] == "HTTP 500"
    assert record["failing_since"] == "2023-11-14T22:13:08.000Z"


def test_many_leases_are_refreshed_over_parallel_streams_and_written_in_txns_of_128(rig):
    sessions = leased(rig.etcd, 300)
    outcome = rig.run(beats_of(*sessions))
    assert len(outcome.written) == 300 and not outcome.failed
    assert len(rig.etcd.refresh_calls) == 4  # STREAMS
    assert sorted(i for call in rig.etcd.refresh_calls for i in call) == sorted(
        s.lease for s in sessions)
    assert all(len(ops) <= MAX_TXN_OPS for ops in rig.etcd.txns)
    assert sum(len(ops) for ops in rig.etcd.txns) == 600  # a record + a reservation each


# -- refresh --------------------------------------------------------------------------------


def test_a_refresh_that_cannot_reach_etcd_fails_the_whole_round_and_writes_nothing(rig):
    sessions = leased(rig.etcd, 3)
    rig.etcd.refresh_error = Unavailable("UNAVAILABLE: no leader")
    beats = beats_of(*sessions)
    outcome = rig.run(beats)
    assert outcome.written == [] and outcome.failed == beats
    assert outcome.error is rig.etcd.refresh_error
    assert rig.etcd.txns == [] and rig.counter("leases_granted") == 0
    assert [s.count for s in sessions] == [0, 0, 0], "no count spent on a round not written"


def test_one_failing_stream_of_several_fails_the_round(rig):
    sessions = leased(rig.etcd, 4 * MIN_STREAM)
    rig.etcd.refresh_error = Unavailable("DEADLINE_EXCEEDED")
    outcome = rig.run(beats_of(*sessions))
    assert len(rig.etcd.refresh_calls) > 1
    assert len(outcome.failed) == len(sessions) and isinstance(outcome.error, Unavailable)


def test_leases_etcd_no_longer_knows_are_replaced_in_the_same_round_and_logged_once(rig):
    alive = leased(rig.etcd, 2, "team.alive")
    lost = [session("team.lost0", 7), session("team.lost1", 8)]  # TTL 0: unknown to etcd
    outcome = rig.run(beats_of(*alive, *lost))
    assert len(outcome.written) == 4 and not outcome.failed
    for s in lost:
        assert s.lease not in (0, 7, 8) and rig.etcd.lease_of(s.namespace) == s.lease
        assert not s.lease_lost, "written: a later loss is logged again"
    assert rig.counter("lease_losses") == 2 and rig.counter("leases_granted") == 2
    (line,) = rig.log.events("no longer knows these leases")
    assert line["count"] == 2 and line["namespaces"] == ["team.lost0", "team.lost1"]


def test_a_lost_lease_is_counted_once_while_its_replacement_keeps_failing(rig):
    s = session("team.lost", 7)
    rig.etcd.grant_failures = 1
    first = rig.run(beats_of(s))
    assert first.failed and s.lease == 0 and s.lease_lost
    rig.run(beats_of(s))  # no lease to refresh now: granted, written
    assert rig.etcd.lease_of("team.lost") == s.lease
    assert rig.counter("lease_losses") == 1 and len(rig.log.events("no longer knows")) == 1


# -- grant ----------------------------------------------------------------------------------


def test_a_grant_failing_for_some_sessions_fails_only_those_and_writes_the_rest(rig):
    new = [session(f"team.new{i}") for i in range(5)]
    rig.etcd.grant_failures = 2
    outcome = rig.run(beats_of(*new))
    assert len(outcome.written) == 3 and len(outcome.failed) == 2
    assert isinstance(outcome.error, Unavailable)
    for s, _, _ in outcome.failed:
        assert s.lease == 0 and rig.etcd.record(s.namespace) is None
    for s, _, _ in outcome.written:
        assert rig.etcd.lease_of(s.namespace) == s.lease != 0
    assert rig.counter("leases_granted") == 3


def test_a_granted_lease_is_no_longer_an_adopted_one(rig):
    s = session("team.lost", 7, adopted=True, count=40)
    rig.run(beats_of(s))
    assert s.lease != 7 and not s.adopted
    assert rig.etcd.record("team.lost")["heartbeat_count"] == 41


# -- write ----------------------------------------------------------------------------------


def test_a_txn_failing_on_a_lease_that_just_expired_falls_back_to_one_by_one_writes(rig):
    sessions = leased(rig.etcd, 4)
    victim = sessions[2]
    old = victim.lease
    # Refreshed a moment ago, gone by the write (expired, revoked behind our back).
    rig.etcd.before_txn = lambda etcd: etcd.leases.pop(old)
    outcome = rig.run(beats_of(*sessions))
    assert len(outcome.written) == 4 and not outcome.failed and outcome.error is None
    assert victim.lease not in (0, old) and rig.etcd.lease_of(victim.namespace) == victim.lease
    for s in sessions:
        assert rig.etcd.lease_of(s.namespace) == s.lease
        assert rig.etcd.kv[keys.heartbeat_count(s.namespace)][1] == 0, "reservation on no lease"
        assert s.ceiling == 1 + COUNT_BLOCK
    assert rig.counter("lease_losses") == 1 and rig.counter("leases_granted") == 1
    assert len(rig.etcd.txns) == 4, "the failed batch, then each beat alone"


def test_the_one_by_one_fallback_fails_only_the_beats_etcd_did_not_take(rig):
    sessions = leased(rig.etcd, 3)
    rig.etcd.txn_errors = [LeaseNotFound("requested lease not found"),
                           Unavailable("DEADLINE_EXCEEDED")]  # the batch, then the first alone
    outcome = rig.run(beats_of(*sessions))
    assert namespaces(outcome.failed) == {sessions[0].namespace}
    assert namespaces(outcome.written) == {s.namespace for s in sessions[1:]}
    assert isinstance(outcome.error, Unavailable)


def test_a_txn_that_cannot_reach_etcd_fails_its_beats_and_reserves_nothing(rig):
    sessions = leased(rig.etcd, 3)
    rig.etcd.txn_errors = [Unavailable("DEADLINE_EXCEEDED: txn")]
    outcome = rig.run(beats_of(*sessions))
    assert outcome.written == [] and len(outcome.failed) == 3
    assert isinstance(outcome.error, Unavailable)
    # The counts were spent (a write that timed out may have landed: skip, never repeat),
    # but the reservation is not trusted until a txn holding it succeeds.
    assert [(s.count, s.ceiling) for s in sessions] == [(1, 0)] * 3
    again = rig.run(beats_of(*sessions))
    assert len(again.written) == 3
    assert [rig.etcd.record(s.namespace)["heartbeat_count"] for s in sessions] == [2, 2, 2]
    (ops,) = rig.etcd.txns
    reserved = [op for op in ops if op.key.startswith(keys.HEARTBEAT_COUNTS)]
    assert len(reserved) == 3, "reserved again, with the records"


def test_only_the_txn_that_failed_leaves_its_beats_unwritten(rig):
    sessions = leased(rig.etcd, 200)  # two txns (a record and a reservation each)
    rig.etcd.txn_errors = [Unavailable("DEADLINE_EXCEEDED: txn")]
    outcome = rig.run(beats_of(*sessions))
    assert len(outcome.failed) == 64 and len(outcome.written) == 136
    assert isinstance(outcome.error, Unavailable)


# -- an adopted lease with another TTL ------------------------------------------------------


def test_an_adopted_lease_with_another_ttl_is_retired_and_the_record_moves_to_a_new_one(rig):
    old = rig.etcd.add_lease(ttl=10)
    s = session("team.adopted", old, adopted=True, respread=True, count=41, status=HEALTHY)
    outcome = rig.run(beats_of(s))
    assert len(outcome.written) == 1 and not outcome.failed
    assert s.lease not in (0, old) and rig.etcd.leases[s.lease] == TTL
    assert rig.etcd.lease_of("team.adopted") == s.lease
    assert s.retiring == (old, 10), "the loop revokes it once the key is off it"
    assert old in rig.etcd.leases, "not revoked by the round: it held the key until now"
    assert rig.counter("lease_losses") == 0
    (line,) = rig.log.events("TTL other than --ttl")
    assert (line["count"], line["adopted_ttls"], line["ttl"]) == (1, [10], TTL)


def test_an_adopted_lease_with_the_same_ttl_is_kept(rig):
    lease = rig.etcd.add_lease(ttl=TTL)
    s = session("team.adopted", lease, adopted=True)
    rig.run(beats_of(s))
    assert (s.lease, s.retiring, s.adopted) == (lease, None, True)
    assert rig.log.events("TTL other than --ttl") == []


def test_a_lease_this_daemon_granted_is_never_retired_for_its_ttl(rig):
    s = session("team.own", rig.etcd.add_lease(ttl=10))  # not adopted
    rig.run(beats_of(s))
    assert s.retiring is None and rig.log.events("TTL other than --ttl") == []


# -- packing ----------------------------------------------------------------------------------


def test_batches_hold_at_most_128_puts_and_never_split_a_record_from_its_reservation():
    def item(n: int) -> Item:
        return ((None, 0.0, None), [Put("/k", b"")] * n, 0)  # type: ignore[return-value]

    items = [item(2) if i % 3 == 0 else item(1) for i in range(300)]
    batches = pack(items)
    assert [it for b in batches for it in b] == items
    assert all(sum(len(it[1]) for it in b) <= MAX_TXN_OPS for b in batches)
    assert len(pack([item(2)] * 64)) == 1 and len(pack([item(1)] + [item(2)] * 64)) == 2
