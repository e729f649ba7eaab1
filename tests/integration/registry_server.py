"""The registry under test: a real server on a free port of 127.0.0.1 (in a thread, or as
``python -m services.registry``), an httpx client for it, and a reader of its change
stream that collects Server-Sent Events in the background."""

from __future__ import annotations

import json
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.registry.daemon import Daemon
from services.registry.settings import Settings
from tests.conftest import wait_for

FAST = {"etcd_timeout": 1.0, "stream_ping": 0.3, "quorum_check": 0.5, "stall_after": 3.0,
        "shutdown_timeout": 3.0}


@dataclass
class Registry:
    daemon: Daemon
    url: str
    http: httpx.Client

    def register(self, name: str = "orchestrator", **fields: Any) -> str:
        body = {"name": name, "version": "1.0.0",
                "interfaces": {"REST": "http://127.0.0.1:9000"}, **fields}
        r = self.http.post("/v1/services", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def index(self, response: httpx.Response) -> int:
        return int(response.headers["X-Registry-Index"])


@contextmanager
def serving(endpoints: list[str], *, cacert: Path | None = None,
            headers: dict[str, str] | None = None, **overrides: Any) -> Iterator[Registry]:
    """A registry in a thread of this process; stopped (and checked to stop) at exit.
    With ``tls_cert``/``tls_key`` it serves https, verified against ``cacert``;
    ``headers`` go with every request of ``Registry.http`` (a token)."""
    settings = Settings(tuple(endpoints), **{"port": 0, **FAST, **overrides})
    daemon = Daemon(settings)
    thread = threading.Thread(target=daemon.run, name="registry-under-test")
    thread.start()
    url = f"{settings.scheme}://127.0.0.1:{daemon.port}"
    verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(cacert))
                                     if cacert is not None else True)
    http = httpx.Client(base_url=url, timeout=10, verify=verify, headers=headers or {})
    try:
        wait_for(lambda: http.get("/v1/health").status_code == 200, timeout=20,
                 what="the registry's first read")
        yield Registry(daemon, url, http)
    finally:
        daemon.stop()
        thread.join(20)
        http.close()
        assert not thread.is_alive(), "registry did not stop within 20 s"


@dataclass
class Sse:
    id: int | None
    event: str
    data: Any


@dataclass
class EventStream:
    """``GET /v1/watch`` read by a thread; ``events`` fills as they arrive."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    events: queue.Queue[Sse] = field(default_factory=queue.Queue)
    comments: int = 0
    status: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    verify: ssl.SSLContext | bool = True

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._opened.wait(10), "the change stream did not answer"

    def _read(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=5), verify=self.verify
                              ) as client, client.stream(
                    "GET", self.url + "/v1/watch", headers=self.headers,
                    params=self.params) as r:
                self.status = r.status_code
                self._opened.set()
                current: dict[str, str] = {}
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments += 1
                    elif line == "":
                        if current:
                            self.events.put(Sse(
                                int(current["id"]) if "id" in current else None,
                                current.get("event", "message"),
                                json.loads(current["data"]) if "data" in current else None))
                        current = {}
                    else:
                        key, _, value = line.partition(": ")
                        current[key] = value
        except httpx.HTTPError:
            pass
        finally:
            self._opened.set()
            self.ended.set()

    def take(self, count: int, timeout: float = 10.0) -> list[Sse]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(out)} of {count} events: {out}")
            try:
                out.append(self.events.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def take_until(self, condition: Callable[[Sse], bool], timeout: float = 10.0) -> list[Sse]:
        out: list[Sse] = []
        deadline = time.monotonic() + timeout
        while not out or not condition(out[-1]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s: {out}")
            try:
                out.append(self.events.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def pending(self) -> list[Sse]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
