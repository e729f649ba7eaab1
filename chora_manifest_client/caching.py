"""``ServiceCache``: every instance in memory, kept current by the registry's watch stream.

Seed 001's pitfall 5 (querying the registry on every request) is usually solved with a
TTL cache, which serves data up to a TTL old and still queries once per TTL. This cache is
pushed every change instead, typically within milliseconds, so a caller can look up on
every request without a network call.

How it stays right: each (re)connection lists all instances (``GET /v1/services``, with
the revision in ``X-Registry-Index``), then watches from that revision. The copy is only
ever replaced by a full list or changed by an event, never cleared: while the registry is
restarting or unreachable, lookups keep answering from the last known state (``stale``
says so), which is what a caller wants from a discovery cache (nacos#10209 is the bug of
pushing an empty list during a reconnect). A list or event older than the copy's
revision is ignored, so the copy never goes backwards.

Runs as a daemon thread with its own event loop (``start``/``close``, ``with``), or as a
task in the caller's loop (``await start_async()``/``aclose``, ``async with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from chora_manifest_client import operations, records
from chora_manifest_client.errors import (
    ManifestAuthError,
    ManifestError,
    RegistryUnavailableError,
    ServiceNotFoundError,
)
from chora_manifest_client.events import Instances
from chora_manifest_client.records import Record
from chora_manifest_client.watching import Backoff, watch_async

if TYPE_CHECKING:
    from chora_manifest_client.client import ManifestClient

log = logging.getLogger("chora_manifest_client.cache")


class ServiceCache:
    """A live local copy of the registry's instances. Lookups never touch the network.

    ``start(timeout)`` returns once the first full list is loaded (or raises
    ``RegistryUnavailableError`` if none could be within ``timeout``, and at once
    ``ManifestAuthError`` if the registry refuses the token: waiting would not help)."""

    def __init__(self, client: ManifestClient, *, idle_timeout: float = 45.0,
                 max_backoff: float = 2.0) -> None:
        self.client = client
        self.idle_timeout = idle_timeout
        self.max_backoff = max_backoff
        self._instances = Instances()
        self._ready = threading.Event()
        self._settled = threading.Event()  # loaded, or refused before the first load
        self._refused: ManifestAuthError | None = None
        self._connected = threading.Event()
        self._changed = threading.Condition()
        self._backoff = Backoff(cap=max_backoff)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.updated_at: float | None = None
        """``time.monotonic()`` of the last change applied."""

    # -- lookups (memory only) -----------------------------------------------------------

    def get_service(self, name: str) -> Record | list[Record]:
        """As ``ManifestClient.get_service``: one record, or a list when several run."""
        found = self.get_instances(name)
        return found[0] if len(found) == 1 else found

    def get_instances(self, name: str) -> list[Record]:
        """Every known instance of ``name`` (``ServiceNotFoundError`` when none)."""
        found = self._instances.of(name)
        if not found:
            raise ServiceNotFoundError(f"service {name!r}: not found (in the cache)")
        return found

    def list_services(self, status: str | None = None, tag: str | None = None,
                      dependency: str | None = None) -> list[Record]:
        """As ``ManifestClient.list_services``, filtered the same way, from memory."""
        return records.select(self._instances.all(), status, tag, dependency)

    def __len__(self) -> int:
        return len(self._instances)

    @property
    def revision(self) -> int | None:
        """The etcd revision the copy reflects."""
        return self._instances.revision

    @property
    def ready(self) -> bool:
        """A full list has been loaded at least once."""
        return self._ready.is_set()

    @property
    def stale(self) -> bool:
        """Not connected to the watch right now: answers are the last known state."""
        return not self._connected.is_set()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Block until ``predicate(cache)`` is true after some change, at most ``timeout``
        seconds. For tests and start-up code; request paths just read."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ServiceCache:
        """Run in a daemon thread; return once loaded."""
        if self._thread is None:
            started = threading.Event()

            def main() -> None:
                with contextlib.suppress(asyncio.CancelledError):
                    asyncio.run(self._main(started))

            self._thread = threading.Thread(target=main, name="manifest-cache", daemon=True)
            self._thread.start()
            started.wait(5)
        self._settled.wait(timeout)
        if not self._ready.is_set():
            self.close()
            if self._refused is not None:
                raise self._refused
            raise RegistryUnavailableError(
                f"cache: no full list within {timeout}s ({self.last_error})")
        return self

    def close(self, timeout: float = 5.0) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    async def start_async(self, timeout: float = 10.0) -> ServiceCache:
        """Run as a task of the running loop; return once loaded."""
        if self._task is None:
            self._task = asyncio.create_task(self._main(None), name="manifest-cache")
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self._refused is not None or time.monotonic() > deadline:
                await self.aclose()
                if self._refused is not None:
                    raise self._refused
                raise RegistryUnavailableError(
                    f"cache: no full list within {timeout}s ({self.last_error})")
            await asyncio.sleep(0.02)
        return self

    async def aclose(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __enter__(self) -> ServiceCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ServiceCache:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the loop -------------------------------------------------------------------------

    async def _main(self, started: threading.Event | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if started is not None:
            started.set()
        c = self.client
        async with httpx.AsyncClient(**c.http_options(),
                                     transport=c._async_transport) as http:
            try:
                while True:
                    try:
                        await self._follow(http)
                    except (ManifestError, httpx.HTTPError) as exc:
                        self.last_error = str(exc)
                        if isinstance(exc, ManifestAuthError) and not self._ready.is_set():
                            self._refused = exc
                            self._settled.set()
                        log.warning("cache: registry unreachable, serving the last known "
                                    "state (%d instances): %s", len(self), exc)
                    self._set_connected(False)
                    await asyncio.sleep(self._backoff.next())
            finally:
                self._set_connected(False)
                self._task = None

    async def _follow(self, http: httpx.AsyncClient) -> None:
        """One connection: list everything, then apply the watch until it breaks."""
        op = operations.list_services_indexed()
        items, index = op.read(await self.client.send_async(op.call, http=http))
        self._changed_by(self._instances.replace(items, index))
        self._ready.set()
        self._settled.set()
        async for event in watch_async(self.client, since=self._instances.revision,
                                       reconnect=False, idle_timeout=self.idle_timeout,
                                       http=http, on_connect=self._on_connect):
            self._changed_by(self._instances.apply(event))

    def _on_connect(self, url: str) -> None:
        self._set_connected(True)
        self._backoff.reset()
        self.last_error = None
        log.info("cache: watching %s from revision %s", url, self.revision)

    def _set_connected(self, connected: bool) -> None:
        if connected:
            self._connected.set()
        else:
            self._connected.clear()
        with self._changed:  # wait_for() may be waiting for ``stale`` to flip
            self._changed.notify_all()

    def _changed_by(self, changed: bool) -> None:
        if changed:
            self.updated_at = time.monotonic()
        with self._changed:
            self._changed.notify_all()

