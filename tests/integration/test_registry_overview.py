"""The dashboard's reads against real etcd: the sync's status, the dependencies checked,
the cluster's members (a member killed shows up unhealthy, named, within seconds), the
extra change-stream events, and the pages themselves."""

from __future__ import annotations

import json

from services.core import keys
from services.core.kv import Put
from services.core.localcluster import LocalCluster
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.registry_server import EventStream, serving

STATUS = {"commit": "0123abc", "dirty": False, "capabilities": 1, "unowned": [],
          "errors": [{"file": "broken.yaml", "namespace": None, "reason": "line 2: bad"}],
          "prunes_held": [], "prune_refusal": "", "changed_at": "2026-12-07T03:00:00.000Z"}


def capability(store: Store, ns: str, version: str, deps: list[dict[str, str]]) -> int:
    ok, revision = store.txn([], [
        Put(keys.capability(ns, keys.TYPE), b"service"),
        Put(keys.capability(ns, keys.VERSION), version.encode()),
        Put(keys.capability(ns, keys.DEPENDENCIES), json.dumps(deps).encode())])
    assert ok
    return revision


def test_the_sync_status_is_served_and_each_new_one_is_an_event_for_who_asks(store, etcd):
    with serving(etcd.endpoints) as reg:
        assert reg.http.get("/v1/sync").json() == {"present": False}
        dashboard = EventStream(reg.url, params={"include": "sync"})
        plain = EventStream(reg.url)
        try:
            _, revision = store.txn([], [Put(keys.SYNC_STATUS, json.dumps(STATUS).encode())])
            event = dashboard.take_until(lambda e: e.event == "sync_changed")[-1]
            assert event.id == revision
            assert event.data == {"present": True, "revision": revision, **STATUS}
            answer = reg.http.get("/v1/sync")
            assert answer.json() == event.data
            assert reg.index(answer) >= revision
            capability(store, "chora.ov.a", "1.0.0", [])
            assert [e.event for e in plain.take(1)] == ["capability_changed"]
        finally:
            dashboard.close()
            plain.close()


def test_dependencies_are_checked_against_the_versions_held_as_they_change(store, etcd):
    capability(store, "chora.ov.base", "1.4.0", [])
    capability(store, "chora.ov.app", "2.0.0", [
        {"capability": "chora.ov.base", "version": "^1.2.0", "relationship": "requires"},
        {"capability": "chora.ov.gone", "version": "*", "relationship": "extends"}])
    with serving(etcd.endpoints) as reg:
        edges = reg.http.get("/v1/dependencies").json()["edges"]
        assert [(e["to"], e["status"], e["held"]) for e in edges] == [
            ("chora.ov.base", "satisfied", "1.4.0"), ("chora.ov.gone", "missing", None)]
        revision = capability(store, "chora.ov.base", "2.0.0", [
            {"capability": "chora.ov.app", "version": "*"}])
        found = wait_for(lambda: (d := reg.http.get("/v1/dependencies").json())["revision"]
                         >= revision and d, what="the new version checked")
        assert found["edges"][0]["status"] == "unsatisfied"  # type: ignore[index]
        assert found["edges"][0]["reason"] == "2.0.0 does not satisfy ^1.2.0"  # type: ignore[index]
        assert found["cycles"] == [["chora.ov.app", "chora.ov.base", "chora.ov.app"]]  # type: ignore[index]


def test_a_killed_member_is_shown_unhealthy_by_name_within_seconds(fresh_cluster: LocalCluster):
    with serving(fresh_cluster.endpoints, cluster_check=0.3) as reg:
        cluster = wait_for(lambda: (c := reg.http.get("/v1/cluster").json())["leader"] and c,
                           what="a leader")
        assert sorted(m["name"] for m in cluster["members"]) == ["etcd1", "etcd2", "etcd3"]  # type: ignore[index]
        assert all(m["healthy"] for m in cluster["members"])  # type: ignore[index]
        stream = EventStream(reg.url, params={"include": "cluster"})
        try:
            assert stream.take(1)[0].event == "cluster_changed"  # the current one, at once
            leader = fresh_cluster.leader()
            victim = next(m for m in fresh_cluster.members if m is not leader)
            victim.kill()
            event = stream.take_until(lambda e: e.event == "cluster_changed" and any(
                m["name"] == victim.name and not m["healthy"] for m in e.data["members"]),
                timeout=10)[-1]
            assert event.id is None
            down = next(m for m in event.data["members"] if m["name"] == victim.name)
            assert down["error"] and down["endpoint"] == victim.endpoint
            assert event.data["leader"] == leader.name
        finally:
            stream.close()


def test_an_unknown_extra_event_is_refused_naming_the_parameter(store, etcd):
    with serving(etcd.endpoints) as reg:
        answer = reg.http.get("/v1/watch", params={"include": "sync,bogus"})
        assert answer.status_code == 422
        assert "include" in answer.text and "bogus" in answer.text


def test_every_page_of_the_dashboard_is_served_with_a_strict_content_policy(store, etcd):
    with serving(etcd.endpoints) as reg:
        for path in ("/ui/", "/ui/capabilities", "/ui/capabilities/chora.x", "/ui/services",
                     "/ui/graph", "/ui/sync"):
            page = reg.http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
        assert reg.http.get("/ui").headers["location"] == "/ui/"
        assert reg.http.get("/").headers["location"] == "/ui/"
        library = reg.http.get("/ui/static/vendor/cytoscape.min.js")
        assert library.status_code == 200 and len(library.content) > 100_000
        assert reg.http.get("/ui/static/%2e%2e/%2e%2e/api.py").status_code == 404
        assert reg.http.get("/ui/nowhere").status_code == 404


def test_a_heartbeat_reaches_the_streams_that_include_beats_within_the_period(store, etcd):
    with serving(etcd.endpoints, beats_every=0.2) as reg:
        iid = reg.register("beater")
        stream = EventStream(reg.url, params={"include": "beats"})
        try:
            assert reg.http.put(f"/v1/services/beater/{iid}/heartbeat").status_code == 204
            heard = reg.http.get("/v1/services/beater").json()["last_heartbeat"]
            event = stream.take_until(lambda e: e.event == "beats" and any(
                last == heard for _, _, last in e.data["instances"]), timeout=5)[-1]
            assert event.data["instances"] == [["beater", iid, heard]] and event.id is None
        finally:
            stream.close()
