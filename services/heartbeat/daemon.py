"""The heartbeat daemon: wires the store, the metrics, the /healthz server, discovery and
the loop together, and stops them in order with a bound on each step.

Shutdown order, and why: discovery first (no new service set arrives while the leases
are being left or revoked), then the loop's ``finish`` (the last refresh or the revokes,
and the exact counts: at most ``shutdown_timeout`` plus one etcd deadline), then the
discovery thread is given ``DISCOVERY_JOIN`` seconds to end (it is a daemon thread:
abandoned after that), then the HTTP server (its serving loop polls every 0.5 s), the
store last, since every step before it may still talk to etcd.
"""

from __future__ import annotations

import threading

from services.core import logs, program
from services.core.store import Store
from services.heartbeat.discovering import DirectoryDiscovery, EtcdDiscovery
from services.heartbeat.loop import Heartbeat
from services.heartbeat.metrics import Metrics
from services.heartbeat.settings import Settings

DISCOVERY_JOIN = 2.0  # seconds the discovery thread gets to end at shutdown
EXIT_OK = 0


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
        self.loop = Heartbeat(self.store, settings, self.metrics, self.log)
        try:
            self.httpd = program.http_server(settings.metrics_port, settings.metrics_host,
                                             self.loop.liveness, self.metrics.registry)
        except ValueError:
            self._close_store()
            raise
        if settings.capabilities_dir is not None:
            self.discovery: EtcdDiscovery | DirectoryDiscovery = DirectoryDiscovery(
                self.store, settings.capabilities_dir, self.loop.update, self.log,
                period=min(settings.interval, 5.0),
            )
        else:
            self.discovery = EtcdDiscovery(
                self.store, self.loop.update, self.log, resync=settings.resync
            )
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this); ``run`` returns soon after."""
        self.stopping.set()

    def run(self) -> int:
        """Serve, discover and beat until ``stop``; then shut down in order."""
        s = self.settings
        self.log.info(
            "heartbeat starting", endpoints=list(s.endpoints), ttl=s.ttl, interval=s.interval,
            source=str(s.capabilities_dir) if s.capabilities_dir else "etcd",
            revoke_on_exit=s.revoke_on_exit, metrics_port=s.metrics_port,
        )
        if self.httpd is not None:
            self.httpd.start()
        self.discovery.start()
        try:
            self.loop.run(self.stopping)
        finally:
            self._shutdown()
        return EXIT_OK

    def _shutdown(self) -> None:
        self.log.info("heartbeat stopping")
        self.discovery.stop()
        self.loop.finish()
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
