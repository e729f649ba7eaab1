"""The change stream (GET /v1/watch, Server-Sent Events) against real etcd: one event per
change with the etcd revision as its id, an exact resume with Last-Event-ID, a resync
for a client the ring no longer covers, and silence for steady heartbeats."""

from __future__ import annotations

import json
import time

from services.core import keys
from services.core.kv import Put
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.registry_server import EventStream, serving


def mod_revision(store: Store, name: str, instance_id: str) -> int:
    kv = store.get(keys.service(name, instance_id))
    assert kv is not None
    return kv.mod_revision


def test_every_change_is_one_event_whose_id_is_the_etcd_revision_that_made_it(store, etcd):
    with serving(etcd.endpoints, heartbeat_timeout=1, removal_timeout=8) as reg:
        stream = EventStream(reg.url)
        try:
            iid = reg.register("watched")
            registered = stream.take(1)[0]
            assert (registered.event, registered.data["id"], registered.data["status"]) == (
                "registered", iid, "up")
            assert registered.id == mod_revision(store, "watched", iid)
            assert registered.data["record"]["interfaces"] == {"REST": "http://127.0.0.1:9000"}

            unhealthy = stream.take(1, timeout=5)[0]
            assert (unhealthy.event, unhealthy.data["status"],
                    unhealthy.data["previous_status"]) == ("status_changed", "unhealthy", "up")
            assert unhealthy.id == mod_revision(store, "watched", iid)

            assert reg.http.put(f"/v1/services/watched/{iid}/heartbeat").status_code == 204
            up = stream.take(1)[0]
            assert (up.event, up.data["status"], up.id) == (
                "status_changed", "up", mod_revision(store, "watched", iid))

            d = reg.http.delete(f"/v1/services/watched/{iid}")
            gone = stream.take(1)[0]
            assert (gone.event, gone.data["status"], gone.data["id"]) == (
                "deregistered", "down", iid)
            assert gone.id == reg.index(d) == store.revision()
            assert registered.id < unhealthy.id < up.id < gone.id
            time.sleep(0.5)
            assert stream.pending() == []  # one event per change, no more
        finally:
            stream.close()


def test_a_stream_resumed_with_last_event_id_gets_exactly_the_events_it_missed(store, etcd):
    with serving(etcd.endpoints) as reg:
        first = EventStream(reg.url)
        a = reg.register("resumed")
        last = first.take(1)[0]
        first.close()
        b = reg.register("resumed")
        c = reg.register("other")
        reg.http.delete(f"/v1/services/resumed/{a}")
        again = EventStream(reg.url, headers={"Last-Event-ID": str(last.id)})
        try:
            missed = again.take(3)
            assert [(e.event, e.data["id"]) for e in missed] == [
                ("registered", b), ("registered", c), ("deregistered", a)]
            assert [e.id for e in missed] == sorted(e.id for e in missed)
            assert missed[0].id > last.id
            d = reg.register("after")
            assert [(e.event, e.data["id"]) for e in again.take(1)] == [("registered", d)]
            assert again.pending() == []
        finally:
            again.close()
        # The query parameter works as the header does (a first connection cannot set it
        # from a browser's EventSource), and a name filter keeps one service's changes.
        only = EventStream(reg.url, params={"last_event_id": str(last.id), "name": "other"})
        try:
            assert [(e.event, e.data["id"]) for e in only.take(1)] == [("registered", c)]
            time.sleep(0.5)
            assert only.pending() == []
        finally:
            only.close()


def test_a_client_behind_the_ring_or_from_before_the_start_gets_a_resync_not_silence(
        store, etcd):
    with serving(etcd.endpoints, watch_ring=3) as reg:
        start = reg.index(reg.http.get("/v1/health"))
        ids = [reg.register(f"many-{i}") for i in range(5)]
        current = store.revision()
        behind = EventStream(reg.url, headers={"Last-Event-ID": str(start)})
        from_before = EventStream(reg.url, headers={"Last-Event-ID": "1"})
        try:
            for stream in (behind, from_before):  # both resynced on connecting
                resync = stream.take(1)[0]
                assert resync.event == "resync"
                assert sorted(s["id"] for s in resync.data["services"]) == sorted(ids)
                assert resync.id == resync.data["revision"] == current
            later = reg.register("later")
            for stream in (behind, from_before):  # and go on from there
                event = stream.take(1)[0]
                assert (event.event, event.data["id"]) == ("registered", later)
            reg.http.delete(f"/v1/services/later/{later}")
        finally:
            behind.close()
            from_before.close()
        # A client still inside the ring is not resynced.
        inside = EventStream(reg.url, headers={"Last-Event-ID": str(store.revision() - 1)})
        try:
            assert inside.take(1)[0].event == "deregistered"
        finally:
            inside.close()


def test_steady_heartbeats_of_many_instances_send_no_events(store, etcd):
    with serving(etcd.endpoints, heartbeat_timeout=2, removal_timeout=6) as reg:
        ids = [reg.register("fleet") for _ in range(40)]
        stream = EventStream(reg.url)
        try:
            end = time.monotonic() + 4  # twice the heartbeat timeout
            while time.monotonic() < end:
                for iid in ids:
                    assert reg.http.put(f"/v1/services/fleet/{iid}/heartbeat").status_code == 204
                time.sleep(0.3)
            assert stream.pending() == []
            assert stream.comments > 1  # keep-alive comments only
        finally:
            stream.close()


def test_capability_changes_are_events_but_a_health_beat_that_changes_nothing_is_not(
        store, etcd):
    ns = "chora.devex.watched"

    def health(status: str, count: int) -> Put:
        return Put(keys.capability(ns, keys.HEALTH), json.dumps({
            "status": status, "timestamp": f"2026-11-23T10:00:{count:02d}Z",
            "namespace": ns, "heartbeat_count": count}).encode())

    with serving(etcd.endpoints) as reg:
        stream = EventStream(reg.url)
        try:
            _, rev = store.txn([], [Put(keys.capability(ns, keys.TYPE), b"service"),
                                    Put(keys.capability(ns, keys.VERSION), b"1.0.0"),
                                    health("healthy", 1)])
            created = stream.take(1)[0]  # three keys, one txn: one event
            assert (created.event, created.id, created.data["namespace"]) == (
                "capability_changed", rev, ns)
            assert created.data["capability"]["version"] == "1.0.0"
            for count in range(2, 6):
                store.txn([], [health("healthy", count)])
            wait_for(lambda: reg.http.get(f"/v1/capabilities/{ns}").json()["health"][
                "heartbeat_count"] == 5, timeout=5)
            assert stream.pending() == []
            _, rev = store.txn([], [health("unhealthy", 6)])
            changed = stream.take(1)[0]
            assert (changed.id, changed.data["capability"]["health"]["status"]) == (
                rev, "unhealthy")
        finally:
            stream.close()
