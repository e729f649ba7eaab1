"""Which services to heartbeat, and what a previous daemon left behind: pure functions
over the keys etcd holds."""

from __future__ import annotations

import json

from services.core import keys
from services.heartbeat.catalog import Adoption, Mirror, adoptions, delta, reserved_counts
from services.heartbeat.checks import NO_CHECK, TCP, Check


def test_the_mirror_follows_type_and_manifest_keys_and_ignores_the_rest():
    m = Mirror()
    assert m.apply("/chora/capabilities/a.b/type", b"service")
    assert not m.apply("/chora/capabilities/a.b/health", b"{}")
    assert not m.apply("/chora/sync/status", b"{}")
    manifest = json.dumps({"chora_service": {"health": {"tcp": "127.0.0.1:9"}}}).encode()
    m.apply("/chora/capabilities/a.b/manifest", manifest)
    m.apply("/chora/capabilities/c.d/type", b"pattern")
    assert m.services() == {"a.b": Check(TCP, "127.0.0.1:9")}
    m.apply("/chora/capabilities/a.b/type", None)
    m.apply("/chora/capabilities/a.b/manifest", None)
    assert m.services() == {}
    assert m.known.keys() == {"c.d"}


def test_an_unreadable_manifest_keeps_the_service_without_a_probe():
    m = Mirror.from_kvs({"/chora/capabilities/a.b/type": b" Service\n",
                         "/chora/capabilities/a.b/manifest": b"{not json"})
    assert m.services() == {"a.b": NO_CHECK}


def test_adoption_hints_read_lease_and_count_from_health_keys():
    hints = adoptions([
        ("/chora/capabilities/a.b/health", b'{"heartbeat_count": 9, "status": "healthy"}', 5),
        ("/chora/capabilities/c.d/health", b"not json", 6),
        ("/chora/capabilities/e.f/type", b"service", 0),
    ])
    assert hints == {"a.b": Adoption(5, 9, "healthy"), "c.d": Adoption(6, 0, None)}


def test_reserved_counts_come_from_the_counts_keys_and_join_the_adoption_hints():
    reserved = reserved_counts([
        (keys.heartbeat_count("a.b"), b"300"),
        (keys.heartbeat_count("gone.svc"), b"12"),
        (keys.heartbeat_count("bad.value"), b"twelve"),
        ("/chora/heartbeat/other", b"1"),
    ])
    assert reserved == {"a.b": 300, "gone.svc": 12}
    hints = adoptions(
        [("/chora/capabilities/a.b/health", b'{"heartbeat_count": 9}', 5)],
        {"a.b": 300, "gone.svc": 12},
    )
    assert hints == {"a.b": Adoption(5, 9, None, 300), "gone.svc": Adoption(0, 0, None, 12)}


def test_the_delta_names_added_removed_and_changed_services():
    d = delta({"a.a": NO_CHECK, "b.b": NO_CHECK}, {"b.b": Check(TCP, "h:1"), "c.c": NO_CHECK})
    assert (d.added, d.removed, d.changed) == (
        {"c.c": NO_CHECK}, ["a.a"], {"b.b": Check(TCP, "h:1")})
