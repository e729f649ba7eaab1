"""Health states and the health record: the pure rule and the contract's fields."""

from __future__ import annotations

import json
import re

from services.heartbeat.checks import HTTP, NONE, ProbeResult
from services.heartbeat.states import (
    DOWN,
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    assess,
    iso_utc,
    parse_record,
    record,
)


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


def test_a_stored_value_that_is_not_a_json_object_is_not_a_record():
    assert parse_record(b'{"status": "healthy"}') == {"status": "healthy"}
    assert parse_record(b"not json") is None
    assert parse_record(b"[1, 2]") is None
    assert parse_record(b"\xff") is None
