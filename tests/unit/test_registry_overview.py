"""The dashboard's reads, without etcd: the sync's status and the dependency checks kept
by the view, the extra events only for the change streams that ask for them, and the
cluster's members announced only when more than their time changed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from services.core import keys
from services.registry import changes
from services.registry.graph import checked
from services.registry.hub import Hub
from services.registry.metrics import Metrics
from services.registry.streaming import changes_after
from tests.unit.test_registry_view import delete, instance, loaded, put

STATUS = {"commit": "abc", "dirty": False, "capabilities": 2, "unowned": [],
          "errors": [{"file": "bad.yaml", "namespace": None, "reason": "line 3: oops"}],
          "prunes_held": [], "prune_refusal": "", "changed_at": "2026-12-07T03:00:00.000Z"}


def capability(ns: str, version: str, deps: list[dict[str, str]], rev: int) -> list:
    return [put(keys.capability(ns, keys.TYPE), b"service", rev),
            put(keys.capability(ns, keys.VERSION), version.encode(), rev),
            put(keys.capability(ns, keys.DEPENDENCIES), json.dumps(deps).encode(), rev)]


def data(frame: bytes) -> object:
    return json.loads(frame.split(b"data: ", 1)[1])


def test_the_sync_status_is_served_as_written_with_its_revision_and_absent_before_any():
    view = loaded(instance("svc", "svc-1", 3))
    assert view.state.sync() == {"present": False}
    found = view.apply([put(keys.SYNC_STATUS, json.dumps(STATUS).encode(), 11)])
    assert [c.kind for c in found] == [changes.SYNC_CHANGED]
    assert data(found[0].frame) == {"present": True, "revision": 11, **STATUS}
    assert view.state.sync()["errors"][0]["file"] == "bad.yaml"
    gone = view.apply([delete(keys.SYNC_STATUS, 12)])
    assert data(gone[0].frame) == {"present": False}


def test_a_reread_announces_a_sync_status_that_changed_meanwhile():
    view = loaded(put(keys.SYNC_STATUS, b'{"commit": "a"}', 3))
    again = loaded(put(keys.SYNC_STATUS, b'{"commit": "a"}', 3), revision=20).state
    assert view.swap(again) == []
    newer = loaded(put(keys.SYNC_STATUS, b'{"commit": "b"}', 21), revision=21).state
    assert [c.kind for c in view.swap(newer)] == [changes.SYNC_CHANGED]
    assert view.state.sync()["commit"] == "b"


def test_each_dependency_is_checked_against_the_version_held_and_cycles_are_named():
    views = [
        {"namespace": "a", "version": "1.2.0", "dependencies": [
            {"capability": "b", "version": "^1.0.0", "relationship": "requires"},
            {"capability": "c", "version": "^2.0.0", "relationship": "extends"},
            {"capability": "nowhere", "version": "*"}]},
        {"namespace": "b", "version": "1.0.0", "dependencies": [{"capability": "a"}]},
        {"namespace": "c", "version": "1.5.0", "dependencies": []},
    ]
    found = checked(views)
    assert [(e["from"], e["to"], e["status"]) for e in found["edges"]] == [
        ("a", "b", "satisfied"), ("a", "c", "unsatisfied"), ("a", "nowhere", "missing"),
        ("b", "a", "satisfied")]
    assert found["edges"][1] == {"from": "a", "to": "c", "relationship": "extends",
                                 "range": "^2.0.0", "held": "1.5.0", "status": "unsatisfied",
                                 "reason": "1.5.0 does not satisfy ^2.0.0"}
    assert found["cycles"] == [["a", "b", "a"]]


def test_the_dependency_answer_follows_a_version_change_of_the_target():
    view = loaded(*capability("a", "1.0.0", [{"capability": "b", "version": "^1.0.0"}], 3),
                  *capability("b", "1.0.0", [], 3))
    first = json.loads(view.dependencies())
    assert first["edges"][0]["status"] == "satisfied" and first["revision"] == 10
    assert view.dependencies() is view.dependencies()  # computed once per change
    view.apply([put(keys.capability("b", keys.VERSION), b"2.0.0", 11)])
    assert json.loads(view.dependencies())["edges"][0]["status"] == "unsatisfied"


async def collect(stream: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in stream:
        into.append(chunk)


def test_extra_events_go_only_to_the_streams_that_include_them():
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        view = loaded(instance("svc", "svc-1", 3))
        hub = Hub(view, Metrics(), log=None)  # type: ignore[arg-type]
        hub.bind(asyncio.get_running_loop())
        plain: list[bytes] = []
        dashboard: list[bytes] = []
        tasks = [asyncio.create_task(collect(changes_after(hub, hub.metrics, 10), plain)),
                 asyncio.create_task(collect(changes_after(
                     hub, hub.metrics, 10, include=frozenset({"sync", "cluster"})), dashboard))]
        await asyncio.sleep(0.01)
        hub._cluster({"checked_at": "t1", "leader": "etcd1", "alarms": [], "members": []})
        await asyncio.sleep(0.01)
        hub._cluster({"checked_at": "t2", "leader": "etcd1", "alarms": [], "members": []})
        hub._apply([put(keys.SYNC_STATUS, b'{"commit": "a"}', 11)])
        await asyncio.sleep(0.01)
        hub._apply([instance("svc", "svc-2", 12)])
        for _ in range(100):  # bounded: 1 s
            if len(dashboard) >= 4 and plain:
                break
            await asyncio.sleep(0.01)
        hub.closing.set()
        hub._wake_subscribers()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return plain, dashboard

    plain, dashboard = asyncio.run(scenario())
    assert [c.split(b"event: ")[1].split(b"\r\n")[0] for c in plain] == [b"registered"]
    kinds = [k.split(b"\r\n")[0] for c in dashboard for k in c.split(b"event: ")[1:]]
    # the cluster as it was at connection, its one real change (not the mere new time),
    # then the sync status and the instance in revision order
    assert kinds == [b"cluster_changed", b"cluster_changed", b"sync_changed", b"registered"]
    assert data(dashboard[1])["leader"] == "etcd1"
    assert b"id: " not in dashboard[1]  # no etcd revision: Last-Event-ID stays put


def test_heartbeats_and_health_rewrites_are_summarised_for_ages_but_are_no_changes():
    ns = "chora.a.svc"
    health = {"status": "healthy", "timestamp": "t1", "heartbeat_count": 1}
    view = loaded(put(keys.capability(ns, keys.TYPE), b"service", 3),
                  put(keys.capability(ns, keys.HEALTH), json.dumps(health).encode(), 3),
                  instance("svc", "svc-1", 4))
    assert view.take_beats() is None  # nothing moved yet
    view.beat(keys.service("svc", "svc-1"), "2026-12-07T03:00:01.000Z")
    beat = {**health, "timestamp": "t2", "heartbeat_count": 2}
    assert view.apply([put(keys.capability(ns, keys.HEALTH), json.dumps(beat).encode(), 11)]
                      ) == []  # not a change: the ring and plain streams never see it
    assert view.take_beats() == {"instances": [["svc", "svc-1", "2026-12-07T03:00:01.000Z"]],
                                 "health": {ns: beat}}
    assert view.take_beats() is None  # each movement is told once
