"""The watch stream decoded (SSE), read as events, and applied to a local copy that never
goes backwards and is never emptied by anything but a full list."""

from __future__ import annotations

import json

from chora_manifest_client.events import Instances, WatchEvent, parse
from chora_manifest_client.sse import Decoder, ServerSentEvent


def feed(decoder: Decoder, text: str) -> list[ServerSentEvent]:
    return [e for line in text.split("\n") if (e := decoder.feed(line)) is not None]


def record(name: str, instance_id: str, status: str = "up") -> dict:
    return {"name": name, "id": instance_id, "status": status, "metadata": {}}


# -- SSE ----------------------------------------------------------------------------------


def test_an_event_is_dispatched_at_the_blank_line_with_its_id_and_name():
    events = feed(Decoder(), "id: 7\nevent: up\ndata: {\"a\": 1}\n\n")
    assert events == [ServerSentEvent("up", '{"a": 1}', "7")]


def test_comments_are_pings_and_dispatch_nothing():
    assert feed(Decoder(), ": ping\n\n: ping\n\n") == []


def test_multi_line_data_is_joined_with_newlines_and_the_name_defaults_to_message():
    [event] = feed(Decoder(), "data: [1,\ndata: 2]\n\n")
    assert (event.event, json.loads(event.data)) == ("message", [1, 2])


def test_the_last_event_id_carries_over_to_events_without_one():
    decoder = Decoder(last_id="3")
    events = feed(decoder, "data: x\n\nid: 9\ndata: y\n\ndata: z\n\n")
    assert [e.id for e in events] == ["3", "9", "9"]
    assert decoder.last_id == "9"


def test_an_id_with_a_nul_is_ignored_and_retry_is_read():
    [event] = feed(Decoder(), "id: 1\0\nretry: 500\ndata: x\n\n")
    assert event.id is None and event.retry == 500


# -- events -------------------------------------------------------------------------------


def test_a_resync_carries_the_full_list_as_a_list_or_under_services():
    as_list = parse(ServerSentEvent("resync", json.dumps([record("a", "a-1")]), "5"))
    wrapped = parse(ServerSentEvent("resync", json.dumps({"services": [record("a", "a-1")]}),
                                    "5"))
    for event in (as_list, wrapped):
        assert event.kind == "resync" and event.revision == 5
        assert [r["id"] for r in event.records] == ["a-1"]


def test_a_removal_is_recognised_by_the_event_name_or_the_down_status():
    by_name = parse(ServerSentEvent("delete", json.dumps(record("a", "a-1")), "6"))
    by_status = parse(ServerSentEvent("message", json.dumps(record("a", "a-1", "down")), "6"))
    nested = parse(ServerSentEvent("down", json.dumps({"record": record("a", "a-1")}), "6"))
    assert by_name.removed and by_status.removed and nested.removed
    assert nested.key == ("a", "a-1")


def test_an_event_that_is_not_about_an_instance_is_kept_but_names_no_instance():
    event = parse(ServerSentEvent("capability", json.dumps({"namespace": "chora.x"}), "8"))
    assert event.record is None and event.key is None
    assert parse(ServerSentEvent("up", "not json", "9")).data == "not json"


# -- the local copy -----------------------------------------------------------------------


def test_events_add_update_and_remove_instances():
    copy = Instances()
    copy.replace([record("a", "a-1")], 10)
    copy.apply(WatchEvent("up", 11, record("a", "a-2")))
    copy.apply(WatchEvent("unhealthy", 12, record("a", "a-1", "unhealthy")))
    assert [(r["id"], r["status"]) for r in copy.of("a")] == [("a-1", "unhealthy"),
                                                              ("a-2", "up")]
    copy.apply(WatchEvent("down", 13, record("a", "a-1", "down")))
    copy.apply(WatchEvent("down", 14, record("a", "a-2", "down")))
    assert copy.of("a") == [] and len(copy) == 0 and copy.revision == 14


def test_an_event_older_than_the_copy_is_ignored():
    copy = Instances()
    copy.replace([record("a", "a-1")], 10)
    assert not copy.apply(WatchEvent("down", 9, record("a", "a-1", "down")))
    assert not copy.apply(WatchEvent("down", 10, record("a", "a-1", "down")))
    assert [r["id"] for r in copy.of("a")] == ["a-1"]


def test_a_full_list_older_than_the_copy_does_not_replace_it():
    copy = Instances()
    copy.replace([record("a", "a-1")], 10)
    assert not copy.replace([], 4)  # a replica that lags, or one still starting
    assert len(copy) == 1
    assert copy.replace([record("b", "b-1")], 10)  # the same revision seen again is fine
    assert [r["name"] for r in copy.all()] == ["b"]


def test_a_resync_replaces_the_copy_in_one_step():
    copy = Instances()
    copy.replace([record("a", "a-1"), record("b", "b-1")], 3)
    copy.apply(WatchEvent("resync", 20, records=[record("b", "b-1"), record("c", "c-1")]))
    assert sorted(r["name"] for r in copy.all()) == ["b", "c"]
    assert copy.revision == 20


def test_readers_get_copies_that_later_events_do_not_change():
    copy = Instances()
    copy.replace([record("a", "a-1")], 1)
    seen = copy.of("a")
    copy.apply(WatchEvent("unhealthy", 2, record("a", "a-1", "unhealthy")))
    assert seen[0]["status"] == "up"


def test_a_resync_older_than_the_copy_still_replaces_it():
    copy = Instances()
    copy.replace([record("a", "a-1")], 500)
    # etcd restored from an older snapshot: the registry resyncs at a lower revision
    assert copy.apply(WatchEvent("resync", 120, records=[record("b", "b-1")]))
    assert [r["name"] for r in copy.all()] == ["b"] and copy.revision == 120
    assert copy.apply(WatchEvent("registered", 121, record("c", "c-1")))
