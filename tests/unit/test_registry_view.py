"""The registry's in-memory view (pure): full reads, watch events, the change ring,
degraded answers and the pre-encoded bytes, without etcd or a server."""

from __future__ import annotations

import json

import pytest

from services.core import keys
from services.core.kv import Event, KeyValue
from services.registry.changes import Ring, change
from services.registry.state import State
from services.registry.view import View


def record(name: str, iid: str, status: str = "up", **meta: object) -> bytes:
    return json.dumps({"name": name, "id": iid, "version": "1", "interfaces": {},
                       "metadata": {"tags": [], "dependencies": [], **meta},
                       "status": status, "last_heartbeat": "2026-11-23T10:00:00.000Z",
                       "registered_at": "2026-11-23T10:00:00.000Z"}).encode()


def kv(key: str, value: bytes, rev: int, lease: int = 7) -> KeyValue:
    return KeyValue(key, value, rev, rev, lease)


def put(key: str, value: bytes, rev: int) -> Event:
    return Event("put", kv(key, value, rev))


def delete(key: str, rev: int) -> Event:
    return Event("delete", KeyValue(key, b"", rev, 0, 0))


def instance(name: str, iid: str, rev: int, status: str = "up", **meta: object) -> Event:
    return put(keys.service(name, iid), record(name, iid, status, **meta), rev)


def loaded(*events: Event, revision: int = 10, **kwargs: object) -> View:
    view = View(**kwargs)  # type: ignore[arg-type]
    view.swap(State.from_kvs({e.kv.key: e.kv for e in events}, revision))
    return view


def served(view: View, name: str) -> object:
    found = view.service(name)
    return None if found is None else json.loads(found)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_served_before_the_first_read_and_the_first_read_announces_nothing():
    view = View()
    assert not view.ready and view.revision == 0
    first = view.swap(State.from_kvs({}, 5))
    assert first == [] and view.ready and view.revision == 5
    assert view.services() == b"[]" and view.ring.floor == 5


def test_one_instance_is_a_record_several_are_a_list_by_id_and_none_is_none():
    view = loaded(instance("a", "a-00000002", 3), instance("a", "a-00000001", 4),
                  instance("b", "b-00000001", 5))
    assert [r["id"] for r in served(view, "a")] == ["a-00000001", "a-00000002"]
    assert served(view, "b")["id"] == "b-00000001"
    assert served(view, "c") is None
    assert [r["id"] for r in json.loads(view.services())] == [
        "a-00000001", "a-00000002", "b-00000001"]


def test_every_event_of_one_revision_is_applied_and_a_capability_changes_once():
    view = loaded()
    ns = "chora.a.b"
    found = view.apply([put(keys.capability(ns, keys.TYPE), b"service", 11),
                        put(keys.capability(ns, keys.VERSION), b"1.0.0", 11),
                        instance("x", "x-00000001", 11), instance("y", "y-00000001", 11)])
    assert [(c.kind, c.name, c.revision) for c in found] == [
        ("registered", "x", 11), ("registered", "y", 11), ("capability_changed", ns, 11)]
    payload = json.loads(found[-1].frame.split(b"data: ")[1])
    assert payload["capability"]["version"] == "1.0.0"
    assert view.revision == 11 and served(view, "y") is not None


def test_events_already_held_are_skipped_and_the_revision_never_goes_back():
    view = loaded(instance("a", "a-00000001", 3), revision=10)
    assert view.apply([instance("a", "a-00000001", 9, status="unhealthy")]) == []
    assert served(view, "a")["status"] == "up" and view.revision == 10
    assert view.swap(State.from_kvs({}, 8)) is None  # an older read is ignored
    assert view.revision == 10 and served(view, "a") is not None


def test_a_reread_swaps_in_at_once_and_announces_only_the_net_difference():
    view = loaded(instance("gone", "gone-00000001", 3), instance("same", "same-00000001", 4),
                  instance("moved", "moved-00000001", 5))
    again = State.from_kvs({e.kv.key: e.kv for e in (
        instance("same", "same-00000001", 4),
        instance("moved", "moved-00000001", 12, status="unhealthy"),
        instance("new", "new-00000001", 13))}, 20)
    found = view.swap(again)
    assert [(c.kind, c.name, c.revision) for c in found] == [
        ("deregistered", "gone", 20), ("status_changed", "moved", 20),
        ("registered", "new", 20)]
    assert view.revision == 20 and served(view, "gone") is None
    assert served(view, "moved")["status"] == "unhealthy"
    assert [c.kind for c in view.ring.since(10)] == [c.kind for c in found]


def test_each_kind_of_instance_change_is_announced_with_the_record():
    view = loaded()
    key = keys.service("a", "a-00000001")
    kinds = []
    for events in ([instance("a", "a-00000001", 11)],
                   [instance("a", "a-00000001", 12, status="unhealthy")],
                   [instance("a", "a-00000001", 13, status="unhealthy", tags=["t"])],
                   [instance("a", "a-00000001", 14, status="unhealthy", tags=["t"])],
                   [delete(key, 15)]):
        kinds += [(c.kind, json.loads(c.frame.split(b"data: ")[1])["status"])
                  for c in view.apply(events)]
    assert kinds == [("registered", "up"), ("status_changed", "unhealthy"),
                     ("updated", "unhealthy"), ("deregistered", "down")]
    frame = view.ring.since(14)[0].frame.decode()
    assert frame.startswith("id: 15\r\nevent: deregistered\r\ndata: {")
    assert frame.endswith("\r\n\r\n")


def test_degraded_serves_every_instance_as_unknown_until_the_quorum_is_back():
    view = loaded(instance("a", "a-00000001", 3), instance("b", "b-00000001", 4, "unhealthy"))
    before = view.service("a")
    assert view.set_degraded(True) and not view.set_degraded(True)
    assert served(view, "a")["status"] == "unknown"
    assert {r["status"] for r in json.loads(view.services())} == {"unknown"}
    assert json.loads(view.services(status="unknown")) != []
    assert json.loads(view.services(status="up")) == []
    assert view.counts() == {"unknown": 2}
    assert view.set_degraded(False)
    assert view.service("a") == before and view.counts() == {"up": 1, "unhealthy": 1}


def test_a_heartbeat_shows_as_last_heartbeat_without_being_a_change():
    clock = Clock()
    view = loaded(instance("a", "a-00000001", 3), clock=clock, list_refresh=1.0)
    listed = view.services()
    view.beat(keys.service("a", "a-00000001"), "2026-11-23T11:00:00.000Z")
    assert served(view, "a")["last_heartbeat"] == "2026-11-23T11:00:00.000Z"
    assert len(view.ring) == 0
    assert view.services() == listed  # a list may lag a beat by list_refresh at most
    clock.now += 1.0
    assert json.loads(view.services())[0]["last_heartbeat"] == "2026-11-23T11:00:00.000Z"
    view.beat(keys.service("a", "a-00000001"), "2026-11-23T09:00:00.000Z")  # older: kept
    assert served(view, "a")["last_heartbeat"] == "2026-11-23T11:00:00.000Z"
    view.beat(keys.service("nobody", "nobody-00000001"), "2026-11-23T11:00:00.000Z")
    assert served(view, "nobody") is None


def test_an_answer_is_encoded_once_and_again_only_after_a_change():
    view = loaded(instance("a", "a-00000001", 3))
    first = view.service("a")
    assert view.service("a") is first and view.services() is view.services()
    view.apply([instance("a", "a-00000001", 11, status="unhealthy")])
    assert view.service("a") is not first
    assert json.loads(view.services())[0]["status"] == "unhealthy"


def test_filters_combine_and_tolerate_a_record_written_by_hand():
    view = loaded(instance("a", "a-00000001", 3, tags=["core", "edge"], dependencies=["m"]),
                  instance("b", "b-00000001", 4, "unhealthy", tags=["core"]),
                  put(keys.service("c", "c-00000001"), json.dumps(
                      {"status": "up", "metadata": "not a mapping"}).encode(), 5),
                  put(keys.service("d", "d-00000001"), b"{not json", 6),
                  put(keys.SERVICES + "e/e-00000001/deeper", record("e", "x"), 7),
                  put(keys.SERVICES + "lonely", record("e", "x"), 8))
    ids = lambda **q: [r["id"] for r in json.loads(view.services(**q))]  # noqa: E731
    assert ids() == ["a-00000001", "b-00000001", "c-00000001"]  # name/id from the key
    assert ids(tag="core") == ["a-00000001", "b-00000001"]
    assert ids(tag="core", status="up") == ["a-00000001"]
    assert ids(tag="edge", dependency="m") == ["a-00000001"]
    assert ids(dependency="m", status="unhealthy") == []


def test_capabilities_are_served_with_health_and_instances_and_health_beats_are_quiet():
    ns = "chora.a.svc"
    health = {"status": "healthy", "timestamp": "t1", "heartbeat_count": 1}
    view = loaded(put(keys.capability(ns, keys.TYPE), b"service", 3),
                  put(keys.capability(ns, keys.METADATA), b'{"dc_title": "A"}', 3),
                  put(keys.capability(ns, keys.DEPENDENCIES),
                      b'[{"capability": "chora.a.base", "version": "*"}]', 3),
                  put(keys.capability(ns, keys.HEALTH), json.dumps(health).encode(), 4),
                  put(keys.capability(ns, keys.MANIFEST), b"{}", 3),
                  put(keys.capability("chora.a.pat", keys.TYPE), b"pattern", 5),
                  put(keys.capability("chora.a.orphan", keys.HEALTH), b"{}", 6),
                  instance(ns, f"{ns}-00000001", 7))
    doc = json.loads(view.capability(ns))
    assert doc == {"namespace": ns, "type": "service", "version": None,
                   "metadata": {"dc_title": "A"},
                   "dependencies": [{"capability": "chora.a.base", "version": "*"}],
                   "health": health, "instances": [json.loads(view.service(ns))]}
    assert view.capability("chora.a.orphan") is None  # a lone health key
    names = lambda **q: [c["namespace"] for c in json.loads(view.capabilities(**q))]  # noqa: E731
    assert names() == ["chora.a.pat", ns]
    assert names(type_="pattern") == ["chora.a.pat"]
    assert names(dependency="chora.a.base") == [ns]
    beat = {**health, "timestamp": "t2", "heartbeat_count": 2}
    assert view.apply([put(keys.capability(ns, keys.HEALTH), json.dumps(beat).encode(), 11)]
                      ) == []
    assert json.loads(view.capability(ns))["health"]["heartbeat_count"] == 2
    sick = {**beat, "status": "unhealthy"}
    found = view.apply([put(keys.capability(ns, keys.HEALTH), json.dumps(sick).encode(), 12)])
    assert [c.kind for c in found] == ["capability_changed"]
    removed = view.apply([delete(keys.capability(ns, k), 13)
                          for k in (keys.TYPE, keys.METADATA, keys.DEPENDENCIES, keys.HEALTH)])
    assert json.loads(removed[0].frame.split(b"data: ")[1])["capability"] is None
    assert view.capability(ns) is None


def test_a_resync_carries_everything_current_at_the_views_revision():
    view = loaded(instance("a", "a-00000001", 3), instance("b", "b-00000001", 4),
                  put(keys.capability("chora.a.b", keys.TYPE), b"pattern", 5), revision=9)
    frame = view.resync().decode()
    assert frame.startswith("id: 9\r\nevent: resync\r\n")
    payload = json.loads(frame.split("data: ")[1])
    assert payload["revision"] == 9
    assert [s["id"] for s in payload["services"]] == ["a-00000001", "b-00000001"]
    assert [c["namespace"] for c in payload["capabilities"]] == ["chora.a.b"]
    only = json.loads(view.resync("b").decode().split("data: ")[1])
    assert [s["id"] for s in only["services"]] == ["b-00000001"] and only["capabilities"] == []


def test_the_ring_replays_after_a_revision_and_says_when_it_no_longer_can():
    ring = Ring(3, floor=10)
    for rev, name in ((11, "a"), (12, "b"), (12, "c"), (13, "a")):
        ring.append(change("registered", rev, name, {}))
    assert ring.floor == 11 and ring.newest == 13  # (11, a) was evicted
    assert [c.revision for c in ring.since(11)] == [12, 12, 13]
    assert [c.name for c in ring.since(11, name="a")] == ["a"]
    assert ring.since(13) == []
    assert ring.since(10) is None  # it would need (11, a)
    ring.append(change("registered", 14, "d", {}))
    assert ring.floor == 12 and ring.since(11) is None  # half of 12 is gone: all of it is
    with pytest.raises(ValueError):
        Ring(0)
