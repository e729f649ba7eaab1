"""Leader election on real etcd (``services/core/election.py``, ``session.py``): who
leads, who takes over and how fast, and that a deposed leader's fenced writes do
nothing."""

from __future__ import annotations

import threading
import time

import pytest

from services.core import election
from services.core.election import Election
from services.core.errors import Fenced
from services.core.kv import Delete, Put
from services.core.leadership import Leadership
from services.core.session import Session
from services.core.store import Store

PROGRAM = "test-program"


class Candidate:
    """A candidate campaigning in a thread, as a daemon's loop would."""

    def __init__(self, store: Store, name: str, ttl: int = 2) -> None:
        self.session = Session(store, ttl).start()
        self.election = Election(store, PROGRAM, self.session, name.encode())
        self.stop = threading.Event()
        self.leading = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.election.campaign(self.stop):
            self.leading.set()

    def close(self, *, resign: bool = True) -> None:
        self.stop.set()
        if resign:
            self.election.resign()
        self.session.close(revoke=resign)
        self.thread.join(5)


@pytest.fixture
def candidates(store):
    made: list[Candidate] = []

    def make(name: str, ttl: int = 2) -> Candidate:
        c = Candidate(store, name, ttl)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_the_first_candidate_leads_and_the_next_leads_within_a_second_of_its_resignation(
    store, candidates
):
    a = candidates("a")
    assert a.leading.wait(5)
    b = candidates("b")
    assert not b.leading.wait(0.5), "two leaders at once"
    assert election.leader(store, PROGRAM).value == b"a"
    began = time.monotonic()
    a.close()
    assert b.leading.wait(5)
    assert time.monotonic() - began < 1.0
    assert election.leader(store, PROGRAM).value == b"b"


def test_a_leader_that_stops_refreshing_is_replaced_within_its_session_ttl(store, candidates):
    a = candidates("a", ttl=2)
    assert a.leading.wait(5)
    b = candidates("b", ttl=2)
    began = time.monotonic()
    a.session._stop.set()  # the process froze or died: no more keep-alives, no resign
    assert b.leading.wait(6)
    assert time.monotonic() - began < 2 + 1.5  # TTL + etcd's expiry check + one watch


def test_a_deposed_leaders_fenced_write_changes_nothing(store, candidates):
    a = candidates("a", ttl=2)
    assert a.leading.wait(5)
    fence = a.election.fence
    ok, _ = store.txn([fence], [Put("/chora/test/fenced", b"while leading")])
    assert ok
    b = candidates("b", ttl=2)
    a.session._stop.set()
    assert b.leading.wait(6)
    ok, _ = store.txn([fence], [Put("/chora/test/fenced", b"after losing")])
    assert not ok
    assert store.get("/chora/test/fenced").value == b"while leading"


def test_only_the_predecessor_is_watched_and_the_order_is_kept_among_three(store, candidates):
    a, b, c = candidates("a"), None, None
    assert a.leading.wait(5)
    b = candidates("b")
    c = candidates("c")
    b.close()  # the middle one leaves: c now waits on a
    assert not c.leading.wait(0.5)
    a.close()
    assert c.leading.wait(5)


# -- leadership.py: the lifecycle the daemons use -------------------------------------


def test_a_standby_stopped_as_its_leader_resigns_never_leads_and_leaves_no_key(etcd):
    """Both instances get SIGTERM at once (`make up` stopping, a rolling restart): the
    leader resigns after its last write; the standby, already told to stop, must not
    start a term it would never end (that hung a `make up` HA=1 shutdown once)."""
    stores = [Store(etcd.endpoints, timeout=2.0) for _ in range(2)]
    first = Leadership(stores[0], PROGRAM, ttl=2, name="first").start()
    never = threading.Event()
    try:
        assert first.term(never) is not None
        second = Leadership(stores[1], PROGRAM, ttl=2, name="second").start()
        deadline = time.monotonic() + 5
        while second.role != "standby":
            assert time.monotonic() < deadline, "the second never stood by"
            time.sleep(0.02)
        assert second.leader_name == "first"
        second.interrupt()  # its daemon was told to stop ...
        first.stop()  # ... as the leader resigns
        assert second.term(never) is None
        second.stop()
        assert second.role == "standby"
        assert election.leader(stores[0], PROGRAM) is None, "a candidate key was left behind"
    finally:
        for s in stores:
            s.close()


def test_a_leaders_store_fences_its_writes_and_a_standbys_store_refuses_them(etcd):
    stores = [Store(etcd.endpoints, timeout=2.0) for _ in range(2)]
    never = threading.Event()
    # One after the other: started together, either may campaign first (a fresh-clone
    # run saw n1 win, and n0 wait behind it until the 180 s timeout).
    leaders = [Leadership(stores[0], PROGRAM, ttl=2, name="n0").start()]
    try:
        assert leaders[0].term(never) is not None
        leaders.append(Leadership(stores[1], PROGRAM, ttl=2, name="n1").start())
        ok, _ = stores[0].txn([], [Put("/chora/test/fenced", b"leader")])
        assert ok
        with pytest.raises(Fenced):
            stores[1].txn([], [Put("/chora/test/fenced", b"standby")])
        # The leader's key goes behind its back (an operator's etcdctl del): fenced.
        stores[1].txn([], [Delete(leaders[0].fence()[0].key)], fenced=False)
        with pytest.raises(Fenced):
            stores[0].txn([], [Put("/chora/test/fenced", b"deposed")])
        assert stores[1].get("/chora/test/fenced").value == b"leader"
    finally:
        for leadership in leaders:
            leadership.stop()
        for s in stores:
            s.close()
