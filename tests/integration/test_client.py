"""The client library against a real registry process and a real etcd cluster:
the life cycle (sync and async), failover, the heartbeat helper, watch and cache."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from chora_manifest_client import (
    ManifestClient,
    RegistryUnavailableError,
    ServiceNotFoundError,
)
from services.core.localcluster import free_ports
from tests.conftest import wait_for
from tests.integration.test_client_harness import REPO, RegistryProcess

pytest_plugins = ["tests.integration.test_client_harness"]  # its fixtures

REST = "http://127.0.0.1:9000"


def dead_url() -> str:
    """A 127.0.0.1 URL nothing listens on."""
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def test_an_instance_lives_registered_found_filtered_beating_and_gone(server, unique):
    client = ManifestClient(server.url)
    instance_id = client.register(unique, "1.2.0", {"REST": REST, "CLI": "svc"},
                                  {"tags": ["core", unique], "dependencies": ["manifest"],
                                   "environment": "test", "team": "blue"})
    assert instance_id.startswith(f"{unique}-")
    record = client.get_service(unique)
    assert (record["id"], record["status"], record["interfaces"]["REST"]) == (
        instance_id, "up", REST)
    assert record["metadata"]["team"] == "blue"

    assert [r["id"] for r in client.list_services(tag=unique)] == [instance_id]
    assert [r["id"] for r in client.list_services(status="up", tag=unique)] == [instance_id]
    assert client.list_services(status="unhealthy", tag=unique) == []
    assert instance_id in [r["id"] for r in client.list_services(dependency="manifest")]

    client.heartbeat(unique, instance_id)
    client.deregister(unique, instance_id)
    with pytest.raises(ServiceNotFoundError):
        client.get_service(unique)
    with pytest.raises(ServiceNotFoundError):
        client.heartbeat(unique, instance_id)
    client.deregister(unique, instance_id)  # already gone: still fine


def test_the_async_client_goes_through_the_same_life_cycle(server, unique):
    async def lifecycle() -> None:
        async with ManifestClient(server.url) as client:
            first = await client.register_async(unique, "1.0.0", {"REST": REST},
                                                {"tags": [unique]})
            second = await client.register_async(unique, "1.0.0", {"REST": REST})
            both = await client.get_service_async(unique)
            assert isinstance(both, list) and {r["id"] for r in both} == {first, second}
            assert [r["id"] for r in await client.list_services_async(tag=unique)] == [first]
            await client.heartbeat_async(unique, first)
            await client.deregister_async(unique, first)
            assert (await client.get_service_async(unique))["id"] == second
            await client.deregister_async(unique, second)
            with pytest.raises(ServiceNotFoundError):
                await client.get_service_async(unique)

    asyncio.run(asyncio.wait_for(lifecycle(), 30))


def test_a_dead_first_url_fails_over_to_the_live_second(server, unique):
    client = ManifestClient(f"{dead_url()},{server.url}")
    instance_id = client.register(unique, "1.0.0", {"REST": REST})
    assert client.get_service(unique)["id"] == instance_id
    assert client.endpoints.order()[0] == server.url
    client.deregister(unique, instance_id)


def test_no_live_url_raises_registry_unavailable():
    with pytest.raises(RegistryUnavailableError):
        ManifestClient([dead_url(), dead_url()], timeout=1).list_services()


def test_a_rejected_registration_is_a_manifest_error_not_a_failover(server, unique):
    client = ManifestClient([server.url, dead_url()])
    with pytest.raises(Exception) as caught:
        client.register(unique, "1.0.0", {"REST": "not a url"})
    assert caught.value.status_code == 422
    assert not isinstance(caught.value, RegistryUnavailableError)
    assert "REST" in str(caught.value)


def test_the_heartbeat_helper_registers_again_after_a_removal_and_leaves_on_exit(
        server, unique):
    client = ManifestClient(server.url)
    with client.keep_registered(unique, "1.0.0", {"REST": REST}) as hb:
        assert hb.interval == 1.0  # a third of the registry's heartbeat timeout (3 s)
        first = hb.instance_id
        assert client.get_service(unique)["id"] == first
        ManifestClient(server.url).deregister(unique, first)  # behind its back
        wait_for(lambda: hb.instance_id != first, timeout=10, what="a new registration")
        assert client.get_service(unique)["id"] == hb.instance_id
        assert hb.registrations == 2
    with pytest.raises(ServiceNotFoundError):
        client.get_service(unique)


def test_the_heartbeat_helper_keeps_the_instance_up_past_the_heartbeat_timeout(
        server, unique):
    client = ManifestClient(server.url)
    with client.keep_registered(unique, "1.0.0", {"REST": REST}) as hb:
        deadline = time.monotonic() + 4.5  # longer than the 3 s heartbeat timeout
        while time.monotonic() < deadline:
            assert client.get_service(unique)["status"] == "up"
            time.sleep(0.25)
        assert hb.beats >= 3 and hb.registrations == 1


def test_the_async_heartbeat_helper_registers_again_and_leaves_on_exit(server, unique):
    client = ManifestClient(server.url)

    async def main() -> None:
        async with client.keep_registered_async(unique, "1.0.0", {"REST": REST}) as hb:
            first = hb.instance_id
            await client.deregister_async(unique, first)
            deadline = time.monotonic() + 10
            while hb.instance_id == first and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert hb.instance_id != first
            assert (await client.get_service_async(unique))["id"] == hb.instance_id

    asyncio.run(asyncio.wait_for(main(), 30))
    with pytest.raises(ServiceNotFoundError):
        client.get_service(unique)


def test_sigterm_to_a_service_using_the_helper_deregisters_it(server, unique, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from chora_manifest_client import ManifestClient
        with ManifestClient({server.url!r}).keep_registered(
                {unique!r}, "1.0.0", {{"REST": {REST!r}}}) as hb:
            print(hb.instance_id, flush=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        instance_id = proc.stdout.readline().strip()
        client = ManifestClient(server.url)
        assert client.get_service(unique)["id"] == instance_id
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 143, proc.stderr.read()
        with pytest.raises(ServiceNotFoundError):
            client.get_service(unique)  # gone at once, not after the removal timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_watch_reports_a_registration_and_a_deregistration(server, unique):
    client = ManifestClient(server.url)
    client.list_services()
    since = client.last_index
    instance_id = client.register(unique, "1.0.0", {"REST": REST})
    client.deregister(unique, instance_id)
    seen = []
    for event in client.watch(since=since):
        if event.record is not None and event.record.get("name") == unique:
            seen.append((event.removed, event.record["id"]))
        if len(seen) == 2:
            break
    assert seen == [(False, instance_id), (True, instance_id)]


def test_the_cache_sees_a_registration_and_a_deregistration_within_a_second(server, unique):
    client = ManifestClient(server.url)
    with client.cache() as cache:
        revision_before = cache.revision
        instance_id = client.register(unique, "1.0.0", {"REST": REST}, {"tags": [unique]})
        assert cache.wait_for(lambda c: bool(c.list_services(tag=unique)), timeout=1.0)
        assert cache.get_service(unique)["id"] == instance_id
        client.deregister(unique, instance_id)
        assert cache.wait_for(lambda c: not c.list_services(tag=unique), timeout=1.0)
        assert cache.revision > revision_before
        with pytest.raises(ServiceNotFoundError):
            cache.get_instances(unique)


def test_the_cache_survives_a_registry_restart_without_ever_being_empty(
        etcd, tmp_path, unique):
    # A removal timeout longer than any restart: the instance must outlive it in etcd, so
    # an empty list could only come from the cache.
    own = RegistryProcess(etcd.endpoints, tmp_path, removal_timeout=60).start()
    client = ManifestClient(own.url)
    later = f"{unique}-later"
    sizes: list[int] = []  # how many instances of ``unique`` each read of the cache saw
    stop = threading.Event()

    def mine(cache, name: str = unique) -> list[dict]:
        return [r for r in cache.list_services() if r["name"] == name]

    try:
        with client.keep_registered(unique, "1.0.0", {"REST": REST}), \
                client.cache(max_backoff=0.2) as cache:
            assert cache.wait_for(lambda c: bool(mine(c)), timeout=5)

            def sample() -> None:
                deadline = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < deadline:
                    sizes.append(len(mine(cache)))
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            own.stop()
            assert cache.wait_for(lambda c: c.stale, timeout=5), "never noticed the stop"
            assert cache.get_service(unique)["name"] == unique  # the last known state
            own.start()
            assert cache.wait_for(lambda c: not c.stale, timeout=15), "never reconnected"
            instance_id = client.register(later, "1.0.0", {"REST": REST})
            assert cache.wait_for(lambda c: bool(mine(c, later)), timeout=1.0), \
                "a registration after the restart did not reach the cache within 1 s"
            stop.set()
            sampler.join(5)
            client.deregister(later, instance_id)
    finally:
        stop.set()
        own.stop()
    assert len(sizes) > 100, "the sampler barely ran"
    assert min(sizes) >= 1, f"the cache was empty in {sizes.count(0)} of {len(sizes)} reads"


def test_the_cache_follows_changes_through_the_second_url_when_the_first_dies(
        etcd, tmp_path, unique):
    first = RegistryProcess(etcd.endpoints, tmp_path).start()
    second = RegistryProcess(etcd.endpoints, tmp_path).start()
    client = ManifestClient([first.url, second.url])
    writer = ManifestClient(second.url)
    try:
        with client.cache(max_backoff=0.2) as cache:
            first.stop()
            instance_id = writer.register(unique, "1.0.0", {"REST": REST})
            assert cache.wait_for(lambda c: any(
                r["id"] == instance_id for r in c.list_services()), timeout=10)
            writer.deregister(unique, instance_id)
    finally:
        first.stop()
        second.stop()


def test_a_raw_request_carries_the_registry_index(server):
    answer = httpx.get(server.url + "/v1/services", timeout=5)
    assert int(answer.headers["X-Registry-Index"]) > 0
