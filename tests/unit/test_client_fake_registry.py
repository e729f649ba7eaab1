"""A registry in memory behind ``httpx.MockTransport``, for the client's unit tests.

It answers the routes of contract section 3 the way the contract says (codes, bodies,
``X-Registry-Index``, SSE ids = revisions, ``resync`` with the full list, removals as
``down``), so the client's logic is tested without a server. Several fakes can sit
behind one transport, one per URL; a URL with no fake refuses connections. The tests at
the bottom pin the fake to the contract.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import unquote

import httpx


class FakeRegistry:
    def __init__(self) -> None:
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.capabilities: dict[str, dict[str, Any]] = {}
        self.revision = 1
        self.changes: list[tuple[int, str, dict[str, Any]]] = []  # (revision, kind, record)
        self.requests: list[httpx.Request] = []
        self.fail_with: int | None = None  # answer every request with this status
        self.heartbeat_interval = 10
        self.live = True  # watch streams stay open (False: they end after what is known)
        self.generation = 0

    # -- state changes, as the real registry would make them --------------------------
    def _change(self, kind: str, record: dict[str, Any]) -> None:
        self.revision += 1
        self.changes.append((self.revision, kind, dict(record)))

    def add(self, name: str, *, status: str = "up", tags: list[str] | None = None,
            dependencies: list[str] | None = None) -> dict[str, Any]:
        record = {"name": name, "id": f"{name}-{secrets.token_hex(4)}", "version": "1.0.0",
                  "interfaces": {"REST": f"http://127.0.0.1:9000/{name}"},
                  "metadata": {"tags": tags or [], "dependencies": dependencies or []},
                  "status": status, "last_heartbeat": "2026-11-23T10:00:00.000Z",
                  "registered_at": "2026-11-23T10:00:00.000Z"}
        self.services[(name, record["id"])] = record
        self._change("up", record)
        return record

    def remove(self, name: str, instance_id: str) -> None:
        record = self.services.pop((name, instance_id), None)
        if record is not None:
            self._change("down", {**record, "status": "down"})

    # -- HTTP ----------------------------------------------------------------------------
    def _json(self, status: int, body: Any = None) -> httpx.Response:
        headers = {"X-Registry-Index": str(self.revision)}
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return self._json(self.fail_with, {"detail": "injected failure"})
        parts = [unquote(p) for p in request.url.raw_path.decode().split("?")[0].split("/")[1:]]
        method = request.method
        if parts[:2] != ["v1", "services"] and parts[:1] == ["v1"] and len(parts) >= 2:
            return self._other(request, parts[1:])
        rest = parts[2:]
        if method == "POST" and not rest:
            body = json.loads(request.content)
            if not body.get("interfaces"):
                return self._json(422, {"detail": "interfaces: required"})
            record = self.add(body["name"])
            record.update(version=body["version"], interfaces=body["interfaces"],
                          metadata=body.get("metadata") or {})
            return self._json(201, {"id": record["id"], "name": record["name"],
                                    "version": record["version"], "status": "up",
                                    "registered_at": record["registered_at"],
                                    "heartbeat_interval": self.heartbeat_interval,
                                    "heartbeat_timeout": 30})
        if method == "PUT" and len(rest) == 3 and rest[2] == "heartbeat":
            if (rest[0], rest[1]) not in self.services:
                return self._json(404, {"detail": "not found"})
            return self._json(204)
        if method == "DELETE" and len(rest) == 2:
            self.remove(rest[0], rest[1])
            return self._json(204)
        if method == "GET" and len(rest) == 1:
            found = [r for (n, _), r in sorted(self.services.items()) if n == rest[0]]
            if not found:
                return self._json(404, {"detail": f"service {rest[0]!r} not found"})
            return self._json(200, found[0] if len(found) == 1 else found)
        if method == "GET" and not rest:
            q = request.url.params
            found = [r for r in self.services.values()
                     if q.get("status") in (None, r["status"])
                     and (q.get("tag") is None or q["tag"] in r["metadata"].get("tags", []))
                     and (q.get("dependency") is None
                          or q["dependency"] in r["metadata"].get("dependencies", []))]
            return self._json(200, found)
        return self._json(405, {"detail": "method not allowed"})

    def _other(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        if parts == ["health"]:
            return self._json(200, {"status": "healthy", "version": "test",
                                    "services_registered": len(self.services)})
        if parts == ["capabilities"]:
            return self._json(200, list(self.capabilities.values()))
        if parts[0] == "capabilities" and len(parts) == 2:
            found = self.capabilities.get(parts[1])
            return self._json(200, found) if found else self._json(404, {"detail": "nope"})
        if parts == ["watch"]:
            return self._watch(request)
        return self._json(404, {"detail": "no such route"})

    def sse_body(self, since: int | None) -> bytes:
        out = []
        if since is None or since < (self.changes[0][0] - 1 if self.changes else 0):
            listed = json.dumps(list(self.services.values()))
            out.append(f"id: {self.revision}\nevent: resync\ndata: {listed}\n\n")
        else:
            for revision, kind, record in self.changes:
                if revision > since:
                    out.append(f"id: {revision}\nevent: {kind}\ndata: {json.dumps(record)}\n\n")
        out.append(": ping\n\n")
        return "".join(out).encode()

    def _watch(self, request: httpx.Request) -> httpx.Response:
        last = request.headers.get("Last-Event-ID")
        since = int(last) if last else None
        if not self.live:
            return httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                                  content=self.sse_body(since))
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                              stream=LiveStream(self, since))

    def drop_streams(self) -> None:
        """Break every open watch stream, as a registry that dies does."""
        self.generation += 1


class LiveStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A watch stream that stays open, pushing changes as the fake makes them, until the
    fake drops its streams or ``lifetime`` seconds pass (then it ends cleanly)."""

    def __init__(self, registry: FakeRegistry, since: int | None, lifetime: float = 10.0):
        self.registry, self.since, self.lifetime = registry, since, lifetime
        self.generation = registry.generation

    def _pending(self) -> bytes | None:
        """What to send now; ``None`` once the stream must break."""
        if self.registry.generation != self.generation:
            return None
        if self.since is None or self.since < self.registry.revision:
            chunk = self.registry.sse_body(self.since)
            self.since = self.registry.revision
            return chunk
        return b""

    def __iter__(self) -> Iterator[bytes]:
        deadline = time.monotonic() + self.lifetime
        while time.monotonic() < deadline:
            chunk = self._pending()
            if chunk is None:
                raise httpx.ReadError("connection reset by peer")
            if chunk:
                yield chunk
            else:
                time.sleep(0.005)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        deadline = time.monotonic() + self.lifetime
        while time.monotonic() < deadline:
            chunk = self._pending()
            if chunk is None:
                raise httpx.ReadError("connection reset by peer")
            if chunk:
                yield chunk
            else:
                await asyncio.sleep(0.005)


class Network:
    """One MockTransport for several registry URLs: ``network.at("127.0.0.1:8501")``."""

    def __init__(self) -> None:
        self.hosts: dict[str, FakeRegistry | Callable[[httpx.Request], httpx.Response]] = {}
        self.attempts: list[str] = []

    def at(self, hostport: str, registry: FakeRegistry | None = None) -> FakeRegistry:
        registry = registry or FakeRegistry()
        self.hosts[hostport] = registry
        return registry

    def handle(self, request: httpx.Request) -> httpx.Response:
        hostport = f"{request.url.host}:{request.url.port}"
        self.attempts.append(hostport)
        target = self.hosts.get(hostport)
        if target is None:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if isinstance(target, FakeRegistry):
            return target.handle(request)
        return target(request)

    def down(self, hostport: str) -> FakeRegistry:
        """The registry at ``hostport`` dies: streams break, connections are refused."""
        registry = self.hosts.pop(hostport)
        assert isinstance(registry, FakeRegistry)
        registry.drop_streams()
        return registry

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


# -- the fake keeps the contract ------------------------------------------------------


def test_the_fake_answers_registration_with_201_and_the_heartbeat_interval():
    registry = FakeRegistry()
    with httpx.Client(transport=httpx.MockTransport(registry.handle)) as http:
        answer = http.post("http://r/v1/services",
                           json={"name": "a", "version": "1", "interfaces": {"REST": "x"}})
    assert answer.status_code == 201
    assert answer.json()["heartbeat_interval"] == 10
    assert int(answer.headers["X-Registry-Index"]) == registry.revision


def test_the_fake_replays_changes_after_last_event_id_and_resyncs_without_one():
    registry = FakeRegistry()
    a = registry.add("a")
    registry.remove("a", a["id"])
    assert b"event: resync" in registry.sse_body(None)
    replay = registry.sse_body(2).decode()
    assert "event: down" in replay and "event: up" not in replay
