"""The heartbeat daemon: wires the store, discovery, scheduler and metrics together, and
stops them in order with a bound on each step."""

from __future__ import annotations

import threading

from services.core import logs
from services.core.httpd import MetricsServer
from services.core.store import Store
from services.heartbeat.beating import Heartbeat
from services.heartbeat.discovering import DirectoryDiscovery, EtcdDiscovery
from services.heartbeat.instruments import Instruments
from services.heartbeat.settings import Settings


class Daemon:
    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.log = logs.get("heartbeat")
        self.store = store or Store(settings.endpoints, timeout=settings.timeout)
        self._own_store = store is None
        self.instruments = Instruments()
        self.heartbeat = Heartbeat(self.store, settings, self.instruments, self.log)
        if settings.capabilities_dir is not None:
            self.discovery: EtcdDiscovery | DirectoryDiscovery = DirectoryDiscovery(
                self.store, settings.capabilities_dir, self.heartbeat.update, self.log,
                period=min(settings.interval, 5.0),
            )
        else:
            self.discovery = EtcdDiscovery(
                self.store, self.heartbeat.update, self.log, resync=settings.resync
            )
        self.metrics: MetricsServer | None = None
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this); ``run`` returns soon after."""
        self.stopping.set()

    def run(self) -> int:
        s = self.settings
        self.log.info(
            "heartbeat starting", endpoints=list(s.endpoints), ttl=s.ttl, interval=s.interval,
            source=str(s.capabilities_dir) if s.capabilities_dir else "etcd",
            revoke_on_exit=s.revoke_on_exit, metrics_port=s.metrics_port,
        )
        if s.metrics_port is not None:
            self.metrics = MetricsServer(
                s.metrics_port, self.heartbeat.health, host=s.metrics_host,
                registry=self.instruments.registry,
            ).start()
        self.discovery.start()
        try:
            self.heartbeat.run(self.stopping)
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.log.info("heartbeat stopping")
        self.discovery.stop()
        self.heartbeat.finish()
        self.discovery.join(timeout=2.0)
        if self.metrics is not None:
            self.metrics.stop()
        if self._own_store:
            self.store.close()
        self.log.info("heartbeat stopped")
