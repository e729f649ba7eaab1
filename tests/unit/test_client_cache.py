"""The watch iterator and the watch-fed cache against an in-memory registry: resuming
with Last-Event-ID, and a cache that keeps its last state while the registry is away."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from chora_manifest_client import ManifestClient, RegistryUnavailableError, ServiceNotFoundError
from tests.unit.test_client_fake_registry import Network

A = "127.0.0.1:8501"


@pytest.fixture
def network() -> Network:
    network = Network()
    network.at(A)
    return network


@pytest.fixture
def client(network: Network) -> ManifestClient:
    return ManifestClient(f"http://{A}", transport=network.transport(), timeout=1.0)


def test_watch_starts_with_a_resync_and_resumes_from_the_last_event_id(network, client):
    registry = network.hosts[A]
    registry.add("a")
    events = client.watch()
    first = next(events)
    assert first.kind == "resync" and [r["name"] for r in first.records] == ["a"]
    registry.add("b")
    second = next(events)
    assert (second.kind, second.record["name"]) == ("up", "b")
    registry.drop_streams()
    registry.add("c")
    third = next(events)
    assert (third.kind, third.record["name"]) == ("up", "c")
    watches = [r for r in registry.requests if r.url.path == "/v1/watch"]
    assert len(watches) == 2 and "Last-Event-ID" not in watches[0].headers
    assert watches[1].headers["Last-Event-ID"] == str(second.revision)
    events.close()


def test_the_async_watch_resumes_the_same_way(network, client):
    registry = network.hosts[A]
    registry.add("a")

    async def first_events() -> list[tuple[str, str | None]]:
        seen = []
        async for event in client.watch_async():
            seen.append((event.kind, event.record["name"] if event.record else None))
            if len(seen) == 1:
                registry.drop_streams()
                registry.add("b")
            if len(seen) == 2:
                break
        return seen

    assert asyncio.run(asyncio.wait_for(first_events(), 10)) == [("resync", None), ("up", "b")]


def test_watch_raises_when_no_registry_answers_at_start():
    client = ManifestClient(f"http://{A}", transport=Network().transport())
    with pytest.raises(RegistryUnavailableError):
        next(iter(client.watch()))


def test_watch_keeps_reconnecting_once_it_has_connected(network, client):
    registry = network.hosts[A]
    refusals = []

    def restarting(request: httpx.Request) -> httpx.Response:
        if len(refusals) < 3:
            refusals.append(request)
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        registry.add("back") if not registry.services else None
        return registry.handle(request)

    lost = []
    events = client.watch(on_disconnect=lost.append, max_backoff=0.05)
    first = next(events)  # the resync
    network.down(A)
    network.hosts[A] = restarting
    event = next(events)
    assert event.record["name"] == "back" and event.revision > first.revision
    assert len(refusals) == 3 and any("Connection refused" in reason for reason in lost)
    events.close()


def test_the_cache_answers_from_memory_and_follows_changes(network, client):
    registry = network.hosts[A]
    kept = registry.add("kept", tags=["core"])
    with client.cache() as cache:
        assert cache.get_service("kept")["id"] == kept["id"]
        requests = len(registry.requests)
        for _ in range(100):
            cache.list_services(tag="core")
        assert len(registry.requests) - requests < 10  # only the watch's reconnections
        added = registry.add("added")
        assert cache.wait_for(lambda c: len(c) == 2, timeout=5)
        registry.remove("added", added["id"])
        assert cache.wait_for(lambda c: len(c) == 1, timeout=5)
        with pytest.raises(ServiceNotFoundError):
            cache.get_instances("added")


def test_the_cache_keeps_its_last_state_while_the_registry_is_unreachable(network, client):
    registry = network.hosts[A]
    registry.add("a")
    registry.add("b")
    with client.cache(max_backoff=0.05) as cache:
        assert cache.wait_for(lambda c: not c.stale, timeout=5)  # watching
        network.down(A)
        assert cache.wait_for(lambda c: c.stale, timeout=5)
        for _ in itertools.repeat(None, 50):
            assert len(cache.list_services()) == 2
        network.at(A, registry)
        registry.add("c")
        assert cache.wait_for(lambda c: len(c) == 3 and not c.stale, timeout=5)


def test_starting_a_cache_without_a_registry_fails_within_the_timeout():
    client = ManifestClient(f"http://{A}", transport=Network().transport())
    with pytest.raises(RegistryUnavailableError):
        client.cache().start(timeout=0.5)
