"""The HTTP server: the registry's ASGI app served by granian, embedded in the registry's
own event loop (the hub, the status writer and every request handler share that loop).

Why granian, not uvicorn: granian parses HTTP and speaks TLS in Rust; uvicorn does TLS
in Python's ``ssl`` memory BIOs, one copy in and out per record. Measured with the
registry's own app, server CPU per ``GET /v1/services/{name}``: uvicorn 70 µs plain,
96 µs over TLS (+38 %); granian 46-50 µs plain, 51-54 µs over TLS (+8-10 %), and
granian's plaintext rate is 1.8 times uvicorn's (``scripts/bench_registry_tls.py``).

The lifecycle, all here:

- **The port** is bound by ``bind`` when the daemon is built, so a taken port is a
  configuration error before anything starts and port 0 is resolved to a number. The
  socket is closed just before granian binds that number itself: on Linux granian binds
  a socket per worker with SO_REUSEPORT, and a socket of ours left open would be handed
  connections that nobody accepts.
- **TLS**: granian reads the certificate and key from files when a worker starts. It
  reads ``tls.py``'s private copy of the last pair proven whole and matching, so a
  half-renewed pair on disk can never stop the server; once a renewed pair is copied
  in, ``reload`` starts a worker that reads it. New connections get the new
  certificate once the new worker listens; the old one stops listening
  ``RESPAWN_INTERVAL`` later, and its open connections (change streams too) go on.
- **Stopping**: ``stop`` asks from any thread. granian stops accepting and lets the
  requests being answered finish; a client that never finishes its request would hold
  it for ever, so after ``grace`` seconds the worker is killed and ``serve`` returns.
- **Logs**: granian logs through the standard library; its warnings and errors (a
  worker that crashed, a certificate it could not load) go to the registry's log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.server.embed import Server
from structlog.typing import FilteringBoundLogger

from services.registry.tls import Pair

BACKLOG = 2048
RESPAWN_INTERVAL = 0.5  # seconds both workers listen during a reload
EXPERIMENTAL = "Embedded server is experimental!"  # said at every start: known, not news


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to the port (not listening: nothing queues on it), so a taken port
    is a configuration error at start-up and port 0 tells its number before serving."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ValueError(f"--port {port} (--host {host}): {exc}") from exc
    return sock


class _ToStructlog(logging.Handler):
    """granian's warnings and errors, as lines of the registry's log."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message != EXPERIMENTAL:
            (self.log.error if record.levelno >= logging.ERROR else self.log.warning)(
                "http server: " + message)


class _ForcedStop(logging.Filter):
    """After a forced stop, granian's worker still tries to resolve a future the kill
    cancelled, and asyncio reports that with a traceback; the stop was logged already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "shutdown_glue" not in record.getMessage()


def _route_logs(log: FilteringBoundLogger) -> None:
    logger = logging.getLogger("_granian")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _ToStructlog)]
    logger.addHandler(_ToStructlog(log))
    noisy = logging.getLogger("asyncio")
    if not any(isinstance(f, _ForcedStop) for f in noisy.filters):
        noisy.addFilter(_ForcedStop())


# granian applies its logging configuration with dictConfig, which, unless incremental,
# closes every handler of the process; incremental, it only sets the level and
# ``propagate`` of its own logger.
_LOGGING = {"incremental": True, "formatters": {}, "handlers": {},
            "loggers": {"_granian": {"propagate": False}}}


class HttpServer:
    def __init__(self, app: Any, host: str, port: int, *, tls: Pair | None, grace: float,
                 log: FilteringBoundLogger, open_requests: Callable[[], int]) -> None:
        self._server = Server(
            app, address=host, port=port, interface=Interfaces.ASGINL, http=HTTPModes.http1,
            websockets=False, backlog=BACKLOG, log_dictconfig=_LOGGING,
            ssl_cert=None if tls is None else tls.cert,
            ssl_key=None if tls is None else tls.key,
            ssl_protocol_min=SSLProtocols.tls12)
        # A reload starts the new worker, then stops the old one this much later
        # (granian's default, 3.5 s, would keep serving the old certificate that long).
        self._server.respawn_interval = RESPAWN_INTERVAL
        _route_logs(log)
        self.grace, self.log, self._open_requests = grace, log, open_requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[None] | None = None
        self._stop = threading.Event()
        self._forced = False
        self.stopped = False  # no longer accepting: ``serve`` returned

    async def serve(self) -> bool:
        """Serve until ``stop``; the port must be free (``bind``'s socket closed). False
        when the server ended without being asked (its worker died: logged by granian)."""
        self._loop = asyncio.get_running_loop()
        try:
            if not self._stop.is_set():
                self._task = asyncio.ensure_future(self._server.serve())
                await self._task
        except asyncio.CancelledError:
            if not self._forced:
                raise
        finally:
            self.stopped = True
        return self._stop.is_set()

    def stop(self) -> None:
        """From any thread, before or while serving."""
        self._stop.set()
        self._call(self._stop_within_grace)

    def _stop_within_grace(self) -> None:
        self._server.stop()
        assert self._loop is not None
        self._loop.call_later(self.grace, self._force)

    def _force(self) -> None:
        if self._task is None or self._task.done():
            return
        self.log.warning("requests still open after the grace period: closed",
                         open=self._open_requests(), seconds=self.grace)
        self._forced = True
        for worker in list(self._server.wrks):
            worker.kill()
        self._task.cancel()

    def reload(self) -> None:
        """Start a new worker (which reads the TLS pair again) and stop the old one."""
        self._call(self._server.reload)

    def _call(self, method: Any) -> None:
        # granian's signals set an asyncio.Event: only safe from the loop's own thread.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(method)
