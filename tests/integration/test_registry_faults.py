"""The registry when etcd fails under it (a fresh 3-member cluster per test): degraded
but answering without a quorum, and not one failed read while the leader is killed."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from services.core.localcluster import LocalCluster
from tests.conftest import wait_for
from tests.integration.registry_server import EventStream, serving

REST = {"REST": "http://127.0.0.1:9000"}


def test_without_a_quorum_reads_go_on_from_memory_as_unknown_and_writes_get_503(
        fresh_cluster: LocalCluster):
    with serving(fresh_cluster.endpoints, heartbeat_timeout=3, removal_timeout=30) as reg:
        a = reg.register("kept")
        b = reg.register("kept")
        stream = EventStream(reg.url)
        victims = [m for m in fresh_cluster.members][:2]
        for m in victims:
            m.kill()
        try:
            wait_for(lambda: reg.http.get("/v1/health").json()["status"] == "degraded",
                     timeout=15, what="degraded")
            health = reg.http.get("/v1/health").json()
            assert health["reason"] and health["services_registered"] == 2

            r = reg.http.get("/v1/services/kept")
            assert r.status_code == 200 and r.headers["X-Registry-Degraded"] == "true"
            assert {x["id"]: x["status"] for x in r.json()} == {a: "unknown", b: "unknown"}
            assert [x["status"] for x in reg.http.get("/v1/services").json()] == [
                "unknown", "unknown"]
            assert reg.http.get("/v1/services", params={"status": "up"}).json() == []

            refused = reg.http.post("/v1/services", json={"name": "new", "version": "1",
                                                          "interfaces": REST})
            assert refused.status_code == 503
            assert refused.json()["detail"].startswith("etcd quorum unavailable")
            # Not a 404: the client must not re-register an instance that still exists.
            assert reg.http.put(f"/v1/services/kept/{a}/heartbeat").status_code == 503
            assert reg.http.delete(f"/v1/services/kept/{a}").status_code == 503
            # Stay down for longer than the heartbeat timeout: nobody could beat.
            time.sleep(4)
        finally:
            for m in victims:
                m.start()
        fresh_cluster.wait_healthy(30)
        wait_for(lambda: reg.http.get("/v1/health").json()["status"] == "healthy",
                 timeout=15, what="healthy again")
        r = reg.http.get("/v1/services/kept")
        assert "X-Registry-Degraded" not in r.headers
        # The outage is not held against the instances: they are up, not unhealthy.
        assert {x["status"] for x in r.json()} == {"up"}
        time.sleep(1.5)
        assert {x["status"] for x in reg.http.get("/v1/services/kept").json()} == {"up"}
        assert stream.pending() == []  # nothing was marked down meanwhile
        stream.close()
        assert reg.http.put(f"/v1/services/kept/{a}/heartbeat").status_code == 204
        c = reg.register("kept")
        assert c in [x["id"] for x in reg.http.get("/v1/services/kept").json()]


def test_killing_the_leader_fails_no_read(fresh_cluster: LocalCluster):
    with serving(fresh_cluster.endpoints) as reg:
        iid = reg.register("steady")
        failures: list[str] = []
        reads = 0
        stop = threading.Event()

        def read() -> None:
            nonlocal reads
            with httpx.Client(base_url=reg.url, timeout=5) as http:
                while not stop.is_set():
                    try:
                        r = http.get("/v1/services/steady")
                        if r.status_code != 200 or r.json()["id"] != iid:
                            failures.append(f"{r.status_code} {r.text[:100]}")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    reads += 1

        reader = threading.Thread(target=read)
        reader.start()
        try:
            time.sleep(0.5)
            fresh_cluster.leader().kill()
            time.sleep(4)  # an election and then some
        finally:
            stop.set()
            reader.join(10)
        assert reads > 100 and failures == []
        # Writes carry on once a new leader is there.
        wait_for(lambda: reg.http.put(f"/v1/services/steady/{iid}/heartbeat").status_code
                 == 204, timeout=15, what="heartbeats accepted again")
        assert reg.register("after-election")


def half_sent_registration(port: int, body: bytes) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
    return conn


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_registration_in_flight_when_the_registry_stops_still_gets_its_answer(etcd, store):
    # A client half-way through sending its body when the registry is told to stop:
    # new connections are refused, the rest of the body arrives, and it is answered.
    body = json.dumps({"name": "late", "version": "1.0.0", "interfaces": REST}).encode()
    with serving(etcd.endpoints) as reg:
        port = reg.daemon.port
        with half_sent_registration(port, body) as conn:
            wait_for(lambda: reg.daemon.app.open >= 1, timeout=5,
                     what="the registration being answered")
            reg.daemon.stop()
            wait_for(lambda: refuses_connections(port), timeout=5,
                     what="new connections refused")
            conn.sendall(body[10:])
            answer = conn.recv(65536).split(b"\r\n", 1)[0]
        assert answer == b"HTTP/1.1 201 Created", answer
    kvs, _ = store.get_prefix("/chora/services/late/")
    assert len(kvs) == 1


def test_a_client_that_never_finishes_its_request_holds_the_stop_no_longer_than_the_grace(
        etcd, store):
    body = json.dumps({"name": "stuck", "version": "1.0.0", "interfaces": REST}).encode()
    with serving(etcd.endpoints, shutdown_timeout=1.0) as reg, \
            half_sent_registration(reg.daemon.port, body):
        wait_for(lambda: reg.daemon.app.open >= 1, timeout=5,
                 what="the registration being answered")
        began = time.monotonic()
        reg.daemon.stop()
        wait_for(lambda: reg.daemon.server.stopped, timeout=10,
                 what="the server stopped despite the client")
        assert time.monotonic() - began < 1.0 + 2.0
    kvs, _ = store.get_prefix("/chora/services/stuck/")
    assert kvs == {}
