"""ManifestClient against an in-memory registry: what each call sends, how answers and
errors come back, and when it fails over to the next URL (sync and async alike)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from chora_manifest_client import (
    CapabilityNotFoundError,
    ManifestClient,
    ManifestError,
    RegistryUnavailableError,
    ServiceNotFoundError,
)
from chora_manifest_client.endpoints import Endpoints, parse_urls
from tests.unit.test_client_fake_registry import Network

A, B = "127.0.0.1:8501", "127.0.0.1:8502"


def client_for(network: Network, *hosts: str, **kwargs) -> ManifestClient:
    urls = [f"http://{h}" for h in hosts] or [f"http://{A}"]
    return ManifestClient(urls, transport=network.transport(), **kwargs)


# -- URLs --------------------------------------------------------------------------------


def test_a_comma_separated_string_and_a_list_give_the_same_urls():
    assert parse_urls(" http://a:1/, http://b:2 ,") == ["http://a:1", "http://b:2"]
    assert parse_urls(["http://a:1", "http://b:2", "http://a:1"]) == ["http://a:1",
                                                                      "http://b:2"]


@pytest.mark.parametrize("bad", ["", "localhost:8500", "ftp://x", "http://"])
def test_a_url_that_is_not_http_is_refused_at_construction(bad):
    with pytest.raises(ValueError):
        ManifestClient(bad)


def test_the_url_that_answered_last_is_tried_first():
    endpoints = Endpoints("http://a:1,http://b:2,http://c:3")
    endpoints.answered("http://c:3")
    assert endpoints.order() == ["http://c:3", "http://a:1", "http://b:2"]


# -- the calls ---------------------------------------------------------------------------


def test_register_sends_the_seed_body_and_returns_the_id_the_registry_chose():
    network = Network()
    registry = network.at(A)
    client = client_for(network)
    instance_id = client.register("orders", "1.2.0", {"REST": "http://127.0.0.1:9000"},
                                  {"tags": ["core"]})
    sent = json.loads(registry.requests[-1].content)
    assert sent == {"name": "orders", "version": "1.2.0",
                    "interfaces": {"REST": "http://127.0.0.1:9000"},
                    "metadata": {"tags": ["core"]}}
    assert instance_id.startswith("orders-")
    assert client.last_index == registry.revision


def test_register_instance_reports_the_heartbeat_interval_of_the_answer():
    network = Network()
    network.at(A).heartbeat_interval = 7
    registration = client_for(network).register_instance("a", "1.0.0", {"CLI": "a"})
    assert registration.heartbeat_interval == 7.0
    assert registration.heartbeat_timeout == 30.0


def test_a_heartbeat_for_a_removed_instance_raises_service_not_found():
    network = Network()
    network.at(A)
    with pytest.raises(ServiceNotFoundError):
        client_for(network).heartbeat("a", "a-00000000")


def test_deregistering_an_instance_already_gone_succeeds():
    network = Network()
    network.at(A)
    client_for(network).deregister("a", "a-00000000")


def test_get_service_gives_one_record_or_a_list_and_get_instances_always_a_list():
    network = Network()
    registry = network.at(A)
    registry.add("solo")
    registry.add("pair")
    registry.add("pair")
    client = client_for(network)
    assert isinstance(client.get_service("solo"), dict)
    assert len(client.get_service("pair")) == 2
    assert [r["name"] for r in client.get_instances("solo")] == ["solo"]


def test_get_service_of_an_unknown_name_raises_service_not_found_with_the_detail():
    network = Network()
    network.at(A)
    with pytest.raises(ServiceNotFoundError, match="not found"):
        client_for(network).get_service("ghost")


def test_list_services_sends_only_the_filters_given():
    network = Network()
    registry = network.at(A)
    registry.add("a", tags=["core"])
    registry.add("b", tags=["edge"], dependencies=["a"])
    client = client_for(network)
    assert [r["name"] for r in client.list_services(tag="core")] == ["a"]
    assert dict(registry.requests[-1].url.params) == {"tag": "core"}
    assert [r["name"] for r in client.list_services(status="up", dependency="a")] == ["b"]


def test_an_unknown_capability_raises_capability_not_found():
    network = Network()
    network.at(A)
    with pytest.raises(CapabilityNotFoundError):
        client_for(network).get_capability("chora.nothing")


def test_a_rejected_registration_raises_manifest_error_with_the_registry_detail():
    network = Network()
    network.at(A)
    with pytest.raises(ManifestError, match="interfaces: required") as caught:
        client_for(network).register("a", "1.0.0", {})
    assert caught.value.status_code == 422
    assert not isinstance(caught.value, RegistryUnavailableError)


def test_a_validation_error_list_is_read_as_one_line():
    def fastapi_422(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": [
            {"loc": ["body", "version"], "msg": "Field required", "type": "missing"}]})

    network = Network()
    network.hosts[A] = fastapi_422
    with pytest.raises(ManifestError, match="version: Field required"):
        client_for(network).register("a", "", {"CLI": "a"})


def test_the_auth_token_is_sent_as_a_bearer_header():
    network = Network()
    registry = network.at(A)
    client_for(network, auth_token="s3cret").list_services()
    assert registry.requests[-1].headers["Authorization"] == "Bearer s3cret"


# -- failover -----------------------------------------------------------------------------


def test_a_dead_first_url_fails_over_to_the_second_and_is_skipped_afterwards():
    network = Network()
    network.at(B).add("a")
    client = client_for(network, A, B)
    assert client.get_service("a")["name"] == "a"
    assert client.get_service("a")["name"] == "a"
    assert network.attempts == [A, B, B]


def test_a_5xx_fails_over_to_the_next_url():
    network = Network()
    network.at(A).fail_with = 503
    network.at(B).add("a")
    assert client_for(network, A, B).get_service("a")["name"] == "a"
    assert network.attempts == [A, B]


def test_a_4xx_does_not_fail_over():
    network = Network()
    network.at(A)
    network.at(B).add("a")
    with pytest.raises(ServiceNotFoundError):
        client_for(network, A, B).get_service("a")
    assert network.attempts == [A]


def test_when_no_url_answers_the_error_lists_every_attempt():
    network = Network()
    network.at(B).fail_with = 500
    with pytest.raises(RegistryUnavailableError) as caught:
        client_for(network, A, B).list_services()
    assert [url for url, _ in caught.value.attempts] == [f"http://{A}", f"http://{B}"]
    assert "Connection refused" in str(caught.value) and "HTTP 500" in str(caught.value)


def test_retries_go_round_all_urls_again():
    network = Network()
    with pytest.raises(RegistryUnavailableError):
        client_for(network, A, B, retries=1).list_services()
    assert network.attempts == [A, B, A, B]


def test_a_registration_whose_answer_was_lost_is_not_sent_to_another_url():
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    network = Network()
    network.hosts[A] = lost
    registry = network.at(B)
    with pytest.raises(RegistryUnavailableError):
        client_for(network, A, B).register("a", "1.0.0", {"CLI": "a"})
    assert network.attempts == [A]
    assert registry.services == {}


def test_a_read_whose_answer_was_lost_is_sent_to_another_url():
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    network = Network()
    network.hosts[A] = lost
    network.at(B).add("a")
    assert client_for(network, A, B).list_services()[0]["name"] == "a"


# -- async twins ------------------------------------------------------------------------


def test_the_async_calls_do_what_the_sync_ones_do_including_failover():
    network = Network()
    network.at(B)
    client = client_for(network, A, B)

    async def lifecycle() -> list[str]:
        instance_id = await client.register_async("a", "1.0.0", {"CLI": "a"},
                                                  {"tags": ["core"]})
        await client.heartbeat_async("a", instance_id)
        seen = [r["id"] for r in await client.list_services_async(tag="core")]
        assert (await client.get_service_async("a"))["id"] == instance_id
        await client.deregister_async("a", instance_id)
        with pytest.raises(ServiceNotFoundError):
            await client.heartbeat_async("a", instance_id)
        with pytest.raises(ServiceNotFoundError):
            await client.get_instances_async("a")
        await client.aclose()
        return [instance_id, *seen]

    instance_id, *seen = asyncio.run(lifecycle())
    assert seen == [instance_id]
    assert network.attempts[0] == A and A not in network.attempts[1:]


def test_the_async_client_works_across_two_event_loops():
    network = Network()
    network.at(A)
    client = client_for(network)
    assert asyncio.run(client.health_async())["status"] == "healthy"
    assert asyncio.run(client.health_async())["status"] == "healthy"
