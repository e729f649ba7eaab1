"""Pure logic of the heartbeat: schedule, states, records, service set, CLI."""

from __future__ import annotations

import json
import re

import pytest

from services.heartbeat.catalog import Adoption, Mirror, adoptions, diff
from services.heartbeat.checks import (
    HTTP,
    NO_CHECK,
    NONE,
    TCP,
    Check,
    ProbeResult,
    check_from_document,
)
from services.heartbeat.cli import build_parser, settings_from
from services.heartbeat.schedule import Schedule, next_beat
from services.heartbeat.sessions import COUNT_BLOCK, Session
from services.heartbeat.states import (
    DOWN,
    HEALTHY,
    STATES,
    UNHEALTHY,
    UNKNOWN,
    assess,
    iso_utc,
    record,
)


def test_schedule_spreads_new_services_evenly_over_one_interval():
    s = Schedule()
    s.spread([f"s{i}" for i in range(10)], now=100.0, interval=10.0)
    assert [round(t, 6) for _, t in s.pop_due(200.0)] == [100.0 + i for i in range(10)]


def test_schedule_returns_only_what_is_due_earliest_first_and_forgets_removed():
    s = Schedule()
    s.at("late", 5.0)
    s.at("early", 1.0)
    s.at("gone", 2.0)
    s.remove("gone")
    assert s.pop_due(3.0) == [("early", 1.0)]
    assert s.next_due() == 5.0
    s.at("late", 7.0)  # rescheduled: the old entry no longer counts
    assert s.pop_due(6.0) == []
    assert s.pop_due(7.0) == [("late", 7.0)]
    assert s.next_due() is None


def test_next_beat_keeps_phase_but_never_bursts_to_catch_up():
    assert next_beat(10.0, now=10.3, interval=10.0) == 20.0
    assert next_beat(10.0, now=35.0, interval=10.0, spread=1.0) == 45.0
    assert next_beat(10.0, now=35.0, interval=10.0, spread=0.0) == 40.0


def test_a_service_without_a_check_is_healthy_and_says_no_probe_backs_it():
    a = assess(NONE, None, None, now=0.0, ttl=30)
    assert (a.status, a.renew) == (HEALTHY, True)


def test_probe_history_moves_a_service_from_unknown_to_healthy_to_unhealthy_to_down():
    assert assess(HTTP, None, None, 0.0, 30).status == UNKNOWN
    assert assess(HTTP, ProbeResult(True, "", 1.0), None, 1.0, 30).status == HEALTHY
    bad = ProbeResult(False, "HTTP 500", 10.0)
    a = assess(HTTP, bad, 10.0, now=40.0, ttl=30)
    assert (a.status, a.renew, a.reason) == (UNHEALTHY, True, "HTTP 500")
    a = assess(HTTP, bad, 10.0, now=40.1, ttl=30)
    assert (a.status, a.renew) == (DOWN, False)


def test_a_session_remembers_when_failing_started_and_forgets_it_on_success():
    s = Session("a.b", Check(TCP, "127.0.0.1:1"), "/k")
    s.record_probe(ProbeResult(False, "refused", 5.0))
    s.record_probe(ProbeResult(False, "refused", 6.0))
    assert s.failing_since == 5.0
    s.record_probe(ProbeResult(True, "", 7.0))
    assert s.failing_since is None


def test_an_adopted_healthy_service_stays_healthy_until_its_first_probe_finishes():
    s = Session.start("a.b", Check(HTTP, "http://x"), "/k", Adoption(7, 41, HEALTHY))
    assert (s.lease, s.count, s.adopted) == (7, 41, True)
    assert s.assess(0.0, 30).status == HEALTHY


def test_record_carries_the_contract_fields_with_a_utc_z_timestamp():
    stamp = iso_utc(1_700_000_000.25)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    value = json.loads(record(
        namespace="a.b", count=3, assessment=assess(HTTP, ProbeResult(False, "boom", 1), 1, 2, 30),
        check_kind=HTTP, timestamp=stamp, ttl=30, interval=10, failing_since=stamp,
    ))
    assert value == {
        "status": "unhealthy", "timestamp": stamp, "namespace": "a.b", "heartbeat_count": 3,
        "check": "http", "ttl": 30, "interval": 10, "reason": "boom", "failing_since": stamp,
    }


def test_checks_come_from_the_manifest_url_first_then_tcp_else_none():
    doc = {"chora_service": {"health": {"url": "http://h/x", "tcp": "h:1", "timeout": 2}}}
    assert check_from_document(doc) == Check(HTTP, "http://h/x", 2.0)
    assert check_from_document({"chora_service": {"health": {"tcp": "h:1"}}}) == Check(
        TCP, "h:1", 5.0)
    assert check_from_document({"chora_service": {"health": {"endpoint": "/health"}}}) == NO_CHECK
    assert check_from_document({"metadata": {}}) == NO_CHECK


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
    assert m.entries.keys() == {"c.d"}


def test_adoption_hints_read_lease_and_count_from_health_keys():
    hints = adoptions([
        ("/chora/capabilities/a.b/health", b'{"heartbeat_count": 9, "status": "healthy"}', 5),
        ("/chora/capabilities/c.d/health", b"not json", 6),
        ("/chora/capabilities/e.f/type", b"service", 0),
    ])
    assert hints == {"a.b": Adoption(5, 9, "healthy"), "c.d": Adoption(6, 0, None)}


def test_diff_names_added_removed_and_changed_services():
    d = diff({"a.a": NO_CHECK, "b.b": NO_CHECK}, {"b.b": Check(TCP, "h:1"), "c.c": NO_CHECK})
    assert (d.added, d.removed, d.changed) == (
        {"c.c": NO_CHECK}, ["a.a"], {"b.b": Check(TCP, "h:1")})


def test_cli_defaults_are_production_and_environment_overrides_them(monkeypatch):
    args = build_parser().parse_args([])
    assert (args.ttl, args.interval, args.capabilities, args.revoke_on_exit) == (
        30, 10.0, None, False)
    monkeypatch.setenv("HEARTBEAT_TTL", "9")
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "3")
    monkeypatch.setenv("ETCD_ENDPOINTS", "127.0.0.1:1,127.0.0.1:2")
    s = settings_from(build_parser().parse_args([]))
    assert (s.ttl, s.interval, s.endpoints) == (9, 3.0, ("127.0.0.1:1", "127.0.0.1:2"))


def test_cli_refuses_an_interval_not_shorter_than_the_ttl():
    with pytest.raises(ValueError, match="shorter than ttl"):
        settings_from(build_parser().parse_args(["--ttl", "5", "--interval", "5"]))


def test_help_documents_every_health_state_and_both_exit_modes():
    text = build_parser().format_help()
    assert STATES.splitlines()[0] in text
    for word in ("healthy", "unhealthy", "unknown", "down", "--revoke-on-exit", "adopts"):
        assert word in text


def test_help_says_where_the_count_lives_and_what_restarts_after_a_crash_or_ttl_change_do():
    text = build_parser().format_help()
    for phrase in ("/chora/heartbeat/counts/{ns}", "never repeats", "kill -9",
                   "whatever time it had left", "TTL other than --ttl",
                   f"raises it {COUNT_BLOCK} ahead", f"jump by up to {COUNT_BLOCK}"):
        assert phrase in text
