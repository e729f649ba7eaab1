"""Leader election on real etcd (``services/core/election.py``, ``session.py``): who
leads, who takes over and how fast, and that a deposed leader's fenced writes do
nothing."""

from __future__ import annotations

import threading
import time

import pytest

from services.core import election
from services.core.election import Election
from services.core.kv import Put
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
