"""``ManifestClient``: the registry's HTTP API as methods, sync and async, with failover.

Every call goes to the URL that answered last; on a connection failure or a 5xx it moves
to the next URL, on a 4xx it stops (another replica would say the same). What each call
sends and how its answer is read is in ``operations.py``; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from chora_manifest_client import answers, credentials, operations
from chora_manifest_client.credentials import PathLike
from chora_manifest_client.endpoints import DEFAULT_URL, Endpoints
from chora_manifest_client.errors import RegistryUnavailableError
from chora_manifest_client.operations import Op, Record, Registration

if TYPE_CHECKING:
    from chora_manifest_client.caching import ServiceCache
    from chora_manifest_client.heartbeating import AsyncHeartbeat, Heartbeat
    from chora_manifest_client.watching import WatchEvent

T = TypeVar("T")


class ManifestClient:
    """A client of the registry (seed 001 "Quick Reference: Client Library API").

    ``manifest_url`` is one URL, several as a list, or a comma-separated string
    (``MANIFEST_URL="http://a:8500,http://b:8500"``). ``timeout`` bounds each request to
    one URL; ``retries`` is how many more rounds over all URLs to try (with a short
    backoff) before raising ``RegistryUnavailableError``. ``auth_token`` is sent as
    ``Authorization: Bearer``; a registry with a token file answers 401 / 403, raised as
    ``ManifestAuthError`` with the registry's reason. ``cacert`` is a PEM CA bundle to
    verify ``https://`` URLs with (default: the system's trust store). ``transport`` /
    ``async_transport`` replace the network (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        manifest_url: str | Iterable[str] = DEFAULT_URL,
        auth_token: str | None = None,
        timeout: float = 5.0,
        retries: int = 0,
        *,
        cacert: PathLike | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoints = Endpoints(manifest_url)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.headers = {"Accept": "application/json", **credentials.bearer(auth_token)}
        self.cacert = cacert
        # Built once and shared by every connection (sync, async, the cache's): checked
        # now when a bundle is given, so a wrong path fails here and not on a call.
        self._tls = credentials.tls_context(cacert) if cacert is not None else None
        self._transport = transport
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport  # MockTransport serves both
        self._async_transport = async_transport
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()  # the heartbeat thread and the caller share it
        self._ahttp: httpx.AsyncClient | None = None
        self._ahttp_loop: asyncio.AbstractEventLoop | None = None
        self.last_index: int | None = None
        """``X-Registry-Index`` of the latest answer: the etcd revision it reflected."""

    @classmethod
    def from_env(cls, **kwargs: Any) -> ManifestClient:
        """``MANIFEST_URL`` (default http://localhost:8500), ``MANIFEST_TOKEN`` (or its
        older name ``MANIFEST_AUTH_TOKEN``) and ``MANIFEST_CACERT``; keyword arguments
        win over the environment."""
        kwargs.setdefault("auth_token", credentials.token_from_env())
        kwargs.setdefault("cacert", credentials.cacert_from_env())
        return cls(os.environ.get("MANIFEST_URL") or DEFAULT_URL, **kwargs)

    @property
    def urls(self) -> tuple[str, ...]:
        return self.endpoints.urls

    def __repr__(self) -> str:
        return f"ManifestClient({', '.join(self.urls)})"

    # -- instances -----------------------------------------------------------------------

    def register(self, name: str, version: str, interfaces: Mapping[str, str],
                 metadata: Mapping[str, Any] | None = None) -> str:
        """Register one instance of ``name``; returns the instance id the registry chose."""
        return self.register_instance(name, version, interfaces, metadata).instance_id

    def register_instance(self, name: str, version: str, interfaces: Mapping[str, str],
                          metadata: Mapping[str, Any] | None = None) -> Registration:
        """Like ``register`` but returns the whole answer (id and heartbeat interval)."""
        return self._run(operations.register(name, version, interfaces, metadata))

    def heartbeat(self, name: str, instance_id: str) -> None:
        """Keep the instance ``up``. ``ServiceNotFoundError``: it was removed; register
        again (``keep_registered`` does this for you)."""
        self._run(operations.heartbeat(name, instance_id))

    def deregister(self, name: str, instance_id: str) -> None:
        """Remove the instance now; succeeds also when it is already gone."""
        self._run(operations.deregister(name, instance_id))

    def get_service(self, name: str) -> Record | list[Record]:
        """The record of ``name``, or a list of records when several instances run (as the
        API answers). ``ServiceNotFoundError`` when none is registered."""
        return self._run(operations.get_service(name))

    def get_instances(self, name: str) -> list[Record]:
        """Every instance of ``name``, always as a list (``ServiceNotFoundError`` if none)."""
        return operations.instances(self.get_service(name))

    def list_services(self, status: str | None = None, tag: str | None = None,
                      dependency: str | None = None) -> list[Record]:
        """All instances; the filters combine (``status="up", tag="core"``)."""
        return self._run(operations.list_services(status, tag, dependency))

    # -- capabilities and the registry itself ---------------------------------------------

    def list_capabilities(self, type: str | None = None) -> list[Record]:
        """Declared capabilities (``type="service"`` or ``"pattern"`` to filter)."""
        return self._run(operations.list_capabilities(type))

    def get_capability(self, namespace: str) -> Record:
        """One capability with its health and instances (``CapabilityNotFoundError``)."""
        return self._run(operations.get_capability(namespace))

    def health(self) -> Record:
        """``{"status": "healthy" | "degraded", "version", "services_registered"}``."""
        return self._run(operations.health())

    # -- async twins -----------------------------------------------------------------------

    async def register_async(self, name: str, version: str, interfaces: Mapping[str, str],
                             metadata: Mapping[str, Any] | None = None) -> str:
        registration = await self.register_instance_async(name, version, interfaces, metadata)
        return registration.instance_id

    async def register_instance_async(self, name: str, version: str,
                                      interfaces: Mapping[str, str],
                                      metadata: Mapping[str, Any] | None = None
                                      ) -> Registration:
        return await self._run_async(operations.register(name, version, interfaces, metadata))

    async def heartbeat_async(self, name: str, instance_id: str) -> None:
        await self._run_async(operations.heartbeat(name, instance_id))

    async def deregister_async(self, name: str, instance_id: str) -> None:
        await self._run_async(operations.deregister(name, instance_id))

    async def get_service_async(self, name: str) -> Record | list[Record]:
        return await self._run_async(operations.get_service(name))

    async def get_instances_async(self, name: str) -> list[Record]:
        return operations.instances(await self.get_service_async(name))

    async def list_services_async(self, status: str | None = None, tag: str | None = None,
                                  dependency: str | None = None) -> list[Record]:
        return await self._run_async(operations.list_services(status, tag, dependency))

    async def list_capabilities_async(self, type: str | None = None
                                      ) -> list[Record]:
        return await self._run_async(operations.list_capabilities(type))

    async def get_capability_async(self, namespace: str) -> Record:
        return await self._run_async(operations.get_capability(namespace))

    async def health_async(self) -> Record:
        return await self._run_async(operations.health())

    # -- helpers built on the calls ---------------------------------------------------------

    def keep_registered(self, name: str, version: str, interfaces: Mapping[str, str],
                        metadata: Mapping[str, Any] | None = None, **options: Any
                        ) -> Heartbeat:
        """``with client.keep_registered(...) as hb:`` registers, beats in a thread,
        re-registers after a removal and deregisters on exit and on SIGTERM."""
        from chora_manifest_client.heartbeating import Heartbeat

        return Heartbeat(self, name, version, interfaces, metadata, **options)

    def keep_registered_async(self, name: str, version: str, interfaces: Mapping[str, str],
                              metadata: Mapping[str, Any] | None = None, **options: Any
                              ) -> AsyncHeartbeat:
        """``async with client.keep_registered_async(...) as hb:``: the same as a task."""
        from chora_manifest_client.heartbeating import AsyncHeartbeat

        return AsyncHeartbeat(self, name, version, interfaces, metadata, **options)

    def cache(self, **options: Any) -> ServiceCache:
        """A local copy of every instance kept current by ``GET /v1/watch``; lookups are
        memory reads. Use as ``with client.cache() as cache:`` (or ``.start()``)."""
        from chora_manifest_client.caching import ServiceCache

        return ServiceCache(self, **options)

    def watch(self, since: int | None = None, **options: Any) -> Iterator[WatchEvent]:
        """Every change from now (or after revision ``since``), reconnecting as needed."""
        from chora_manifest_client.watching import watch

        return watch(self, since=since, **options)

    def watch_async(self, since: int | None = None, **options: Any
                    ) -> AsyncIterator[WatchEvent]:
        """``async for event in client.watch_async():`` the async twin of ``watch``."""
        from chora_manifest_client.watching import watch_async

        return watch_async(self, since=since, **options)

    # -- transport -----------------------------------------------------------------------------

    def tls(self) -> ssl.SSLContext:
        """The context ``https://`` URLs are verified with (``cacert``, or the system's
        trust store, loaded on first use)."""
        if self._tls is None:
            self._tls = credentials.tls_context(None)
        return self._tls

    def http_options(self) -> dict[str, Any]:
        """What every HTTP client of this ``ManifestClient`` is made with (the cache's
        own AsyncClient too): timeout, headers with the token, TLS verification."""
        return {"timeout": self.timeout, "headers": self.headers, "verify": self.tls()}

    def http(self) -> httpx.Client:
        """The shared sync HTTP client (created on first use)."""
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(**self.http_options(), transport=self._transport)
            return self._http

    def _async_http(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that opened them: a second
        # asyncio.run() gets a client of its own.
        loop = asyncio.get_running_loop()
        if self._ahttp is None or self._ahttp_loop is not loop:
            self._ahttp = httpx.AsyncClient(**self.http_options(),
                                            transport=self._async_transport)
            self._ahttp_loop = loop
        return self._ahttp

    def _run(self, op: Op[T]) -> T:
        return op.read(self.send(op.call))

    async def _run_async(self, op: Op[T]) -> T:
        return op.read(await self.send_async(op.call))

    def send(self, call: operations.Call) -> httpx.Response:
        """``call`` to each URL in turn until one answers below 500."""
        failures: list[tuple[str, str]] = []
        for round_ in range(self.retries + 1):
            if round_:
                time.sleep(_backoff(round_))
            for url in self.endpoints.order():
                try:
                    response = self.http().request(call.method, url + call.path,
                                                   params=call.params, json=call.json)
                except httpx.TransportError as exc:
                    failures.append((url, answers.describe(exc)))
                    if not answers.may_fail_over(exc, idempotent=call.idempotent):
                        raise _unavailable(call, failures) from exc
                    continue
                if self._accepted(url, response, failures):
                    return response
        raise _unavailable(call, failures)

    async def send_async(self, call: operations.Call,
                         http: httpx.AsyncClient | None = None) -> httpx.Response:
        """The async twin of ``send``; ``http`` replaces the client's own AsyncClient
        (the cache's thread runs a loop of its own)."""
        failures: list[tuple[str, str]] = []
        for round_ in range(self.retries + 1):
            if round_:
                await asyncio.sleep(_backoff(round_))
            for url in self.endpoints.order():
                try:
                    response = await (http or self._async_http()).request(
                        call.method, url + call.path, params=call.params, json=call.json)
                except httpx.TransportError as exc:
                    failures.append((url, answers.describe(exc)))
                    if not answers.may_fail_over(exc, idempotent=call.idempotent):
                        raise _unavailable(call, failures) from exc
                    continue
                if self._accepted(url, response, failures):
                    return response
        raise _unavailable(call, failures)

    def _accepted(self, url: str, response: httpx.Response,
                  failures: list[tuple[str, str]]) -> bool:
        if answers.is_server_failure(response):
            failures.append((url, f"HTTP {response.status_code}: {answers.detail(response)}"))
            return False
        self.endpoints.answered(url)
        index = answers.index_of(response)
        if index is not None:
            self.last_index = index
        return True

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    async def aclose(self) -> None:
        if self._ahttp is not None:
            await self._ahttp.aclose()
            self._ahttp = None
        self.close()

    def __enter__(self) -> ManifestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ManifestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _backoff(round_: int) -> float:
    return min(0.2 * 2 ** (round_ - 1), 2.0)


def _unavailable(call: operations.Call, failures: list[tuple[str, str]]
                 ) -> RegistryUnavailableError:
    tried = "; ".join(f"{url}: {reason}" for url, reason in failures)
    return RegistryUnavailableError(f"{call.method} {call.path}: no registry answered ({tried})",
                                    attempts=failures)
