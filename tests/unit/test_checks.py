"""What a manifest declares about probing a service: pure data, and nothing that does I/O."""

from __future__ import annotations

from services.heartbeat.checks import HTTP, NO_CHECK, TCP, Check, check_from_document


def test_checks_come_from_the_manifest_url_first_then_tcp_else_none():
    doc = {"chora_service": {"health": {"url": "http://h/x", "tcp": "h:1", "timeout": 2}}}
    assert check_from_document(doc) == Check(HTTP, "http://h/x", 2.0)
    assert check_from_document({"chora_service": {"health": {"tcp": "h:1"}}}) == Check(
        TCP, "h:1", 5.0)
    assert check_from_document({"chora_service": {"health": {"endpoint": "/health"}}}) == NO_CHECK
    assert check_from_document({"metadata": {}}) == NO_CHECK


def test_a_timeout_that_is_not_a_positive_number_is_the_default_and_at_most_a_minute():
    def timeout(value: object) -> float:
        doc = {"chora_service": {"health": {"tcp": "h:1", "timeout": value}}}
        return check_from_document(doc).timeout

    assert [timeout(v) for v in (True, "3", -1, 0)] == [5.0] * 4
    assert (timeout(0.5), timeout(600)) == (0.5, 60.0)
