"""The registry process: wires the store, the view and its hub, the follower and the
quorum check (threads), the status writer (a task) and the HTTP server, all on one
event loop (uvloop, httptools), and stops them in order with a bound on each step.

Shutdown order, and why: the HTTP server stops accepting first; the change streams are
closed at once (they would otherwise hold the server open until its grace period
ends); open requests get ``shutdown_timeout`` to finish; then the status writer is
cancelled, the follower and quorum check are stopped and joined (bounded: abandoned
after ``shutdown_timeout``, they are daemon threads), and the store is closed last,
since every step before may still talk to etcd. Nothing is revoked or rewritten at
exit: the instances' leases live on in etcd, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Generator

import uvicorn

from services.core import logs, program
from services.core.store import Store
from services.registry import VERSION, api
from services.registry.following import Follower, QuorumCheck
from services.registry.hub import Hub
from services.registry.instances import Instances
from services.registry.loop import StatusWriter
from services.registry.metrics import Metrics
from services.registry.settings import Settings
from services.registry.view import View

EXIT_OK = 0
BACKLOG = 2048

try:
    import uvloop

    LOOP_FACTORY = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvicorn[standard] brings it
    LOOP_FACTORY = None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``cli.py`` installs the programs'
    shared ones (``core/signals.py``), which call ``Daemon.stop``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so a taken port is a configuration error at
    start-up (and port 0 tells its number before serving)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ValueError(f"--port {port} (--host {host}): {exc}") from exc
    return sock


class Daemon:
    """One registry process. ``ValueError`` from the constructor is a configuration
    error (an endpoint that does not resolve, a port already taken) naming the flag."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = s = settings
        self.log = logs.get("registry")
        self.store = store or program.connect(s.endpoints, s.etcd_timeout)
        self._own_store = store is None
        self.metrics = Metrics()
        self.view = View(ring_size=s.watch_ring, list_refresh=s.list_refresh)
        self.hub = Hub(self.view, self.metrics, self.log)
        self.instances = Instances(self.store, self.hub, s, self.metrics, self.log)
        self.writer = StatusWriter(self.store, self.hub, s, self.metrics, self.log)
        self.follower = Follower(self.store, self.hub, self.metrics, self.log,
                                 resync=s.resync)
        self.check = QuorumCheck(self.store, self.hub, self.follower, self.log,
                                 period=s.quorum_check, stall_after=s.stall_after)
        try:
            self.socket = bind(s.host, s.port)
        except ValueError:
            self._close_store()
            raise
        app = api.build(self.hub, self.instances, self.metrics, s, self.log)
        self.server = _Server(uvicorn.Config(
            app, http="httptools", ws="none", lifespan="off", log_config=None,
            access_log=False, server_header=False, backlog=BACKLOG,
            timeout_graceful_shutdown=s.shutdown_timeout))
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    def stop(self) -> None:
        """Ask the registry to stop (signal handlers call this); ``run`` returns soon
        after. Only sets flags: safe from a signal handler and from any thread."""
        self.stopping.set()
        self.server.should_exit = True

    def run(self) -> int:
        s = self.settings
        self.log.info("registry starting", version=VERSION, host=s.host, port=self.port,
                      endpoints=list(s.endpoints), heartbeat_timeout=s.heartbeat_timeout,
                      removal_timeout=s.removal_timeout)
        try:
            with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
                runner.run(self._serve())
        finally:
            self.socket.close()
            self._close_store()
        self.log.info("registry stopped")
        return EXIT_OK

    async def _serve(self) -> None:
        self.hub.bind(asyncio.get_running_loop())
        self.follower.start()
        self.check.start()
        writer = asyncio.create_task(self.writer.run(), name="status-writer")
        asked = asyncio.create_task(self._stop_when_asked(), name="stop-request")
        try:
            await self.server.serve(sockets=[self.socket])
        finally:
            self.hub.close_streams()
            for task in (asked, writer):
                task.cancel()
            await asyncio.wait([asked, writer], timeout=self.settings.shutdown_timeout)
            self.follower.stop()
            self.check.stop()
            await asyncio.to_thread(self._join_threads)

    async def _stop_when_asked(self) -> None:
        """The server polls ``should_exit``; the change streams must be told."""
        while not (self.stopping.is_set() or self.server.should_exit):
            await asyncio.sleep(0.1)
        self.server.should_exit = True
        self.log.info("registry stopping: no new connections, change streams closed")
        self.hub.close_streams()

    def _join_threads(self) -> None:
        for thread in (self.follower, self.check):
            thread.join(self.settings.shutdown_timeout)
            if thread.is_alive():
                self.log.warning("thread did not stop in time; abandoning it",
                                 thread=thread.name, seconds=self.settings.shutdown_timeout)

    def _close_store(self) -> None:
        if self._own_store:
            self.store.close()
