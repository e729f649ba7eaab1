"""The registry service over HTTP against real etcd: the seed's quality gates (lifecycle,
expiry, restart), read-your-writes, the index, capabilities, and bad input.

Short timeouts come from flags (``--heartbeat-timeout``/``--removal-timeout`` as
settings); every wait polls with a deadline. The change stream has its own file
(``test_registry_watch.py``), etcd faults too (``test_registry_faults.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from services.core import keys
from services.core.kv import Put
from services.core.localcluster import free_ports
from services.core.store import Store
from services.registry.daemon import Daemon
from services.registry.settings import Settings
from tests.conftest import wait_for
from tests.integration.registry_server import EventStream, serving

REPO = Path(__file__).resolve().parents[2]
REST = {"REST": "http://127.0.0.1:9000"}


def stored(store: Store, name: str, instance_id: str) -> dict | None:
    kv = store.get(keys.service(name, instance_id))
    return None if kv is None else {**json.loads(kv.value), "_lease": kv.lease}


def status_of(reg, name: str) -> int | str:
    r = reg.http.get(f"/v1/services/{name}")
    return r.json()["status"] if r.status_code == 200 else r.status_code


def test_an_instance_lives_through_register_get_list_heartbeat_deregister_and_404(store, etcd):
    with serving(etcd.endpoints) as reg:
        r = reg.http.post("/v1/services", json={
            "name": "orchestrator", "version": "1.0.0",
            "interfaces": {"REST": "http://127.0.0.1:9000", "CLI": "chora-orch"},
            "metadata": {"description": "runs things", "dependencies": ["manifest"],
                         "tags": ["core"], "environment": "production", "team": "devex"}})
        assert r.status_code == 201
        answer = r.json()
        iid = answer["id"]
        assert iid.startswith("orchestrator-") and len(iid) == len("orchestrator-") + 8
        assert answer | {"registered_at": None} == {
            "id": iid, "name": "orchestrator", "version": "1.0.0", "status": "up",
            "registered_at": None, "heartbeat_interval": 10, "heartbeat_timeout": 30,
            "removal_timeout": 60}
        assert answer["registered_at"].endswith("Z")

        record = reg.http.get("/v1/services/orchestrator").json()
        assert record["status"] == "up" and record["id"] == iid
        assert record["interfaces"] == {"REST": "http://127.0.0.1:9000", "CLI": "chora-orch"}
        assert record["metadata"] == {"description": "runs things",
                                      "dependencies": ["manifest"], "tags": ["core"],
                                      "environment": "production", "team": "devex"}
        assert stored(store, "orchestrator", iid)["_lease"] != 0

        listed = reg.http.get("/v1/services", params={
            "status": "up", "tag": "core", "dependency": "manifest"}).json()
        assert [x["id"] for x in listed] == [iid]
        assert reg.http.get("/v1/services", params={"tag": "other"}).json() == []

        assert reg.http.put(f"/v1/services/orchestrator/{iid}/heartbeat").status_code == 204
        assert reg.http.delete(f"/v1/services/orchestrator/{iid}").status_code == 204
        assert reg.http.get("/v1/services/orchestrator").status_code == 404
        assert stored(store, "orchestrator", iid) is None
        # A late heartbeat never brings it back; a second DELETE is fine.
        assert reg.http.put(f"/v1/services/orchestrator/{iid}/heartbeat").status_code == 404
        assert reg.http.delete(f"/v1/services/orchestrator/{iid}").status_code == 204
        assert stored(store, "orchestrator", iid) is None


def test_several_instances_of_a_name_are_answered_as_a_list_and_filters_combine(store, etcd):
    with serving(etcd.endpoints) as reg:
        a = reg.register("gateway", metadata={"tags": ["core", "edge"],
                                              "dependencies": ["manifest"]})
        b = reg.register("gateway", metadata={"tags": ["edge"]})
        c = reg.register("worker", metadata={"tags": ["core"], "dependencies": ["gateway"]})
        both = reg.http.get("/v1/services/gateway").json()
        assert [x["id"] for x in both] == sorted([a, b])
        ids = lambda **q: [x["id"] for x in reg.http.get("/v1/services", params=q).json()]  # noqa: E731
        assert ids() == [*sorted([a, b]), c]
        assert ids(tag="edge") == sorted([a, b])
        assert ids(tag="core") == [a, c]
        assert ids(tag="core", dependency="manifest") == [a]
        assert ids(dependency="gateway") == [c]
        assert ids(status="unhealthy") == []
        assert ids(status="up", tag="edge", dependency="gateway") == []


def test_a_get_right_after_each_write_on_the_same_process_sees_that_write(store, etcd):
    with serving(etcd.endpoints) as reg:
        seen = []
        for i in range(15):
            r = reg.http.post("/v1/services", json={"name": f"ryw-{i}", "version": "1",
                                                    "interfaces": REST})
            iid = r.json()["id"]
            got = reg.http.get(f"/v1/services/ryw-{i}")
            assert got.status_code == 200 and got.json()["id"] == iid
            assert reg.index(got) >= reg.index(r)
            assert iid in [x["id"] for x in reg.http.get("/v1/services").json()]
            d = reg.http.delete(f"/v1/services/ryw-{i}/{iid}")
            assert reg.http.get(f"/v1/services/ryw-{i}").status_code == 404
            seen += [reg.index(r), reg.index(got), reg.index(d)]
        assert seen == sorted(seen), "X-Registry-Index went backwards"


def test_a_silent_instance_goes_up_then_unhealthy_then_removed_on_time(store, etcd):
    with serving(etcd.endpoints, heartbeat_timeout=2, removal_timeout=5) as reg:
        began = time.monotonic()
        iid = reg.register("quiet")
        assert status_of(reg, "quiet") == "up"
        wait_for(lambda: status_of(reg, "quiet") == "unhealthy", timeout=5, interval=0.05)
        unhealthy_after = time.monotonic() - began
        assert 2.0 <= unhealthy_after <= 3.6, unhealthy_after
        record = stored(store, "quiet", iid)
        assert record["status"] == "unhealthy" and record["last_heartbeat"].endswith("Z")
        wait_for(lambda: status_of(reg, "quiet") == 404, timeout=8, interval=0.05)
        removed_after = time.monotonic() - began
        assert 5.0 <= removed_after <= 7.0, removed_after
        assert stored(store, "quiet", iid) is None
        assert reg.http.put(f"/v1/services/quiet/{iid}/heartbeat").status_code == 404


def test_a_heartbeat_makes_an_unhealthy_instance_up_again(store, etcd):
    with serving(etcd.endpoints, heartbeat_timeout=1, removal_timeout=8) as reg:
        iid = reg.register("sleepy")
        wait_for(lambda: status_of(reg, "sleepy") == "unhealthy", timeout=5)
        assert reg.http.put(f"/v1/services/sleepy/{iid}/heartbeat").status_code == 204
        assert status_of(reg, "sleepy") == "up"  # read-your-writes
        assert stored(store, "sleepy", iid)["status"] == "up"


def test_steady_heartbeats_keep_an_instance_up_and_write_nothing_to_etcd(store, etcd):
    with serving(etcd.endpoints, heartbeat_timeout=1.5, removal_timeout=3) as reg:
        iid = reg.register("steady")
        before = store.revision()
        end = time.monotonic() + 5  # longer than the removal timeout
        while time.monotonic() < end:
            assert reg.http.put(f"/v1/services/steady/{iid}/heartbeat").status_code == 204
            assert status_of(reg, "steady") == "up"
            time.sleep(0.3)
        assert store.revision() == before, "a heartbeat wrote to etcd"
        served = reg.http.get("/v1/services/steady").json()
        assert served["last_heartbeat"] > served["registered_at"]  # this process's knowledge


def test_the_two_stage_expiry_holds_across_a_registry_restart(store, etcd):
    """Stopped while the instance is up, the registry restarts knowing nothing of its
    beats: the instance still turns unhealthy and is removed on time; one registered
    before a registry outage that outlasts its removal timeout is gone afterwards."""
    opts = {"heartbeat_timeout": 2, "removal_timeout": 5}
    with serving(etcd.endpoints, **opts) as first:
        began = time.monotonic()
        iid = first.register("restarted")
        gone = first.register("outlived")
    with serving(etcd.endpoints, **opts) as second:
        assert second.http.get("/v1/services/restarted").json()["id"] == iid
        wait_for(lambda: status_of(second, "restarted") == "unhealthy", timeout=6,
                 interval=0.05)
        assert 2.0 <= time.monotonic() - began <= 4.0
        wait_for(lambda: status_of(second, "restarted") == 404, timeout=8, interval=0.05)
        assert 5.0 <= time.monotonic() - began <= 7.0
        assert stored(store, "outlived", gone) is None  # etcd removed it, registry or not
    assert stored(store, "restarted", iid) is None


def test_a_heartbeat_through_one_replica_keeps_the_instance_up_on_the_other(store, etcd):
    opts = {"heartbeat_timeout": 1.5, "removal_timeout": 6}
    with serving(etcd.endpoints, **opts) as a, serving(etcd.endpoints, **opts) as b:
        iid = a.register("shared")
        wait_for(lambda: b.http.get("/v1/services/shared").status_code == 200, timeout=5)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            assert a.http.put(f"/v1/services/shared/{iid}/heartbeat").status_code == 204
            assert status_of(b, "shared") == "up", "a replica flapped on another's beats"
            time.sleep(0.4)
        assert b.http.put(f"/v1/services/shared/{iid}/heartbeat").status_code == 204
        assert b.http.delete(f"/v1/services/shared/{iid}").status_code == 204
        wait_for(lambda: status_of(a, "shared") == 404, timeout=5)


def test_capabilities_are_served_with_their_health_and_the_instances_named_after_them(
        store, etcd):
    ns = "chora.devex.registry"
    deps = [{"capability": "chora.infrastructure.sap_framework", "version": "^1.0.0",
             "relationship": "prerequisite"}]
    health = {"status": "healthy", "timestamp": "2026-11-23T10:00:00Z", "namespace": ns,
              "heartbeat_count": 3}
    store.txn([], [
        Put(keys.capability(ns, keys.METADATA), json.dumps({"dc_title": "Registry",
                                                            "type": "service"}).encode()),
        Put(keys.capability(ns, keys.TYPE), b"service"),
        Put(keys.capability(ns, keys.VERSION), b"1.0.0"),
        Put(keys.capability(ns, keys.DEPENDENCIES), json.dumps(deps).encode()),
        Put(keys.capability(ns, keys.HEALTH), json.dumps(health).encode()),
        Put(keys.capability("chora.docs.style", keys.TYPE), b"pattern"),
        Put(keys.capability("chora.docs.style", keys.VERSION), b"0.1.0"),
    ])
    with serving(etcd.endpoints) as reg:
        iid = reg.register(ns)
        view = reg.http.get(f"/v1/capabilities/{ns}").json()
        assert {k: view[k] for k in ("namespace", "type", "version", "dependencies",
                                     "health")} == {
            "namespace": ns, "type": "service", "version": "1.0.0", "dependencies": deps,
            "health": health}
        assert view["metadata"]["dc_title"] == "Registry"
        assert [i["id"] for i in view["instances"]] == [iid]
        pattern = reg.http.get("/v1/capabilities/chora.docs.style").json()
        assert (pattern["health"], pattern["instances"], pattern["dependencies"]) == (
            None, [], [])
        names = lambda **q: [c["namespace"] for c in  # noqa: E731
                             reg.http.get("/v1/capabilities", params=q).json()]
        assert names() == ["chora.devex.registry", "chora.docs.style"]
        assert names(type="service") == [ns]
        assert names(type="pattern") == ["chora.docs.style"]
        assert names(dependency="chora.infrastructure.sap_framework") == [ns]
        assert reg.http.get("/v1/capabilities/chora.nothing.here").status_code == 404


def test_health_metrics_and_openapi_describe_the_running_registry(store, etcd):
    with serving(etcd.endpoints) as reg:
        reg.register("described")
        health = reg.http.get("/v1/health").json()
        assert health["status"] == "healthy" and health["version"] == "1.0.0"
        assert health["services_registered"] == 1 and health["instances"] == {"up": 1}
        assert health["etcd_last_reached_seconds"] < 5
        text = reg.http.get("/metrics").text
        for name in ("chora_registry_requests_total", "chora_registry_request_duration_seconds",
                     'chora_registry_instances{status="up"} 1.0',
                     "chora_registry_watch_subscribers", "chora_registry_view_revision",
                     "chora_registry_degraded 0.0"):
            assert name in text, name
        reg.http.get("/v1/services/described")
        assert 'route="/v1/services/{name}"' in reg.http.get("/metrics").text
        spec = reg.http.get("/openapi.json").json()
        assert set(spec["paths"]) >= {
            "/v1/services", "/v1/services/{name}", "/v1/services/{name}/{id}/heartbeat",
            "/v1/services/{name}/{id}", "/v1/capabilities", "/v1/capabilities/{namespace}",
            "/v1/watch", "/v1/health"}
        assert "ServiceCreate" in spec["components"]["schemas"]
        body = spec["paths"]["/v1/services"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["$ref"].endswith("ServiceCreate")


def test_every_answer_carries_a_registry_index_that_never_goes_backwards(store, etcd):
    with serving(etcd.endpoints) as reg:
        indexes = []
        for i in range(5):
            answers = [reg.http.post("/v1/services", json={"name": "idx", "version": "1",
                                                           "interfaces": REST}),
                       reg.http.get("/v1/services/idx"), reg.http.get("/v1/services/nope"),
                       reg.http.get("/v1/services"), reg.http.get("/v1/health"),
                       reg.http.get("/metrics"), reg.http.get("/v1/capabilities"),
                       reg.http.get("/v1/services", params={"status": "bogus"}),
                       reg.http.get(f"/no/such/route/{i}")]
            indexes += [int(a.headers["X-Registry-Index"]) for a in answers]
        assert indexes == sorted(indexes) and indexes[0] > 0


BAD = "name"  # the field most cases are about


@pytest.mark.parametrize(("method", "path", "kwargs", "code", "field"), [
    ("POST", "/v1/services", {"content": b"{not json"}, 422, "body"),
    ("POST", "/v1/services", {"content": b"[1, 2]"}, 422, "body"),
    ("POST", "/v1/services", {"content": b"\xff\xfe\x00"}, 422, "body"),
    ("POST", "/v1/services", {"content": b"[" * 50_000}, 422, "body"),
    ("POST", "/v1/services", {"content": b'{"name":"a","version":"1","interfaces":'
                                         b'{"REST":"http://x"},"metadata":{"n":NaN}}'}, 422,
     "body"),
    ("POST", "/v1/services", {"content": b"x" * (64 * 1024 + 1)}, 413, "body"),
    ("POST", "/v1/services", {"content": iter([b"x" * 40_000] * 2)}, 413, "body"),  # chunked
    ("POST", "/v1/services", {"json": {"version": "1", "interfaces": REST}}, 422, BAD),
    ("POST", "/v1/services", {"json": {"name": "", "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": "Upper", "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": "a/b", "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": "a..b", "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": "..", "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": "a" * 64, "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": 7, "version": "1", "interfaces": REST}},
     422, BAD),
    ("POST", "/v1/services", {"json": {"name": "ok", "interfaces": REST}}, 422, "version"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1 0", "interfaces": REST}},
     422, "version"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1"}}, 422, "interfaces"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1", "interfaces": {}}},
     422, "interfaces"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1",
                                       "interfaces": {"REST": "not a url"}}}, 422,
     "interfaces.REST"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1",
                                       "interfaces": {"REST": "ftp://host/x"}}}, 422,
     "interfaces.REST"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1", "interfaces": REST,
                                       "metadata": {"tags": "core"}}}, 422, "metadata.tags"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1", "interfaces": REST,
                                       "metadata": {"dependencies": ["Bad Name"]}}}, 422,
     "metadata.dependencies.0"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1", "interfaces": REST,
                                       "metadata": []}}, 422, "metadata"),
    ("POST", "/v1/services", {"json": {"name": "ok", "version": "1", "interfaces": REST,
                                       "ttl": 5}}, 422, "ttl"),
    ("POST", "/v1/services?force=1", {"json": {"name": "ok", "version": "1",
                                               "interfaces": REST}}, 422, "force"),
    ("PUT", "/v1/services/Bad/bad-0000000a/heartbeat", {}, 422, BAD),
    ("PUT", "/v1/services/ok/ok-XYZ/heartbeat", {}, 422, "id"),
    ("PUT", "/v1/services/ok/other-0000000a/heartbeat", {}, 422, "id"),
    ("DELETE", "/v1/services/a..b/a..b-0000000a", {}, 422, BAD),
    ("DELETE", "/v1/services/ok/ok-a..b", {}, 422, "id"),
    ("GET", "/v1/services/UPPER", {}, 422, BAD),
    ("GET", "/v1/services/" + "a" * 64, {}, 422, BAD),
    ("GET", "/v1/services?status=bogus", {}, 422, "status"),
    ("GET", "/v1/services?status=up&status=down", {}, 422, "status"),
    ("GET", "/v1/services?colour=red", {}, 422, "colour"),
    ("GET", "/v1/services?dependency=Bad", {}, 422, "dependency"),
    ("GET", "/v1/capabilities?type=library", {}, 422, "type"),
    ("GET", "/v1/capabilities/Not.A.Namespace", {}, 422, "namespace"),
    ("GET", "/v1/capabilities/single", {}, 422, "namespace"),
    ("GET", "/v1/watch", {"headers": {"Last-Event-ID": "yesterday"}}, 422, "Last-Event-ID"),
    ("GET", "/v1/watch?name=UP", {}, 422, BAD),
])
def test_bad_input_gets_a_4xx_naming_the_field_and_nothing_reaches_etcd(
        store, etcd, registry_for_bad_input, method, path, kwargs, code, field):
    reg = registry_for_bad_input
    before = store.revision()
    r = reg.http.request(method, path, **kwargs)
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(f"{field}:"), detail
    assert "X-Registry-Index" in r.headers
    assert store.revision() == before, "bad input reached etcd"


@pytest.fixture
def registry_for_bad_input(store, etcd):
    with serving(etcd.endpoints) as reg:
        yield reg


def test_nothing_is_served_before_the_first_read_of_etcd_not_even_an_empty_list():
    dead = [f"127.0.0.1:{p}" for p in free_ports(3)]
    daemon = Daemon(Settings(tuple(dead), port=0, etcd_timeout=0.3, shutdown_timeout=2))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{daemon.port}") as http:
            wait_for(lambda: http.get("/v1/health").status_code == 503, timeout=10)
            for path in ("/v1/services", "/v1/services/any", "/v1/capabilities",
                         "/v1/capabilities/a.b", "/v1/watch"):
                r = http.get(path)
                assert r.status_code == 503 and "first read" in r.json()["detail"], path
            assert http.get("/v1/health").json()["status"] == "starting"
            r = http.post("/v1/services", json={"name": "a", "version": "1",
                                                "interfaces": REST})
            assert r.status_code == 503
    finally:
        daemon.stop()
        thread.join(20)
    assert not thread.is_alive()


def test_the_cli_serves_and_stops_within_bounds_on_sigterm_closing_its_streams(store, etcd,
                                                                                tmp_path):
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "REGISTRY_"))}
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.registry", "--port", str(port), "--endpoints",
             ",".join(etcd.endpoints), "--heartbeat-timeout", "5", "--removal-timeout", "10",
             "--etcd-timeout", "1", "--log-json"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/v1/health").status_code == 200, timeout=20)
        r = httpx.post(url + "/v1/services", json={"name": "cli", "version": "1",
                                                   "interfaces": REST})
        assert r.status_code == 201 and r.json()["heartbeat_interval"] == round(5 / 3, 3)
        stream = EventStream(url)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - began < 8
        assert stream.ended.wait(5), "the change stream was left open"
        stream.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = (tmp_path / "registry.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert "registry starting" in events and events[-1] == "registry stopped", lines[-5:]
    # Nothing revoked at exit: the instance outlives the registry (a restart loses nothing).
    assert stored(store, "cli", r.json()["id"]) is not None
