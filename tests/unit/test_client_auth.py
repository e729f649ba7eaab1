"""The client's credentials against an in-memory registry: the token on every request
(calls, watch, cache), 401 / 403 as ``ManifestAuthError`` without failing over, the
environment (``MANIFEST_TOKEN``, its older name, ``MANIFEST_CACERT``) and a CA bundle
checked at construction."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from chora_manifest_client import ManifestAuthError, ManifestClient, ManifestError
from chora_manifest_client.credentials import bearer, token_from_env
from tests.unit.test_client_fake_registry import FakeRegistry, Network

A, B = "127.0.0.1:8501", "127.0.0.1:8502"
REST = {"REST": "http://127.0.0.1:9000"}


class Guarded(FakeRegistry):
    """A fake registry that wants ``Bearer good`` and lets it write ``svc*`` only."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        said = request.headers.get("Authorization")
        if said is None:
            self.requests.append(request)
            return httpx.Response(401, json={"detail": "authentication required: send "
                                                       "'Authorization: Bearer <token>'"},
                                  headers={"WWW-Authenticate": "Bearer"})
        if said != "Bearer good":
            self.requests.append(request)
            return httpx.Response(401, json={"detail": "invalid token: unknown or revoked"})
        if request.method == "POST" and json.loads(request.content)["name"] == "gateway":
            self.requests.append(request)
            return httpx.Response(403, json={"detail": "token of 'svc' may not register "
                                                       "'gateway': needs scope register:gateway"})
        return super().handle(request)


@pytest.fixture
def network() -> Network:
    net = Network()
    net.at(A, Guarded())
    net.at(B, Guarded())
    return net


def client_for(network: Network, token: str | None, *hosts: str) -> ManifestClient:
    urls = [f"http://{h}" for h in hosts or (A,)]
    return ManifestClient(urls, auth_token=token, transport=network.transport())


def test_the_token_goes_with_every_call_the_watch_and_the_cache(network):
    registry = network.hosts[A]
    registry.live = False
    client = client_for(network, "good")
    iid = client.register("svc", "1.0.0", REST)
    client.heartbeat("svc", iid)
    client.get_service("svc")
    next(client.watch(reconnect=False))
    with client.cache() as cache:
        assert len(cache) == 1
    asyncio.run(client.health_async())
    assert {r.headers.get("Authorization") for r in registry.requests} == {"Bearer good"}
    assert len(registry.requests) >= 6


@pytest.mark.parametrize(("token", "status", "said"), [
    (None, 401, "authentication required"),
    ("stale", 401, "unknown or revoked"),
])
def test_a_401_is_a_manifest_auth_error_with_the_registrys_reason_and_no_failover(
        network, token, status, said):
    client = client_for(network, token, A, B)
    with pytest.raises(ManifestAuthError) as caught:
        client.register("svc", "1.0.0", REST)
    assert caught.value.status_code == status and said in str(caught.value)
    assert isinstance(caught.value, ManifestError)
    assert network.attempts == [A]  # another replica would say the same
    with pytest.raises(ManifestAuthError):
        client.get_service("svc")
    with pytest.raises(ManifestAuthError):
        asyncio.run(client.list_services_async())
    with pytest.raises(ManifestAuthError, match="watch"):
        next(client.watch())


def test_a_403_names_the_scope_needed(network):
    with pytest.raises(ManifestAuthError) as caught:
        client_for(network, "good").register("gateway", "1.0.0", REST)
    assert caught.value.status_code == 403
    assert str(caught.value) == ("register 'gateway': HTTP 403: token of 'svc' may not "
                                 "register 'gateway': needs scope register:gateway")


def test_the_environment_gives_the_token_under_both_names_and_the_new_one_wins(monkeypatch):
    for name in ("MANIFEST_TOKEN", "MANIFEST_AUTH_TOKEN", "MANIFEST_CACERT", "MANIFEST_URL"):
        monkeypatch.delenv(name, raising=False)
    assert ManifestClient.from_env().headers.get("Authorization") is None
    monkeypatch.setenv("MANIFEST_AUTH_TOKEN", "old-name")
    assert ManifestClient.from_env().headers["Authorization"] == "Bearer old-name"
    monkeypatch.setenv("MANIFEST_TOKEN", "new-name\n")  # read from a file, newline and all
    assert ManifestClient.from_env().headers["Authorization"] == "Bearer new-name"
    assert ManifestClient.from_env(auth_token="given").headers["Authorization"] == \
        "Bearer given"
    assert token_from_env({"MANIFEST_TOKEN": " ", "MANIFEST_AUTH_TOKEN": "b"}) == "b"
    monkeypatch.setenv("MANIFEST_CACERT", "/nonexistent/ca.pem")
    with pytest.raises(ValueError, match=r"cacert /nonexistent/ca\.pem: no such file"):
        ManifestClient.from_env()


def test_a_token_with_spaces_or_a_ca_bundle_that_is_not_pem_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="auth_token"):
        bearer("two words")
    assert bearer("") == {} and bearer(None) == {}
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match="not a PEM CA bundle"):
        ManifestClient("https://127.0.0.1:1", cacert=garbage)
