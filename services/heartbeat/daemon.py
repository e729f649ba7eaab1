"""The heartbeat daemon: wires the store, the metrics, the /healthz server, discovery,
the election and the loop together, and stops them in order with a bound on each step.

Several may run: one leads (``core/leadership.py``) and beats; the others stand by with
discovery running, so the service set is known the moment they lead. Each term as leader
gets a fresh loop, fed that set and adoption hints read at the start of the term (the
leases the previous leader left), so every lease is refreshed before it runs out. A term
that ends without a stop (session lost, a write fenced) abandons its loop: it writes
nothing more and leaves the leases to the next leader.

Shutdown order, and why: discovery first (no new service set arrives while the leases
are being left or revoked), then the loop's ``finish`` (the last refresh or the revokes,
and the exact counts: at most ``shutdown_timeout`` plus one etcd deadline), then the
discovery thread is given ``DISCOVERY_JOIN`` seconds to end (it is a daemon thread:
abandoned after that), then the HTTP server (its serving loop polls every 0.5 s), the
store last, since every step before it may still talk to etcd.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from services.core import logs, program
from services.core.errors import StoreError
from services.core.leadership import Leadership, default_name, health
from services.core.store import Store
from services.heartbeat.catalog import Adoption
from services.heartbeat.checks import Check
from services.heartbeat.discovering import DirectoryDiscovery, EtcdDiscovery, read_health
from services.heartbeat.loop import Heartbeat
from services.heartbeat.metrics import Metrics
from services.heartbeat.settings import Settings

DISCOVERY_JOIN = 2.0  # seconds the discovery thread gets to end at shutdown
EXIT_OK = 0
PROGRAM = "heartbeat"  # its election: /chora/election/heartbeat/


class Daemon:
    """One heartbeat daemon. ``ValueError``/``OSError`` from the constructor are
    configuration errors (an endpoint that does not resolve, a port already taken), with
    a message naming the flag."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.log = logs.get("heartbeat")
        self.store = store or program.connect(settings.endpoints, settings.etcd_timeout,
                                              settings.etcd_access)
        self._own_store = store is None
        self.metrics = Metrics()
        self.leadership: Leadership | None = None  # a running daemon's, from ``run``
        self.loop = self._new_loop()  # the first term's; each later term gets its own
        self._loop_used = False
        self._active: Heartbeat | None = None  # the loop of the term in progress
        self._lock = threading.Lock()
        self._desired: dict[str, Check] | None = None  # discovery's latest service set
        self._hints: dict[str, Adoption] = {}
        try:
            self.httpd = program.http_server(settings.metrics_port, settings.metrics_host,
                                             self.check, self.metrics.registry)
        except ValueError:
            self._close_store()
            raise
        if settings.capabilities_dir is not None:
            self.discovery: EtcdDiscovery | DirectoryDiscovery = DirectoryDiscovery(
                self.store, settings.capabilities_dir, self.update, self.log,
                period=min(settings.interval, 5.0),
            )
        else:
            self.discovery = EtcdDiscovery(
                self.store, self.update, self.log, resync=settings.resync
            )
        self.stopping = threading.Event()

    def _new_loop(self) -> Heartbeat:
        return Heartbeat(self.store, self.settings, self.metrics, self.log,
                         may_revoke=self._may_revoke)

    def _may_revoke(self) -> bool:
        """Only a leader whose election key etcd still holds (a linearizable read)."""
        if self.leadership is None:
            return True  # driven without an election (tests of the loop)
        try:
            return self.store.holds(self.leadership.fence())
        except StoreError:
            return False

    def update(self, desired: Mapping[str, Check], hints: Mapping[str, Adoption]) -> None:
        """From discovery, leading or not: kept for the next term, handed to this one."""
        with self._lock:
            self._desired = dict(desired)
            self._hints.update(hints)
            loop = self.loop if self._loop_used else None
        if loop is not None:
            loop.update(desired, hints)

    def check(self) -> tuple[bool, dict[str, object]]:
        """/healthz (``leadership.health``)."""
        return health(self.leadership, self.loop.liveness)

    def run(self) -> int:
        """Serve, discover and beat until ``stop``; then shut down in order."""
        s = self.settings
        self.log.info(
            "heartbeat starting", endpoints=list(s.endpoints), ttl=s.ttl, interval=s.interval,
            source=str(s.capabilities_dir) if s.capabilities_dir else "etcd",
            revoke_on_exit=s.revoke_on_exit, metrics_port=s.metrics_port,
        )
        self.leadership = Leadership(
            self.store, PROGRAM, ttl=s.election_ttl, name=default_name(s.metrics_port),
            on_change=lambda role: self.metrics.leader.set(role == "leader"))
        if self.httpd is not None:
            self.httpd.start()
        self.discovery.start()
        self.leadership.start()
        try:
            while (term := self.leadership.term(self.stopping)) is not None:
                loop = self._take_over()
                loop.run(term)
                if self.stopping.is_set():
                    break  # ``_shutdown`` finishes it: leases refreshed, counts stored
                self._active = None
                loop.abandon()
        finally:
            self._shutdown()
        return EXIT_OK

    def _take_over(self) -> Heartbeat:
        """A loop for this term: the service set discovery knows, and adoption hints
        read now, so the leases the last leader left are refreshed at once."""
        fresh: dict[str, Adoption] = {}
        try:
            _, fresh, _ = read_health(self.store)
        except StoreError as exc:  # the hints discovery read are the fallback
            self.log.warning("could not read the leases to adopt; using discovery's",
                             error=str(exc))
        with self._lock:
            if self._loop_used:
                self.loop = self._new_loop()
            self._loop_used = True
            loop, desired = self.loop, self._desired
            hints = {**self._hints, **fresh}
            self._active = loop
        loop.catch_up = self.leadership is not None and self.leadership.taking_over
        if desired is not None:
            loop.update(desired, hints)
        return loop

    def stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this); ``run`` returns soon after."""
        self.stopping.set()
        if self.leadership is not None:
            self.leadership.interrupt()

    def _shutdown(self) -> None:
        self.log.info("heartbeat stopping")
        self.discovery.stop()
        if self._active is not None:
            self._active.finish()  # still leading: leave the leases refreshed, then resign
        if self.leadership is not None:
            self.leadership.stop()
        self.discovery.join(timeout=DISCOVERY_JOIN)
        if self.discovery.is_alive():
            self.log.warning("discovery did not stop in time; abandoning it",
                             seconds=DISCOVERY_JOIN)
        if self.httpd is not None:
            self.httpd.stop()
        self._close_store()
        self.log.info("heartbeat stopped")

    def _close_store(self) -> None:
        if self._own_store:
            self.store.close()
