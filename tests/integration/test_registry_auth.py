"""The registry API with a token file, against real etcd: who may write which name (the
401 / 403 / 201 table), reads open or closed (``--require-read-token``, the hot GET and
the change stream included), revocation without a restart, a broken edit that changes
nothing, and what the refusals leave in /metrics and the OpenAPI document.

HTTPS, the client library and the CLI with tokens: ``test_client_security.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.registry import tokens
from tests.conftest import wait_for
from tests.integration.registry_server import EventStream, Registry, serving
from tests.integration.test_client_harness import REPO, RegistryProcess

REST = {"REST": "http://127.0.0.1:9000"}


@dataclass
class Tokens:
    path: Path
    reader: str
    orchestrator: str  # register:orch*
    admin: str
    lines: dict[str, str]

    def rewrite(self, *keep: str) -> None:
        """The file with only the entries of the subjects in ``keep``."""
        self.path.write_text("".join(self.lines[k] + "\n" for k in keep))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_file(tmp_path) -> Tokens:
    minted = {s: tokens.mint() for s in ("reader", "orchestrator", "admin")}
    scopes = {"reader": ["read"], "orchestrator": ["register:orch*"], "admin": ["admin"]}
    lines = {s: tokens.entry_line(s, minted[s], scopes[s]) for s in minted}
    found = Tokens(tmp_path / "tokens.yaml", minted["reader"], minted["orchestrator"],
                   minted["admin"], lines)
    found.rewrite("reader", "orchestrator", "admin")
    return found


def register(reg: Registry, name: str, headers: dict[str, str]) -> httpx.Response:
    return reg.http.post("/v1/services", json={"name": name, "version": "1.0.0",
                                               "interfaces": REST}, headers=headers)


def metric(reg: Registry, name: str, labels: str = "") -> float:
    text = reg.http.get("/metrics").text
    found = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_writes_need_a_token_whose_scope_covers_the_name_the_401_403_201_table(
        store, etcd, token_file):
    t = token_file
    with serving(etcd.endpoints, tokens=t.path) as reg:
        o1 = register(reg, "orchestrator", bearer(t.admin)).json()["id"]
        g1 = register(reg, "gateway", bearer(t.admin)).json()["id"]
        none: dict[str, str] = {}
        unknown = bearer(tokens.mint())
        rows = [
            # (who, headers, method, name, instance id, expected status)
            ("nobody", none, "POST", "orchestrator", None, 401),
            ("an unknown token", unknown, "POST", "orchestrator", None, 401),
            ("a Basic header", {"Authorization": "Basic dXNlcjpwdw=="}, "POST",
             "orchestrator", None, 401),
            ("the reader", bearer(t.reader), "POST", "orchestrator", None, 403),
            ("register:orch*", bearer(t.orchestrator), "POST", "orchestrator", None, 201),
            ("register:orch*", bearer(t.orchestrator), "POST", "orchestrator-2", None, 201),
            ("register:orch*", bearer(t.orchestrator), "POST", "gateway", None, 403),
            ("register:orch*", bearer(t.orchestrator), "PUT", "gateway", g1, 403),
            ("register:orch*", bearer(t.orchestrator), "DELETE", "gateway", g1, 403),
            ("register:orch*", bearer(t.orchestrator), "PUT", "orchestrator", o1, 204),
            ("nobody", none, "PUT", "orchestrator", o1, 401),
            ("nobody", none, "DELETE", "orchestrator", o1, 401),
            ("the reader", bearer(t.reader), "PUT", "orchestrator", o1, 403),
            ("the reader", bearer(t.reader), "DELETE", "orchestrator", o1, 403),
            ("admin", bearer(t.admin), "POST", "gateway", None, 201),
            ("admin", bearer(t.admin), "PUT", "gateway", g1, 204),
            ("admin", bearer(t.admin), "DELETE", "gateway", g1, 204),
            ("register:orch*", bearer(t.orchestrator), "DELETE", "orchestrator", o1, 204),
        ]
        for who, headers, method, name, iid, expected in rows:
            before = store.revision()
            if method == "POST":
                r = register(reg, name, headers)
            else:
                path = f"/v1/services/{name}/{iid}" + ("/heartbeat" if method == "PUT" else "")
                r = reg.http.request(method, path, headers=headers)
            row = f"{who} {method} {name}: {r.status_code} {r.text}"
            assert r.status_code == expected, row
            assert "X-Registry-Index" in r.headers, row
            if expected in (401, 403):
                assert store.revision() == before, f"a refused write reached etcd: {row}"
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), row
                assert isinstance(r.json()["detail"], str), row
            if expected == 403:
                assert f"register:{name}" in r.json()["detail"], row
                assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"], row
        # Reads stay open: no token needed, and a bad one is not even looked at.
        for headers in ({}, unknown):
            assert reg.http.get("/v1/services/orchestrator-2", headers=headers
                                ).status_code == 200
            assert reg.http.get("/v1/services", headers=headers).status_code == 200
            assert reg.http.get("/v1/capabilities", headers=headers).status_code == 200
        stream = EventStream(reg.url)
        assert stream.status == 200
        stream.close()
        assert metric(reg, "chora_registry_auth_refusals_total", '{reason="missing"}') == 3
        assert metric(reg, "chora_registry_auth_refusals_total", '{reason="unknown"}') == 1
        assert metric(reg, "chora_registry_auth_refusals_total", '{reason="malformed"}') == 1
        assert metric(reg, "chora_registry_auth_refusals_total", '{reason="scope"}') == 6


def test_the_details_say_which_token_and_which_scope_are_needed(store, etcd, token_file):
    t = token_file
    with serving(etcd.endpoints, tokens=t.path) as reg:
        r = register(reg, "gateway", {})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == \
            'Bearer realm="chora-registry"'
        assert "Authorization: Bearer <token>" in r.json()["detail"]
        r = register(reg, "gateway", bearer("chora_not-a-real-one"))
        assert "unknown or revoked" in r.json()["detail"]
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        r = register(reg, "gateway", bearer(t.orchestrator))
        assert r.json()["detail"] == (
            "token of 'orchestrator' (scopes: register:orch*) may not register 'gateway': "
            "needs scope register:<glob matching 'gateway'> (e.g. register:gateway) or admin")
        # Bad input from someone allowed to write is still a 422 naming the field.
        r = reg.http.post("/v1/services", json={"name": "orch", "version": "1"},
                          headers=bearer(t.orchestrator))
        assert r.status_code == 422 and r.json()["detail"].startswith("interfaces")


def test_with_require_read_token_every_read_of_data_needs_read_or_admin(
        store, etcd, token_file):
    t = token_file
    with serving(etcd.endpoints, tokens=t.path, require_read_token=True) as reg:
        register(reg, "orchestrator", bearer(t.orchestrator))
        reads = ["/v1/services/orchestrator", "/v1/services", "/v1/capabilities",
                 "/v1/capabilities/chora.devex.registry"]
        for path in reads:
            for headers, code in (({}, 401), (bearer(tokens.mint()), 401),
                                  ({"Authorization": "Bearer"}, 401),
                                  (bearer(t.orchestrator), 403)):
                r = reg.http.get(path, headers=headers)
                assert r.status_code == code, (path, headers, r.text)
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), path
                assert "X-Registry-Index" in r.headers, path
            assert "scope read or admin" in reg.http.get(path).json()["detail"]
            assert reg.http.get(path, headers=bearer(t.reader)).status_code in (200, 404)
            assert reg.http.get(path, headers=bearer(t.admin)).status_code in (200, 404)
        hot = reg.http.get("/v1/services/orchestrator", headers=bearer(t.reader))
        assert hot.status_code == 200 and hot.json()["name"] == "orchestrator"
        assert reg.http.head("/v1/services/orchestrator").status_code == 401
        # The change stream: refused without a token, open with one.
        assert reg.http.get("/v1/watch").status_code == 401
        stream = EventStream(reg.url, headers=bearer(t.reader))
        assert stream.status == 200
        register(reg, "orchestrator", bearer(t.admin))
        assert stream.take_until(lambda e: e.event == "registered").pop().data[
            "name"] == "orchestrator"
        stream.close()
        # Probes, Prometheus and the documents stay open.
        for path in ("/v1/health", "/metrics", "/openapi.json"):
            assert reg.http.get(path).status_code == 200, path
        text = reg.http.get("/metrics").text
        assert 'chora_registry_requests_total{code="401",method="GET",' \
               'route="/v1/services/{name}"}' in text


def test_a_token_removed_from_the_file_stops_working_without_a_restart(
        store, etcd, token_file):
    t = token_file
    with serving(etcd.endpoints, tokens=t.path, token_check=0.2) as reg:
        assert register(reg, "orchestrator", bearer(t.orchestrator)).status_code == 201
        t.rewrite("reader", "admin")
        wait_for(lambda: register(reg, "orchestrator", bearer(t.orchestrator)
                                  ).status_code == 401, timeout=10,
                 what="the revoked token to be refused")
        assert register(reg, "orchestrator", bearer(t.admin)).status_code == 201
        assert metric(reg, "chora_registry_tokens") == 2
        # And a token added is usable as soon as the file says so.
        t.rewrite("reader", "admin", "orchestrator")
        wait_for(lambda: register(reg, "orchestrator", bearer(t.orchestrator)
                                  ).status_code == 201, timeout=10,
                 what="the re-added token to be accepted")


def test_a_broken_edit_of_the_token_file_keeps_the_previous_tokens_in_force(
        store, etcd, token_file):
    t = token_file
    with serving(etcd.endpoints, tokens=t.path, token_check=0.2) as reg:
        t.path.write_text(t.lines["admin"] + "\n- {subject: half-typed, sha256: 12\n")
        wait_for(lambda: metric(reg, "chora_registry_token_reloads_total",
                                '{result="error"}') >= 1, timeout=10,
                 what="the broken edit to be noticed")
        assert register(reg, "orchestrator", bearer(t.orchestrator)).status_code == 201
        assert metric(reg, "chora_registry_tokens") == 3
        t.path.unlink()
        wait_for(lambda: metric(reg, "chora_registry_token_reloads_total",
                                '{result="error"}') >= 2, timeout=10,
                 what="the missing file to be noticed")
        assert register(reg, "orchestrator", bearer(t.orchestrator)).status_code == 201
        t.rewrite("admin")
        wait_for(lambda: metric(reg, "chora_registry_tokens") == 1, timeout=10,
                 what="the repaired file to be taken into use")
        assert register(reg, "orchestrator", bearer(t.orchestrator)).status_code == 401


def test_the_openapi_document_declares_the_bearer_scheme_on_guarded_operations(
        store, etcd, token_file):
    with serving(etcd.endpoints, tokens=token_file.path) as reg:
        spec = reg.http.get("/openapi.json").json()
        scheme = spec["components"]["securitySchemes"]["bearerAuth"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        paths = spec["paths"]
        for path, method in (("/v1/services", "post"),
                             ("/v1/services/{name}/{id}/heartbeat", "put"),
                             ("/v1/services/{name}/{id}", "delete")):
            assert paths[path][method]["security"] == [{"bearerAuth": []}], path
            assert {"401", "403"} <= set(paths[path][method]["responses"]), path
        assert "security" not in paths["/v1/services"]["get"]  # reads are open here
        assert "security" not in paths["/v1/health"]["get"]


def test_a_token_minted_into_the_file_registers_its_names_and_nothing_else(
        store, etcd, tmp_path):
    path = tmp_path / "tokens.yaml"
    minted = subprocess.run(
        [sys.executable, "-m", "services.registry", "token", "--subject", "orchestrator",
         "--scope", "register:orchestrator*", "--file", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    with serving(etcd.endpoints, tokens=path) as reg:
        assert register(reg, "orchestrator", bearer(minted)).status_code == 201
        assert register(reg, "orchestrator-eu", bearer(minted)).status_code == 201
        assert register(reg, "gateway", bearer(minted)).status_code == 403


def test_sighup_reloads_the_token_file_even_when_its_stat_did_not_change(
        etcd, tmp_path, token_file):
    t = token_file
    process = RegistryProcess(etcd.endpoints, tmp_path,
                              extra=["--tokens", str(t.path)]).start()
    try:
        def status(token: str) -> int:
            return httpx.post(process.url + "/v1/services", headers=bearer(token), timeout=5,
                              json={"name": "orchestrator", "version": "1",
                                    "interfaces": REST}).status_code

        assert status(t.orchestrator) == 201
        # Replace the orchestrator's hash in place and put the old mtime back: only a
        # SIGHUP can tell the registry (same size, inode and mtime).
        before = t.path.stat()
        text = t.path.read_text()
        old = tokens.digest(t.orchestrator)
        with open(t.path, "r+") as f:
            f.write(text.replace(old, tokens.digest(tokens.mint())))
        os.utime(t.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert t.path.stat().st_size == before.st_size
        # Unnoticed for longer than the file check period (2 s)...
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert status(t.orchestrator) == 201
            time.sleep(0.2)
        process.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: status(t.orchestrator) == 401, timeout=10,
                 what="the SIGHUP reload")
        assert status(t.admin) == 201
    finally:
        process.stop()
