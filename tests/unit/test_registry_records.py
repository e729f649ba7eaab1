"""The registry's input rules and records (pure): names, ids, the registration body, the
stored record, and bad input turned into one detail that names the field."""

from __future__ import annotations

import json

import pytest

from services.registry.records import (
    MAX_BODY_BYTES,
    BadInput,
    build_record,
    check_capability,
    check_instance_id,
    check_name,
    check_reference,
    is_name,
    iso,
    new_id,
    parse_registration,
    registered,
    with_status,
)


def body(**fields: object) -> bytes:
    return json.dumps({"name": "orchestrator", "version": "1.0.0",
                       "interfaces": {"REST": "http://127.0.0.1:9000"}, **fields}).encode()


@pytest.mark.parametrize("name", ["orchestrator", "test-service", "a", "0", "a.b_c-d",
                                  "chora.devex.registry", "a" * 63])
def test_names_the_seeds_and_capability_namespaces_use_are_valid(name):
    assert is_name(name) and check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "Orchestrator", "a/b", "..", "a..b", ".a", "-a",
                                  "_a", "a b", "a" * 64, "é", "a\n", "a\x00"])
def test_names_that_could_escape_a_key_or_break_the_rule_are_refused(name):
    assert not is_name(name)
    with pytest.raises(BadInput) as err:
        check_name(name)
    assert err.value.field == "name" and err.value.status == 422


def test_an_instance_id_is_its_name_dash_eight_lowercase_hex_and_nothing_else():
    iid = new_id("orch")
    assert check_instance_id("orch", iid) == iid and len(iid) == len("orch-") + 8
    for bad in ("orch-ABCDEF12", "orch-1234567", "other-12345678", "orch-12345678/x", ".."):
        with pytest.raises(BadInput) as err:
            check_instance_id("orch", bad)
        assert err.value.field == "id"


def test_filter_values_and_namespaces_follow_their_own_rules():
    assert check_reference(None, "dependency") is None
    assert check_reference("chora.infrastructure.sap_framework", "dependency")
    with pytest.raises(BadInput):
        check_reference("a..b", "dependency")
    assert check_capability("chora.devex.registry") == "chora.devex.registry"
    with pytest.raises(BadInput) as err:
        check_capability("single")
    assert err.value.field == "namespace"


def test_a_registration_becomes_the_seeds_record_with_custom_metadata_kept():
    reg = parse_registration(body(metadata={"description": "d", "tags": ["core"],
                                            "dependencies": ["manifest"], "team": "x",
                                            "limits": {"cpu": 2}}))
    record = build_record(reg, "orchestrator-0123abcd", "2026-11-23T10:00:00.000Z")
    assert list(record) == ["name", "id", "version", "interfaces", "metadata", "status",
                            "last_heartbeat", "registered_at"]
    assert record["metadata"] == {"description": "d", "dependencies": ["manifest"],
                                  "tags": ["core"], "environment": None, "team": "x",
                                  "limits": {"cpu": 2}}
    assert record["status"] == "up"
    assert record["last_heartbeat"] == record["registered_at"] == "2026-11-23T10:00:00.000Z"
    no_meta = build_record(parse_registration(body()), "orchestrator-0123abcd", "t")
    assert no_meta["metadata"] == {"description": None, "dependencies": [], "tags": [],
                                   "environment": None}
    changed = json.loads(with_status(record, "unhealthy", "later"))
    assert (changed["status"], changed["last_heartbeat"]) == ("unhealthy", "later")
    assert changed["registered_at"] == record["registered_at"]


@pytest.mark.parametrize(("raw", "field", "status"), [
    (b"", "body", 422),
    (b"{", "body", 422),
    (b"null", "body", 422),
    (b'"text"', "body", 422),
    (b"\xff\xfe\xfd", "body", 422),
    (b"[" * 30_000, "body", 422),  # deeper than the JSON parser recurses
    (b'{"name":"a","version":"1","interfaces":{"REST":"http://x"},"metadata":{"x":Infinity}}',
     "body", 422),
    (b"{" + b" " * MAX_BODY_BYTES + b"}", "body", 413),
    (body(name="Bad"), "name", 422),
    (body(name=None), "name", 422),
    (body(version=""), "version", 422),
    (body(version=1.0), "version", 422),
    (body(interfaces={}), "interfaces", 422),
    (body(interfaces={"REST": "localhost:9000"}), "interfaces.REST", 422),
    (body(interfaces={"rest": "http://"}), "interfaces.rest", 422),
    (body(interfaces={"REST": "http://h:99999"}), "interfaces.REST", 422),
    (body(interfaces={"": "x"}), "interfaces.", 422),
    (body(interfaces={"CLI": 5}), "interfaces.CLI", 422),
    (body(metadata={"tags": [1]}), "metadata.tags.0", 422),
    (body(metadata={"dependencies": ["../etc"]}), "metadata.dependencies.0", 422),
    (body(metadata={"deep": json.loads("[" * 20 + "]" * 20)}), "metadata", 422),
    (body(extra=True), "extra", 422),
])
def test_bad_bodies_are_refused_with_the_field_named(raw, field, status):
    with pytest.raises(BadInput) as err:
        parse_registration(raw)
    assert err.value.status == status
    assert str(err.value).startswith(f"{field}"), str(err.value)
    assert err.value.body()["detail"] == str(err.value)


def test_several_problems_are_all_named_in_one_detail():
    with pytest.raises(BadInput) as err:
        parse_registration(b'{"name": "Bad"}')
    assert str(err.value).startswith("name: ")
    assert "version: required" in str(err.value) and "interfaces: required" in str(err.value)


def test_the_registration_answer_tells_the_client_how_often_to_beat():
    record = build_record(parse_registration(body()), "orchestrator-0123abcd", "t")
    assert registered(record, 30, 60) == {
        "id": "orchestrator-0123abcd", "name": "orchestrator", "version": "1.0.0",
        "status": "up", "registered_at": "t", "heartbeat_interval": 10,
        "heartbeat_timeout": 30, "removal_timeout": 60}
    assert registered(record, 2, 4)["heartbeat_interval"] == 0.667


def test_times_are_utc_milliseconds_ending_in_z():
    stamp = iso()
    assert len(stamp) == len("2026-11-23T10:00:00.000Z") and stamp.endswith("Z")
