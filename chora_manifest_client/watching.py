"""``GET /v1/watch`` as an iterator of ``WatchEvent``s that survives registry restarts.

The stream resumes where it stopped: every reconnection sends the last event id seen
(an etcd revision) as ``Last-Event-ID``, so the registry replays what was missed or, if it
cannot, starts with a ``resync`` event carrying the full list. Reconnection tries each
registry URL in turn, with a backoff capped at ``max_backoff`` while none answers.
The sync and async loops are twins; what they decode and decide is in ``sse.py``,
``events.py`` and ``Backoff``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from chora_manifest_client import answers, events
from chora_manifest_client.errors import ManifestError, RegistryUnavailableError
from chora_manifest_client.events import WatchEvent
from chora_manifest_client.sse import Decoder

if TYPE_CHECKING:
    from chora_manifest_client.client import ManifestClient

__all__ = ["Backoff", "WatchEvent", "watch", "watch_async"]

WATCH_PATH = "/v1/watch"
log = logging.getLogger("chora_manifest_client.watch")


@dataclass
class Backoff:
    """Delays between reconnection rounds: ``first``, doubling, at most ``cap``."""

    first: float = 0.1
    cap: float = 2.0
    _next: float = 0.0

    def next(self) -> float:
        delay = self._next or self.first
        self._next = min(delay * 2, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        self._next = 0.0


def _headers(last_id: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    return headers


def _timeout(client: ManifestClient, idle_timeout: float) -> httpx.Timeout:
    # A silent stream longer than idle_timeout is a dead one: the registry pings
    # (an SSE comment) well within it, so a frozen replica is left, not waited on forever.
    return httpx.Timeout(client.timeout, read=idle_timeout)


def _refused(url: str, response: httpx.Response) -> ManifestError | None:
    """``None`` for a 5xx (try another URL); the error to raise for any other non-200."""
    if response.status_code >= 500:
        return None
    return answers.refusal(response, f"watch {url}")


def watch(client: ManifestClient, since: int | str | None = None, *, reconnect: bool = True,
          idle_timeout: float = 45.0, max_backoff: float = 2.0,
          on_connect: Callable[[str], None] | None = None,
          on_disconnect: Callable[[str], None] | None = None) -> Iterator[WatchEvent]:
    """Every change after revision ``since`` (or from now), as it happens.

    Raises ``RegistryUnavailableError`` if no URL answers before the first event stream
    opens. After that it reconnects forever (``reconnect=False``: it stops when the
    stream ends or breaks, for callers that re-list before watching again).
    ``on_connect(url)`` / ``on_disconnect(reason)`` report the stream's state."""
    last_id = str(since) if since is not None else None
    backoff = Backoff(cap=max_backoff)
    connected_once = False
    while True:
        failures: list[tuple[str, str]] = []
        for url in client.endpoints.order():
            try:
                with client.http().stream("GET", url + WATCH_PATH, headers=_headers(last_id),
                                          timeout=_timeout(client, idle_timeout)) as response:
                    if response.status_code != 200:
                        response.read()
                        error = _refused(url, response)
                        if error is not None:
                            raise error
                        failures.append((url, f"HTTP {response.status_code}"))
                        continue
                    client.endpoints.answered(url)
                    connected_once = True
                    backoff.reset()
                    if on_connect is not None:
                        on_connect(url)
                    decoder = Decoder(last_id)
                    for line in response.iter_lines():
                        sse = decoder.feed(line)
                        if sse is not None:
                            last_id = decoder.last_id
                            yield events.parse(sse)
                    failures.append((url, "the stream ended"))
                    break
            except httpx.TransportError as exc:
                failures.append((url, answers.describe(exc)))
                if connected_once and not isinstance(exc, httpx.ConnectError):
                    break  # the stream broke: reconnect to the preferred URL first
        reason = "; ".join(f"{u}: {r}" for u, r in failures)
        if not connected_once or not reconnect:
            if connected_once:
                return
            raise RegistryUnavailableError(f"watch: no registry answered ({reason})",
                                           attempts=failures)
        _disconnected(reason, on_disconnect)
        time.sleep(backoff.next())


async def watch_async(client: ManifestClient, since: int | str | None = None, *,
                      reconnect: bool = True, idle_timeout: float = 45.0,
                      max_backoff: float = 2.0, http: httpx.AsyncClient | None = None,
                      on_connect: Callable[[str], None] | None = None,
                      on_disconnect: Callable[[str], None] | None = None
                      ) -> AsyncIterator[WatchEvent]:
    """The async twin of ``watch``; ``http`` is the AsyncClient to use (default: the
    client's own for the running loop)."""
    last_id = str(since) if since is not None else None
    backoff = Backoff(cap=max_backoff)
    connected_once = False
    while True:
        failures: list[tuple[str, str]] = []
        session = http or client._async_http()
        for url in client.endpoints.order():
            try:
                async with session.stream("GET", url + WATCH_PATH, headers=_headers(last_id),
                                          timeout=_timeout(client, idle_timeout)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        error = _refused(url, response)
                        if error is not None:
                            raise error
                        failures.append((url, f"HTTP {response.status_code}"))
                        continue
                    client.endpoints.answered(url)
                    connected_once = True
                    backoff.reset()
                    if on_connect is not None:
                        on_connect(url)
                    decoder = Decoder(last_id)
                    async for line in response.aiter_lines():
                        sse = decoder.feed(line)
                        if sse is not None:
                            last_id = decoder.last_id
                            yield events.parse(sse)
                    failures.append((url, "the stream ended"))
                    break
            except httpx.TransportError as exc:
                failures.append((url, answers.describe(exc)))
                if connected_once and not isinstance(exc, httpx.ConnectError):
                    break
        reason = "; ".join(f"{u}: {r}" for u, r in failures)
        if not connected_once or not reconnect:
            if connected_once:
                return
            raise RegistryUnavailableError(f"watch: no registry answered ({reason})",
                                           attempts=failures)
        _disconnected(reason, on_disconnect)
        await asyncio.sleep(backoff.next())


def _disconnected(reason: str, on_disconnect: Callable[[str], None] | None) -> None:
    log.warning("watch disconnected, reconnecting: %s", reason)
    if on_disconnect is not None:
        on_disconnect(reason)
