"""The registry URLs a client may use, and the order to try them in.

Several registry replicas answer the same API (each reads the same etcd), so a client
given several URLs moves to the next one when a replica is down. It keeps starting from
the URL that answered last: a dead first URL would otherwise cost a connection attempt
on every call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_URL = "http://localhost:8500"


def parse_urls(urls: str | Iterable[str]) -> list[str]:
    """``"http://a:8500, http://b:8500"`` or ``["http://a:8500", ...]`` → a clean list.

    Raises ``ValueError`` naming the bad entry: a typo in ``MANIFEST_URL`` should fail
    at start-up, not as a connection error on the first call."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    parsed: list[str] = []
    for item in items:
        url = item.strip().rstrip("/")
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not a registry URL (want http://host:port): {item.strip()!r}")
        if url not in parsed:
            parsed.append(url)
    if not parsed:
        raise ValueError("no registry URL given")
    return parsed


class Endpoints:
    """The URL list with a sticky preference: ``order()`` starts at the last URL that
    answered, then the others in their given order. Safe to share between threads."""

    def __init__(self, urls: str | Iterable[str]) -> None:
        self.urls: tuple[str, ...] = tuple(parse_urls(urls))
        self._preferred = 0
        self._lock = threading.Lock()

    def order(self) -> list[str]:
        with self._lock:
            first = self._preferred
        return [self.urls[first], *(u for i, u in enumerate(self.urls) if i != first)]

    def answered(self, url: str) -> None:
        """``url`` gave an answer (any non-5xx): try it first from now on."""
        with self._lock:
            self._preferred = self.urls.index(url)

    def __repr__(self) -> str:
        return f"Endpoints({', '.join(self.urls)})"
