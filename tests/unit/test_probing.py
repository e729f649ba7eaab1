"""Probes: the HTTP and TCP probes against local servers, and how the loop schedules
probes and takes their results (a fake probe and a fake clock; no etcd)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.heartbeat.checks import HTTP, NO_CHECK, TCP, Check
from services.heartbeat.metrics import Metrics
from services.heartbeat.probing import Probes, probe_http, probe_tcp, run_probe
from services.heartbeat.sessions import Session
from tests.conftest import wait_for


@pytest.fixture
def http_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the probes themselves ------------------------------------------------------------------


def test_an_http_probe_passes_on_2xx_and_says_why_it_failed_otherwise(http_url):
    assert probe_http(f"{http_url}/204", 2.0) == (True, "")
    assert probe_http(f"{http_url}/500", 2.0) == (False, f"GET {http_url}/500: HTTP 500")
    ok, reason = probe_http(f"http://127.0.0.1:{closed_port()}/", 2.0)
    assert not ok and reason.startswith("GET ") and "refused" in reason.lower()
    assert probe_http("ftp://h/x", 2.0) == (False, "url 'ftp://h/x' is not http(s)")


def test_a_tcp_probe_passes_when_the_port_accepts_a_connection():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert probe_tcp(f"127.0.0.1:{listener.getsockname()[1]}", 2.0) == (True, "")
    ok, reason = probe_tcp(f"127.0.0.1:{closed_port()}", 2.0)
    assert not ok and reason.startswith("connect 127.0.0.1:")
    assert probe_tcp("no-port", 2.0) == (False, "tcp target 'no-port' is not host:port")


def test_run_probe_picks_the_probe_the_check_names(http_url):
    assert run_probe(Check(HTTP, f"{http_url}/503", 2.0))[0] is False
    assert run_probe(Check(TCP, f"127.0.0.1:{closed_port()}", 2.0))[0] is False
    assert run_probe(NO_CHECK) == (True, "")


# -- scheduling and results -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeProbe:
    """Answers what ``answer`` says once ``release`` is set; counts its calls."""

    def __init__(self) -> None:
        self.answer = (True, "")
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def __call__(self, check: Check) -> tuple[bool, str]:
        self.calls += 1
        self.release.wait(10)
        return self.answer


@pytest.fixture
def rig() -> Iterator[tuple[Probes, FakeProbe, Clock, dict[str, Session]]]:
    clock, probe = Clock(), FakeProbe()
    probes = Probes(interval=10.0, workers=4, metrics=Metrics(), clock=clock, probe=probe)
    yield probes, probe, clock, {}
    probe.release.set()
    probes.close()


def add(sessions: dict[str, Session], probes: Probes, ns: str, check: Check,
        now: float) -> Session:
    s = sessions[ns] = Session(ns, check, f"/k/{ns}")
    probes.plan(ns, check, now)
    return s


def settle(probes: Probes, sessions: dict[str, Session], s: Session) -> None:
    """Wait for the probe in flight to finish, then collect its result."""
    wait_for(lambda: s.probe is not None and s.probe.done(), 5, what="probe finished")
    probes.collect(sessions)


def test_a_new_service_is_probed_at_once_then_once_per_interval(rig):
    probes, probe, clock, sessions = rig
    s = add(sessions, probes, "a.b", Check(TCP, "h:1", 2.0), clock.now)
    probes.start_due(clock.now, sessions)
    settle(probes, sessions, s)
    assert s.last is not None and s.last.ok and probe.calls == 1
    clock.now += 9.9
    probes.start_due(clock.now, sessions)
    assert probe.calls == 1
    clock.now += 0.1
    probes.start_due(clock.now, sessions)
    settle(probes, sessions, s)
    assert probe.calls == 2
    assert probes.metrics.probes.labels("tcp", "ok")._value.get() == 2


def test_a_service_without_a_check_is_never_probed(rig):
    probes, probe, clock, sessions = rig
    add(sessions, probes, "a.b", NO_CHECK, clock.now)
    probes.start_due(clock.now + 100, sessions)
    assert probe.calls == 0


def test_a_hanging_probe_counts_as_failed_after_its_timeout_and_is_not_started_twice(rig):
    probes, probe, clock, sessions = rig
    probe.release.clear()
    s = add(sessions, probes, "a.b", Check(HTTP, "http://h/", 2.0), clock.now)
    probes.start_due(clock.now, sessions)
    wait_for(lambda: probe.calls == 1, 5, what="probe started")
    clock.now += 10.0  # the next probe is due; the first still hangs (10 s > 2 s + 1 s)
    probes.start_due(clock.now, sessions)
    assert probe.calls == 1
    assert s.last is not None and not s.last.ok
    assert s.last.reason == "probe still running after 10s" and s.failing_since == clock.now


def test_a_result_for_a_check_that_changed_meanwhile_is_dropped(rig):
    probes, probe, clock, sessions = rig
    probe.release.clear()
    probe.answer = (False, "HTTP 500")
    s = add(sessions, probes, "a.b", Check(HTTP, "http://h/old", 2.0), clock.now)
    probes.start_due(clock.now, sessions)
    wait_for(lambda: probe.calls == 1, 5, what="probe started")
    old = s.probe
    s.change_check(Check(HTTP, "http://h/new", 2.0))
    probes.plan("a.b", s.check, clock.now)
    probe.release.set()
    wait_for(lambda: old is not None and old.done(), 5, what="old probe finished")
    probe.answer = (True, "")
    probes.start_due(clock.now, sessions)  # the new check's first probe
    settle(probes, sessions, s)
    assert s.last is not None and s.last.ok and s.failing_since is None
    assert probes.metrics.probes.labels("http", "fail")._value.get() == 0


def test_a_result_for_a_service_that_left_is_dropped(rig):
    probes, probe, clock, sessions = rig
    s = add(sessions, probes, "a.b", Check(TCP, "h:1", 2.0), clock.now)
    probes.start_due(clock.now, sessions)
    wait_for(lambda: s.probe is not None and s.probe.done(), 5, what="probe finished")
    del sessions["a.b"]
    probes.forget("a.b")
    probes.collect(sessions)
    assert s.last is None
    probes.start_due(clock.now + 100, sessions)
    assert probe.calls == 1
