"""The guard (``services/registry/guard.py``) without a server: 401 / 403 for ASGI
scopes, the reload of a changed token file (and a broken edit that changes nothing),
and refusals logged at most once a minute per subject and reason."""

from __future__ import annotations

from typing import Any

import pytest

from services.registry import tokens
from services.registry.guard import AuthRefused, Guard, RefusalLog
from services.registry.metrics import Metrics


class Log:
    """Records what the guard logs (structlog's bound-logger methods)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))


def scope(token: str | None = None, method: str = "POST") -> dict[str, Any]:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return {"type": "http", "method": method, "path": "/v1/services", "headers": headers,
            "client": ("10.0.0.7", 50000)}


@pytest.fixture
def minted() -> dict[str, str]:
    return {s: tokens.mint() for s in ("reader", "orch", "admin")}


def write(path, minted: dict[str, str], *subjects: str) -> None:
    scopes = {"reader": ["read"], "orch": ["register:orch*"], "admin": ["admin"]}
    path.write_text("".join(tokens.entry_line(s, minted[s], scopes[s]) + "\n"
                            for s in subjects))


def guard_for(path, *, require_read: bool = False) -> tuple[Guard, Log, Metrics]:
    log, metrics = Log(), Metrics()
    return Guard(path, require_read=require_read, metrics=metrics, log=log), log, metrics


def test_writes_answer_401_without_a_known_token_and_403_outside_the_scope(tmp_path, minted):
    write(tmp_path / "t.yaml", minted, "reader", "orch", "admin")
    guard, _, metrics = guard_for(tmp_path / "t.yaml")
    assert guard.check_write(scope(minted["orch"]), "orchestrator", "register").subject == "orch"
    assert guard.check_write(scope(minted["admin"]), "gateway", "deregister").admin
    for token, status, reason in ((None, 401, "missing"), (tokens.mint(), 401, "unknown"),
                                  (minted["reader"], 403, "scope"),
                                  (minted["orch"], 403, "scope")):
        with pytest.raises(AuthRefused) as caught:
            guard.check_write(scope(token), "gateway", "heartbeat")
        assert (caught.value.status, caught.value.reason) == (status, reason)
        assert caught.value.challenge.startswith('Bearer realm="chora-registry"')
    assert metrics.auth_refusals.labels("scope")._value.get() == 2
    guard.check_read(scope())  # reads are open without require_read: nothing looked at


def test_with_require_read_reads_need_read_or_admin(tmp_path, minted):
    write(tmp_path / "t.yaml", minted, "reader", "orch", "admin")
    guard, _, _ = guard_for(tmp_path / "t.yaml", require_read=True)
    guard.check_read(scope(minted["reader"], "GET"))
    guard.check_read(scope(minted["admin"], "GET"))
    with pytest.raises(AuthRefused) as caught:
        guard.check_read(scope(minted["orch"], "GET"))
    assert caught.value.status == 403 and 'scope="read"' in caught.value.challenge
    with pytest.raises(AuthRefused) as caught:
        guard.check_read(scope(None, "GET"))
    assert caught.value.status == 401 and "--require-read-token" in caught.value.detail


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_previous_set(tmp_path, minted):
    path = tmp_path / "t.yaml"
    write(path, minted, "reader", "orch")
    guard, log, metrics = guard_for(path)
    assert guard.refresh() is False  # unchanged: not even read
    write(path, minted, "reader")
    assert guard.refresh() is True
    with pytest.raises(AuthRefused):
        guard.check_write(scope(minted["orch"]), "orchestrator", "register")
    assert metrics.tokens._value.get() == 1

    path.write_text("- {subject: half, sha256: 12")
    assert guard.refresh() is False
    assert guard.refresh() is False  # the same broken file: reported once
    errors = [kw for level, _, kw in log.lines if level == "error"]
    assert len(errors) == 1 and str(path) in errors[0]["error"]
    guard.check_read(scope(minted["reader"]))
    assert len(guard.tokens) == 1

    path.unlink()
    assert guard.refresh() is False and len(guard.tokens) == 1
    write(path, minted, "admin")
    assert guard.refresh() is True and guard.tokens.subjects == ["admin"]
    assert guard.refresh(force=True) is True  # SIGHUP reads it whatever the stat says
    assert metrics.token_reloads.labels("error")._value.get() == 2
    for _, _, kw in log.lines:
        assert not any(t in str(kw) for t in minted.values()), "a token was logged"


def test_a_refusal_is_logged_at_most_once_a_minute_per_subject_and_reason():
    now = [1000.0]
    log = Log()
    refusals = RefusalLog(log, clock=lambda: now[0])  # type: ignore[arg-type]
    missing = AuthRefused(401, "missing", "authentication required", "Bearer")
    scoped = AuthRefused(403, "scope", "may not", "Bearer")
    assert refusals.refused(missing, "-", scope()) is True
    assert [refusals.refused(missing, "-", scope()) for _ in range(5)] == [False] * 5
    assert refusals.refused(scoped, "orch", scope()) is True  # another subject and reason
    assert refusals.refused(scoped, "reader", scope()) is True
    now[0] += 59.9
    assert refusals.refused(missing, "-", scope()) is False
    now[0] += 0.2
    assert refusals.refused(missing, "-", scope()) is True
    lines = [kw for _, event, kw in log.lines if event == "request refused"]
    assert len(lines) == 4
    assert lines[-1]["suppressed_since_last"] == 6 and lines[-1]["peer"] == "10.0.0.7"
    assert lines[-1]["reason"] == "missing" and lines[-1]["status"] == 401
