"""Leader election among the replicas of one program, the way etcd's
``client/v3/concurrency/election.go`` does it:

- each candidate puts one key, ``/chora/election/{program}/{lease:016x}``, on its own
  session's lease (``session.py``); a crashed candidate's key goes when its lease does;
- the key with the lowest create revision leads; every other candidate watches only
  its predecessor's key (no thundering herd when the leader goes), and looks again when
  that key is deleted;
- a clean stop resigns (deletes the key): the next candidate leads within a round trip.

Fencing: ``fence`` is a guard (``Unchanged(key, revision)``) a leader adds to every
write. A leader that was frozen past its session's TTL and wakes up still believing it
leads has lost its key, so each of its writes fails the guard and changes nothing.

    session = Session(store, ttl=4).start()
    election = Election(store, "gitops-sync", session, b"host-a:9101")
    if election.campaign(stop):      # blocks while another candidate leads
        store.txn([election.fence, ...], ops)   # a write only the leader can make
    election.resign()
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from services.core import keys
from services.core.errors import StoreError
from services.core.kv import Delete, KeyValue, Put, Unchanged
from services.core.session import Session
from services.core.store import Store

PREFIX = keys.ELECTION
POLL = 0.2  # seconds between two looks at "should this wait stop?"


def prefix_of(program: str) -> str:
    return f"{PREFIX}{program}/"


def leader(store: Store, program: str) -> KeyValue | None:
    """The current leader's key (its value says who it is), or None: nobody leads."""
    candidates, _ = store.get_prefix(prefix_of(program))
    return min(candidates.values(), key=lambda kv: kv.create_revision, default=None)


class Election:
    def __init__(self, store: Store, program: str, session: Session, value: bytes) -> None:
        self.store, self.session, self.value = store, session, value
        self.program, self.prefix = program, prefix_of(program)
        self.key = f"{self.prefix}{session.lease:016x}"
        self._fence: Unchanged | None = None
        self._create_revision = 0

    @property
    def fence(self) -> Unchanged:
        """The guard every write of the leader carries (only after ``campaign``)."""
        if self._fence is None:
            raise RuntimeError("not a candidate yet: campaign() first")
        return self._fence

    def _enter(self) -> None:
        """Put our key if it is not there; learn its revisions either way."""
        self.store.txn([Unchanged(self.key, 0)],
                       [Put(self.key, self.value, self.session.lease)], fenced=False)
        kv = self.store.get(self.key)
        if kv is None:  # the session's lease is already gone
            raise StoreError(f"election key {self.key} vanished: the session was lost")
        self._create_revision = kv.create_revision
        self._fence = Unchanged(self.key, kv.mod_revision)

    def campaign(self, stop: threading.Event,
                 waiting: Callable[[KeyValue], None] | None = None) -> bool:
        """Block until this candidate leads (True), or ``stop`` is set or the session is
        lost (False). ``waiting`` is told the leader's key each time this candidate has
        to wait. Raises the store's errors: the caller backs off and tries again."""
        self._enter()
        while not (stop.is_set() or self.session.done.is_set()):
            candidates, revision = self.store.get_prefix(self.prefix)
            if self.key not in candidates:
                return False  # our key went with our lease
            earlier = [kv for kv in candidates.values()
                       if kv.create_revision < self._create_revision]
            if not earlier:
                return True
            predecessor = max(earlier, key=lambda kv: kv.create_revision)
            if waiting is not None:
                waiting(min(earlier, key=lambda kv: kv.create_revision))
            self._wait_deleted(predecessor.key, revision + 1, stop)
        return False

    def _wait_deleted(self, key: str, from_revision: int, stop: threading.Event) -> None:
        """Return once ``key`` is deleted at or after ``from_revision`` (or when asked
        to stop, or the session is lost); a broken watch returns too: the caller looks
        again, which is always safe."""
        watch = self.store.watch_prefix(key, from_revision)
        ended = threading.Event()
        _cancel_when(lambda: stop.is_set() or self.session.done.is_set() or ended.is_set(),
                     watch.cancel)
        try:
            for events in watch:
                if any(e.kind == "delete" and e.kv.key == key for e in events):
                    return
        except StoreError:
            return
        finally:
            ended.set()
            watch.cancel()

    def is_leader(self) -> bool:
        """Ask etcd (a linearizable read): is our key still the lowest?"""
        current = leader(self.store, self.program)
        return current is not None and current.key == self.key

    def resign(self) -> None:
        """Give up leading (or candidacy): delete our key if it is still ours."""
        if self._fence is None:
            return
        with contextlib.suppress(StoreError):  # the key goes with the session's lease anyway
            self.store.txn([self._fence], [Delete(self.key)], fenced=False)
        self._fence = None


def _cancel_when(condition: Callable[[], bool], cancel: Callable[[], None]) -> None:
    """A small daemon thread that calls ``cancel`` once ``condition`` holds."""

    def watch() -> None:
        stopped = threading.Event()
        while not condition():
            stopped.wait(POLL)
        cancel()

    threading.Thread(target=watch, name="election-wait", daemon=True).start()
