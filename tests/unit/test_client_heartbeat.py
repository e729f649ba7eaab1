"""The heartbeat helpers against an in-memory registry: register, beat, register again
after a removal, log failures, deregister on exit and on SIGTERM, never resurrect."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from chora_manifest_client import ManifestClient
from chora_manifest_client.shutdown import SigtermHook
from tests.conftest import wait_for
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


def beats_of(network: Network) -> int:
    registry = network.hosts[A]
    return sum(1 for r in registry.requests if r.method == "PUT")


def test_the_helper_registers_on_entry_beats_and_deregisters_on_exit(network, client):
    registry = network.hosts[A]
    with client.keep_registered("svc", "1.0.0", {"REST": "http://127.0.0.1:9000"},
                                interval=0.02) as hb:
        assert list(registry.services) == [("svc", hb.instance_id)]
        wait_for(lambda: hb.beats >= 3, timeout=5, what="three heartbeats")
    assert registry.services == {}
    assert registry.requests[-1].method == "DELETE"


def test_the_interval_comes_from_the_registry_answer(network, client):
    network.hosts[A].heartbeat_interval = 4
    with client.keep_registered("svc", "1.0.0", {"CLI": "svc"}) as hb:
        assert hb.interval == 4.0


def test_after_a_removal_the_helper_registers_again_under_a_new_id(network, client, caplog):
    registry = network.hosts[A]
    with client.keep_registered("svc", "1.0.0", {"CLI": "svc"}, interval=0.02) as hb:
        first = hb.instance_id
        registry.remove("svc", first)  # behind the helper's back
        wait_for(lambda: hb.instance_id != first and hb.registrations == 2, timeout=5,
                 what="a second registration")
        assert list(registry.services) == [("svc", hb.instance_id)]
    assert registry.services == {}
    assert any("registered again" in r.getMessage() for r in caplog.records)


def test_failures_are_logged_and_turn_to_errors_from_the_third(network, client, caplog):
    caplog.set_level(logging.WARNING, "chora_manifest_client.heartbeat")
    registry = network.hosts[A]
    with client.keep_registered("svc", "1.0.0", {"CLI": "svc"}, interval=0.03) as hb:
        registry.fail_with = 503
        wait_for(lambda: hb.consecutive_failures >= 3, timeout=5, what="three failures")
        registry.fail_with = None
        wait_for(lambda: hb.consecutive_failures == 0, timeout=5, what="a success")
    levels = [r.levelno for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert levels[:3] == [logging.WARNING, logging.WARNING, logging.ERROR]


def test_entering_fails_when_the_registry_cannot_be_reached():
    client = ManifestClient(f"http://{A}", transport=Network().transport())
    with pytest.raises(Exception, match="no registry answered"):
        client.keep_registered("svc", "1.0.0", {"CLI": "svc"}).start()


def test_no_beat_or_registration_follows_the_deregistration(network, client):
    registry = network.hosts[A]
    hb = client.keep_registered("svc", "1.0.0", {"CLI": "svc"}, interval=0.01).start()
    wait_for(lambda: hb.beats >= 2, timeout=5, what="beats")
    hb.stop()
    after = len(registry.requests)
    assert registry.requests[-1].method == "DELETE"
    assert hb.beat() is False
    assert len(registry.requests) == after and registry.services == {}


def test_sigterm_deregisters_then_exits_with_143(network, client):
    registry = network.hosts[A]
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        hb = client.keep_registered("svc", "1.0.0", {"CLI": "svc"}, interval=5).start()
        with pytest.raises(SystemExit) as exited:
            signal.raise_signal(signal.SIGTERM)
        assert exited.value.code == 143
        assert registry.services == {}
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        hb.stop()
        assert sum(1 for r in registry.requests if r.method == "DELETE") == 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_chains_to_the_handler_installed_before():
    called = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: called.append("app"))
    try:
        hook = SigtermHook(lambda: called.append("hook"))
        assert hook.install()
        signal.raise_signal(signal.SIGTERM)
        assert called == ["hook", "app"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_async_helper_does_the_same_as_a_task(network, client):
    registry = network.hosts[A]

    async def main() -> tuple[str, str]:
        async with client.keep_registered_async("svc", "1.0.0", {"CLI": "svc"},
                                                interval=0.02) as hb:
            first = hb.instance_id
            while hb.beats < 2:
                await asyncio.sleep(0.01)
            registry.remove("svc", first)
            for _ in range(500):
                if hb.registrations == 2:
                    break
                await asyncio.sleep(0.01)
            assert list(registry.services) == [("svc", hb.instance_id)]
            return first, hb.instance_id

    first, second = asyncio.run(asyncio.wait_for(main(), 10))
    assert first != second
    assert registry.services == {}
