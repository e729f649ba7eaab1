"""The registry's security from the outside, against real etcd: HTTPS end to end through
the client library (a CA made in the test), tokens through the client, its helpers and
the ``manifest`` CLI (``MANIFEST_TOKEN``), what a refusal looks like to a caller, the
start-up warning of an open registry, and the logs of refusals (once a minute, never a
token). The 401 / 403 table itself is in ``test_registry_auth.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chora_manifest_client import (
    ManifestAuthError,
    ManifestClient,
    RegistryUnavailableError,
    ServiceNotFoundError,
)
from services.registry import tokens
from tests.conftest import wait_for
from tests.integration.registry_server import serving
from tests.integration.test_client_harness import REPO, RegistryProcess
from tests.integration.tls import make_pki

MANIFEST = Path(sys.executable).with_name("manifest")
REST = {"REST": "http://127.0.0.1:9000"}


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture
def secrets_file(tmp_path):
    """Tokens: ``svc`` may read and register svc*, ``other`` may only register other*."""
    minted = {"svc": tokens.mint(), "other": tokens.mint()}
    path = tmp_path / "tokens.yaml"
    path.write_text(tokens.entry_line("svc", minted["svc"], ["read", "register:svc*"]) + "\n"
                    + tokens.entry_line("other", minted["other"], ["register:other*"]) + "\n")
    return path, minted


def test_the_client_registers_beats_watches_and_leaves_over_https_with_a_token(
        store, etcd, pki, secrets_file):
    path, minted = secrets_file
    with serving(etcd.endpoints, tokens=path, require_read_token=True, tls_cert=pki.cert,
                 tls_key=pki.key, cacert=pki.ca) as reg:
        assert reg.url.startswith("https://")
        client = ManifestClient(reg.url, auth_token=minted["svc"], cacert=pki.ca)
        with client.cache() as cache:
            iid = client.register("svc-api", "1.0.0", REST, {"tags": ["secure"]})
            assert client.get_service("svc-api")["id"] == iid
            assert [r["id"] for r in client.list_services(tag="secure")] == [iid]
            client.heartbeat("svc-api", iid)
            assert cache.wait_for(lambda c: len(c.list_services(tag="secure")) == 1, 10)
            events = client.watch(since=client.last_index)
            client.deregister("svc-api", iid)
            assert next(events).removed
            events.close()
            with pytest.raises(ServiceNotFoundError):
                client.get_service("svc-api")
            with client.keep_registered("svc-helper", "1.0.0", REST) as hb:
                assert client.get_service("svc-helper")["id"] == hb.instance_id
            with pytest.raises(ServiceNotFoundError):
                client.get_service("svc-helper")
        client.close()

        async def twin() -> None:
            async with ManifestClient(reg.url, auth_token=minted["svc"],
                                      cacert=str(pki.ca)) as aclient:
                aid = await aclient.register_async("svc-async", "1.0.0", REST)
                assert (await aclient.get_service_async("svc-async"))["id"] == aid
                await aclient.deregister_async("svc-async", aid)

        asyncio.run(asyncio.wait_for(twin(), 30))


def test_a_client_that_does_not_trust_the_registrys_ca_refuses_to_talk_to_it(
        store, etcd, pki, tmp_path):
    stranger = make_pki(tmp_path / "stranger", "stranger")
    with serving(etcd.endpoints, tls_cert=pki.cert, tls_key=pki.key, cacert=pki.ca) as reg:
        for client in (ManifestClient(reg.url, cacert=stranger.ca),
                       ManifestClient(reg.url)):  # the system's trust store
            with pytest.raises(RegistryUnavailableError) as caught:
                client.health()
            assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
            assert "MANIFEST_CACERT" in str(caught.value)
        with pytest.raises(RegistryUnavailableError):
            ManifestClient(reg.url.replace("https", "http")).health()  # no plain HTTP
        assert ManifestClient(reg.url, cacert=pki.ca).health()["status"] == "healthy"
    with pytest.raises(ValueError, match=r"cacert .*no such file"):
        ManifestClient("https://127.0.0.1:1", cacert=tmp_path / "missing.pem")


def test_refusals_reach_callers_as_manifest_auth_errors_carrying_the_registrys_reason(
        store, etcd, secrets_file):
    path, minted = secrets_file
    with serving(etcd.endpoints, tokens=path, require_read_token=True) as reg:
        anonymous = ManifestClient(reg.url)
        with pytest.raises(ManifestAuthError) as caught:
            anonymous.register("svc-x", "1.0.0", REST)
        assert caught.value.status_code == 401
        assert "Authorization: Bearer" in str(caught.value)
        other = ManifestClient(reg.url, auth_token=minted["other"])
        with pytest.raises(ManifestAuthError) as caught:
            other.register("svc-x", "1.0.0", REST)
        assert caught.value.status_code == 403 and "register:svc-x" in str(caught.value)
        with pytest.raises(ManifestAuthError, match="scope read or admin"):
            other.get_service("svc-x")
        with pytest.raises(ManifestAuthError, match="403"):
            next(other.watch())
        with pytest.raises(ManifestAuthError, match="401"):
            anonymous.cache().start(timeout=20)  # at once, not after the timeout
        with pytest.raises(ManifestAuthError), other.keep_registered("svc-x", "1", REST):
            pass  # a service must not start believing it is registered


def manifest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MANIFEST_")}
    environ.pop("COLUMNS", None)
    return subprocess.run([str(MANIFEST), *args], cwd=REPO, env={**environ, **env},
                          capture_output=True, text=True, timeout=30)


def test_the_cli_reads_with_manifest_token_over_https_and_says_a_refusal_in_one_line(
        store, etcd, pki, secrets_file, tmp_path):
    path, minted = secrets_file
    with serving(etcd.endpoints, tokens=path, require_read_token=True, tls_cert=pki.cert,
                 tls_key=pki.key, cacert=pki.ca) as reg:
        ManifestClient(reg.url, auth_token=minted["svc"], cacert=pki.ca).register(
            "svc-cli", "1.0.0", REST)
        base = {"MANIFEST_URL": reg.url, "MANIFEST_CACERT": str(pki.ca)}
        done = manifest("get", "svc-cli", "-o", "json", **base, MANIFEST_TOKEN=minted["svc"])
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["name"] == "svc-cli"
        alias = manifest("list", **base, MANIFEST_AUTH_TOKEN=minted["svc"])  # the old name
        assert alias.returncode == 0 and "svc-cli" in alias.stdout, alias.stderr
        flag = manifest("--token", minted["svc"], "--cacert", str(pki.ca), "list",
                        MANIFEST_URL=reg.url)
        assert flag.returncode == 0, flag.stderr

        anonymous = manifest("list", **base)
        assert anonymous.returncode == 1 and anonymous.stdout == ""
        assert len(anonymous.stderr.strip().splitlines()) == 1, anonymous.stderr
        assert "HTTP 401" in anonymous.stderr and "MANIFEST_TOKEN" in anonymous.stderr
        scoped = manifest("list", **base, MANIFEST_TOKEN=minted["other"])
        assert scoped.returncode == 1 and "HTTP 403" in scoped.stderr
        assert "scope read or admin" in scoped.stderr
        assert minted["other"] not in scoped.stderr

        untrusted = manifest("list", MANIFEST_URL=reg.url, MANIFEST_TOKEN=minted["svc"])
        assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        missing = manifest("list", MANIFEST_URL=reg.url,
                           MANIFEST_CACERT=str(tmp_path / "nope.pem"))
        assert missing.returncode == 2
        assert missing.stderr.startswith("error: --cacert / MANIFEST_CACERT: "), missing.stderr


def test_a_renewed_certificate_is_served_without_a_restart(store, etcd, pki, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    renewed = make_pki(tmp_path / "renewed", "renewed")
    with serving(etcd.endpoints, tls_cert=cert, tls_key=key, cacert=pki.ca,
                 token_check=0.2) as reg:
        assert ManifestClient(reg.url, cacert=pki.ca).health()["status"] == "healthy"
        shutil.copy(renewed.key, key)  # a moment of a mismatched pair: refused, kept
        shutil.copy(renewed.cert, cert)

        def renewed_is_served() -> bool:
            with ManifestClient(reg.url, cacert=renewed.ca) as client:
                return client.health()["status"] == "healthy"

        def old_is_refused() -> bool:
            try:
                ManifestClient(reg.url, cacert=pki.ca).health()
            except RegistryUnavailableError:
                return True
            return False

        # The old server worker listens beside the new one for half a second: then every
        # new connection gets the renewed certificate, none the old.
        wait_for(lambda: all(renewed_is_served() for _ in range(10)), timeout=10,
                 what="the renewed certificate, on every connection")
        wait_for(lambda: all(old_is_refused() for _ in range(10)), timeout=5,
                 what="the old certificate, on no connection")


def logged(process: RegistryProcess) -> list[dict]:
    return [json.loads(line) for line in process.logs().splitlines()
            if line.startswith("{")]


def test_a_registry_without_tokens_warns_once_at_start_that_it_is_open(etcd, tmp_path):
    process = RegistryProcess(etcd.endpoints, tmp_path, extra=["--log-json"]).start()
    try:
        ManifestClient(process.url).health()
    finally:
        process.stop()
    lines = logged(process)
    assert [e["event"] for e in lines].count(
        "registry is open: no --tokens, so anyone who can reach it can register, heartbeat "
        "and deregister any service (README: Security)") == 1
    assert [e["level"] for e in lines if "is open" in e["event"]] == ["warning"]


def test_refusals_are_logged_once_a_minute_per_subject_and_reason_and_never_with_a_token(
        etcd, tmp_path, secrets_file):
    path, minted = secrets_file
    process = RegistryProcess(etcd.endpoints, tmp_path,
                              extra=["--tokens", str(path), "--log-json"]).start()
    wrong = tokens.mint()
    try:
        for _ in range(5):
            for token in (None, wrong, minted["other"]):
                with pytest.raises(ManifestAuthError):
                    ManifestClient(process.url, auth_token=token).register("svc-y", "1", REST)
        ManifestClient(process.url, auth_token=minted["svc"]).register("svc-y", "1", REST)
    finally:
        process.stop()
    text = process.logs()
    for secret in (*minted.values(), wrong):
        assert secret not in text, "a token reached the log"
    refused = [(e["subject"], e["reason"]) for e in logged(process)
               if e["event"] == "request refused"]
    assert sorted(refused) == [("-", "missing"), ("-", "unknown"), ("other", "scope")]
    assert not any("is open" in e["event"] for e in logged(process))
