"""The registry process: wires the store, the view and its hub, the follower and the
quorum check (threads), the status writer (a task) and the HTTP server (granian,
``serving.py``), all on one event loop (uvloop), and stops them in order with a bound
on each step.

A third thread checks the cluster's members for the dashboard (``cluster.py``).

Shutdown order, and why: the change streams are closed first (they never end on their
own) and the HTTP server stops accepting; open requests get ``shutdown_timeout`` to
finish (``serving.py``); then the status writer is cancelled, the follower and quorum
check are stopped and joined (bounded: abandoned after ``shutdown_timeout``, they are
daemon threads), and the store is closed last, since every step before may still talk
to etcd. Nothing is revoked or rewritten at exit: the instances' leases live on in
etcd, so a restart loses nothing.

The token file and the TLS files are read before anything else, so a broken one ends
the program at once (exit 2 naming the flag), and looked at every ``token_check``
seconds (and on SIGHUP) afterwards: a changed file is taken into use without a restart.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading

from services.core import logs, program
from services.core.store import Store
from services.registry import VERSION, api
from services.registry.cluster import ClusterCheck
from services.registry.following import Follower, QuorumCheck
from services.registry.guard import Guard
from services.registry.hub import Hub
from services.registry.instances import Instances
from services.registry.loop import StatusWriter
from services.registry.metrics import Metrics
from services.registry.serving import HttpServer, bind
from services.registry.settings import Settings
from services.registry.tls import ServerTls
from services.registry.view import View

EXIT_OK = 0
EXIT_FAILED = 1
CREDENTIALS_TICK = 0.25  # how soon a SIGHUP is acted on
OPEN = ("registry is open: no --tokens, so anyone who can reach it can register, "
        "heartbeat and deregister any service (README: Security)")
CLEAR_TEXT = ("bearer tokens travel in clear text: --tokens without --tls-cert on an address "
              "other machines can reach")

try:
    import uvloop

    LOOP_FACTORY = uvloop.new_event_loop
except ImportError:  # pragma: no cover - a dependency; asyncio's loop works too
    LOOP_FACTORY = None


class Daemon:
    """One registry process. ``ValueError`` from the constructor is a configuration
    error (an endpoint that does not resolve, a port already taken, a token file or a
    TLS pair that cannot be used) naming the flag."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = s = settings
        self.log = logs.get("registry")
        self.metrics = Metrics()
        # Files first: a broken one is a configuration error before anything connects.
        self.guard = None if s.tokens is None else Guard(
            s.tokens, require_read=s.require_read_token, metrics=self.metrics, log=self.log)
        self.tls = None if s.tls_cert is None or s.tls_key is None else ServerTls(
            s.tls_cert, s.tls_key, metrics=self.metrics, log=self.log)
        self.reload_asked = threading.Event()
        self.store = store or program.connect(s.endpoints, s.etcd_timeout, s.etcd_access)
        self._own_store = store is None
        self.view = View(ring_size=s.watch_ring, list_refresh=s.list_refresh)
        self.hub = Hub(self.view, self.metrics, self.log)
        self.instances = Instances(self.store, self.hub, s, self.metrics, self.log)
        self.writer = StatusWriter(self.store, self.hub, s, self.metrics, self.log)
        self.follower = Follower(self.store, self.hub, self.metrics, self.log,
                                 resync=s.resync)
        self.check = QuorumCheck(self.store, self.hub, self.follower, self.log,
                                 period=s.quorum_check, stall_after=s.stall_after)
        self.members = ClusterCheck(self.store, self.hub, self.log, endpoints=s.endpoints,
                                    access=s.etcd_access, period=s.cluster_check,
                                    timeout=s.etcd_timeout)
        try:
            self.socket = bind(s.host, s.port)
        except ValueError:
            self._close_files()
            self._close_store()
            raise
        self.port: int = self.socket.getsockname()[1]
        self.app = api.build(self.hub, self.instances, self.metrics, s, self.log, self.guard)
        self.server = HttpServer(self.app, s.host, self.port, log=self.log,
                                 tls=None if self.tls is None else self.tls.pair,
                                 grace=s.shutdown_timeout,
                                 open_requests=lambda: self.app.open)
        self.stopping = threading.Event()
        self.exit_code = EXIT_OK

    def reload(self) -> None:
        """Look at the token and TLS files now (SIGHUP). Only sets a flag."""
        self.reload_asked.set()

    def stop(self) -> None:
        """Ask the registry to stop (signal handlers call this); ``run`` returns soon
        after. Only sets flags: safe from a signal handler and from any thread."""
        self.stopping.set()

    def run(self) -> int:
        s = self.settings
        self.log.info("registry starting", version=VERSION, host=s.host, port=self.port,
                      scheme=s.scheme, endpoints=list(s.endpoints),
                      heartbeat_timeout=s.heartbeat_timeout, removal_timeout=s.removal_timeout,
                      tokens=None if s.tokens is None else str(s.tokens),
                      require_read_token=s.require_read_token)
        for warning in self._warnings():
            self.log.warning(warning)
        try:
            with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
                runner.run(self._serve())
        finally:
            self.socket.close()
            self._close_files()
            self._close_store()
        self.log.info("registry stopped")
        return self.exit_code

    async def _serve(self) -> None:
        self.hub.bind(asyncio.get_running_loop())
        self.follower.start()
        self.check.start()
        self.members.start()
        tasks = [asyncio.create_task(self.writer.run(), name="status-writer"),
                 asyncio.create_task(self.hub.summarise_beats(self.settings.beats_every),
                                     name="beats"),
                 asyncio.create_task(self._stop_when_asked(), name="stop-request")]
        if self.guard is not None or self.tls is not None:
            tasks.append(asyncio.create_task(self._keep_credentials_fresh(),
                                             name="credentials"))
        try:
            self.socket.close()  # the port is granian's now (serving.py: why)
            if not await self.server.serve():
                self.log.error("the HTTP server stopped on its own; the registry exits")
                self.exit_code = EXIT_FAILED
        finally:
            self.hub.close_streams()
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout)
            self.follower.stop()
            self.check.stop()
            self.members.stop()
            await asyncio.to_thread(self._join_threads)

    async def _stop_when_asked(self) -> None:
        """``stop`` only sets a flag (a signal handler calls it); acted on here."""
        while not self.stopping.is_set():
            await asyncio.sleep(0.1)
        self.log.info("registry stopping: no new connections, change streams closed")
        self.hub.close_streams()
        self.server.stop()

    async def _keep_credentials_fresh(self) -> None:
        """Every ``token_check`` seconds, or at once after a SIGHUP, take changed token
        or TLS files into use (a broken edit keeps the previous ones: see guard.py)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.settings.token_check
        while True:
            await asyncio.sleep(CREDENTIALS_TICK)
            forced = self.reload_asked.is_set()
            if not forced and loop.time() < due:
                continue
            self.reload_asked.clear()
            due = loop.time() + self.settings.token_check
            try:
                if self.guard is not None:
                    await asyncio.to_thread(self.guard.refresh, forced)
                if self.tls is not None and self.tls.refresh():
                    self.server.reload()
            except Exception as exc:  # the files in force stay; the next look tries again
                self.log.exception("could not look at the token or TLS files", error=str(exc))

    def _warnings(self) -> list[str]:
        s = self.settings
        found = [] if self.tls is None else self.tls.warnings()
        if self.guard is None:
            found.append(OPEN)
        else:
            if not self.guard.tokens:
                found.append(f"--tokens {s.tokens} lists no token: every write is refused")
            if self.tls is None and not _loopback(s.host):
                found.append(CLEAR_TEXT)
        return found

    def _join_threads(self) -> None:
        for thread in (self.follower, self.check, self.members):
            thread.join(self.settings.shutdown_timeout)
            if thread.is_alive():
                self.log.warning("thread did not stop in time; abandoning it",
                                 thread=thread.name, seconds=self.settings.shutdown_timeout)

    def _close_files(self) -> None:
        if self.tls is not None:
            self.tls.close()

    def _close_store(self) -> None:
        if self._own_store:
            self.store.close()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
