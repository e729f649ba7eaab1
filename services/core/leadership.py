"""One process's part in its program's election, for the whole life of the process:
campaign, lead until the session is lost (or the daemon stops, or a write finds itself
fenced), then campaign again. ``session.py`` keeps the lease, ``election.py`` holds the
key and the order; this is the lifecycle around them, written once for every daemon.

    leadership = Leadership(store, "gitops-sync", ttl=3, name="host-a:9101").start()
    while (term := leadership.term(stopping)) is not None:
        work(until=term)             # term is set when leading ends, or on stop()
    leadership.stop()                # after the work: resign, so a standby leads at once

While it leads, the store fences every transaction with the election key
(``Store.fence_with``); a standby's store refuses every write (``Fenced``) without
sending it. Timings: a crashed leader's key goes with its lease, at most ``ttl`` after
its last keep-alive (sent every ttl/3); a clean stop deletes it at once.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from services.core import logs
from services.core.backoff import Backoff
from services.core.election import Election
from services.core.errors import Fenced, StoreError
from services.core.kv import KeyValue, Unchanged
from services.core.session import Session
from services.core.store import Store

POLL = 0.05  # seconds between two looks at "did the term end?"


def default_name(port: int | None = None) -> str:
    """What a candidate's key holds, so an operator sees who leads: host, pid, port."""
    where = f"{socket.gethostname()}:{os.getpid()}"
    return f"{where}:{port}" if port else where


def health(leadership: Leadership | None, leading: Callable[[], tuple[bool, dict[str, object]]]
           ) -> tuple[bool, dict[str, object]]:
    """A daemon's /healthz: ``leading`` (its loop's liveness) while it leads or runs
    without an election; while it stands by, whether its session holds (it is ready to
    take over). The role and who leads are in the answer either way."""
    if leadership is None or leadership.role == "leader":
        ok, detail = leading()
    else:
        ok, detail = leadership.ready()
    return ok, {**detail, **(leadership.describe() if leadership else {})}


class Leadership:
    def __init__(self, store: Store, program: str, *, ttl: int, name: str = "",
                 on_change: Callable[[str], None] | None = None) -> None:
        self.store, self.program, self.ttl = store, program, ttl
        self.name = name or default_name()
        self.role = "starting"
        self.leader_name: str | None = None  # who leads, as last seen (None: unknown)
        self.error = ""  # why the last campaign attempt failed; "" while a session holds
        self.failures = 0  # campaign attempts etcd did not answer (backed off, capped)
        self.terms = 0  # terms this process has led
        self.waited = False  # it stood by behind another leader at least once
        self.log = logs.get("election").bind(program=program)
        self._on_change = on_change
        self._leading = threading.Event()
        self._ended = threading.Event()  # of the current term; set when it ends
        self._deposed = threading.Event()
        self._quit = threading.Event()  # the daemon is stopping: no new term, ever
        self._stop = threading.Event()  # its last write is done: resign now
        self._fence: list[Unchanged] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"election-{program}",
                                        daemon=True)
        store.fence_with(self.fence)

    def start(self) -> Leadership:
        self._thread.start()
        return self

    # -- what the daemon asks ------------------------------------------------------------

    def fence(self) -> list[Unchanged]:
        """The guards of a leader's write; ``Fenced`` when this process does not lead."""
        with self._lock:
            if not self._fence:
                raise Fenced(f"this {self.program} instance is a standby; it does not write")
            return list(self._fence)

    def term(self, stopping: threading.Event) -> threading.Event | None:
        """Block until this process leads: an event set when the term ends (leadership
        lost, or ``interrupt``); None once ``stopping`` is set or it was interrupted."""
        while not (stopping.is_set() or self._quit.is_set()):
            if self._leading.wait(POLL):
                with self._lock:
                    if self._leading.is_set() and not self._quit.is_set():
                        return self._ended
        return None

    def interrupt(self) -> None:
        """The daemon is stopping: end the current term's work now and never start
        another (a standby stops campaigning; a leader resigns at ``stop``, after its
        last write)."""
        with self._lock:
            self._quit.set()
            self._ended.set()

    def deposed(self, reason: str) -> None:
        """A fenced write proved this process no longer leads: end the term and campaign
        again (a new session, behind whoever leads now)."""
        self.log.warning("leadership lost: a write was fenced", reason=reason)
        self._deposed.set()

    def stop(self) -> None:
        """After the daemon's last write: resign (a standby leads within a round trip)
        and revoke the session. Bounded by a few etcd deadlines."""
        self.interrupt()
        self._stop.set()
        self._thread.join(3 * self.store.timeout + 1)

    def ready(self) -> tuple[bool, dict[str, object]]:
        """A standby's /healthz: ready to take over while its session holds."""
        if self.error:
            return False, {"reason": f"etcd unreachable: {self.error}",
                           "etcd": f"unreachable: {self.error}"}
        if self.role == "starting":
            return False, {"reason": "starting: joining the election", "etcd": "unknown"}
        return True, {"reason": "", "etcd": "reachable"}

    @property
    def taking_over(self) -> bool:
        """This term follows another leader's (or an earlier term of this process's):
        what it inherits may be in any state, so it catches up at once."""
        return self.waited or self.terms > 1

    def describe(self) -> dict[str, object]:
        """For /healthz and the status line."""
        return {"role": self.role, "leader": self.leader_name, "candidate": self.name}

    # -- the campaign --------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(initial=0.5, cap=5.0)
        while not self._quit.is_set():
            try:
                self._one_session()
                backoff.reset()
            except StoreError as exc:
                self.error = str(exc) or type(exc).__name__
                self.failures += 1
                self.log.warning("election: etcd unavailable; will retry", error=self.error)
                self._quit.wait(backoff.next())

    def _one_session(self) -> None:
        session = Session(self.store, self.ttl).start()
        self.error = ""
        election = Election(self.store, self.program, session, self.name.encode())
        try:
            self._deposed.clear()
            if not election.campaign(self._quit, self._waiting) or not self._lead(election):
                return
            while not (self._stop.is_set() or session.done.is_set()
                       or self._deposed.is_set()):
                self._stop.wait(POLL)
        finally:
            self._end_term()
            if self._quit.is_set():
                election.resign()
            session.close(revoke=not session.done.is_set())

    def _lead(self, election: Election) -> bool:
        """Start a term, unless the daemon is stopping (False: it resigns instead)."""
        with self._lock:
            if self._quit.is_set():
                return False
            self._fence = [election.fence]
            self._ended = threading.Event()
            self.terms += 1
            self._leading.set()
        self.leader_name = self.name
        self._set_role("leader")
        return True

    def _end_term(self) -> None:
        with self._lock:
            was_leading = self._leading.is_set()
            self._leading.clear()
            self._fence = []
            self._ended.set()
        if was_leading and not self._quit.is_set():
            self._set_role("standby")

    def _waiting(self, leader: KeyValue) -> None:
        """The campaign waits behind ``leader``: this process stands by."""
        self.leader_name = leader.value.decode(errors="replace")
        self.waited = True
        self._set_role("standby")

    def _set_role(self, role: str) -> None:
        if role == self.role:
            return
        self.role = role
        if role == "leader":
            self.log.info("leading", candidate=self.name, ttl=self.ttl)
        elif role == "standby":
            self.log.info("standing by", candidate=self.name, leader=self.leader_name)
        if self._on_change is not None:
            self._on_change(role)
