"""One service's session: probe history, adoption, and counts that never repeat."""

from __future__ import annotations

from services.heartbeat.catalog import Adoption
from services.heartbeat.checks import HTTP, NO_CHECK, TCP, Check, ProbeResult
from services.heartbeat.sessions import COUNT_BLOCK, Session
from services.heartbeat.states import HEALTHY, UNKNOWN


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


def test_a_new_check_forgets_the_old_probe_history():
    s = Session("a.b", Check(TCP, "h:1"), "/k")
    s.record_probe(ProbeResult(False, "refused", 5.0))
    s.change_check(Check(TCP, "h:2"))
    assert (s.last, s.failing_since) == (None, None)
    assert s.assess(6.0, 30).status == UNKNOWN


def test_a_session_starts_above_both_the_key_count_and_the_reserved_count():
    s = Session.start("a.b", NO_CHECK, "/k", Adoption(7, 41, "healthy", reserved=140))
    assert (s.count, s.ceiling, s.adopted) == (140, 140, True)
    assert s.next_count(100) == 241  # 141 is above what is reserved: reserve up to 241
    s.reserved(241)
    assert [s.next_count(100) for _ in range(3)] == [0, 0, 0]
    s = Session.start("a.b", NO_CHECK, "/k", Adoption(7, 41, "healthy", reserved=0))
    assert (s.count, s.ceiling) == (41, 0)


def test_a_hint_without_a_lease_continues_the_count_on_a_new_lease():
    s = Session.start("a.b", NO_CHECK, "/k", Adoption(0, 0, None, reserved=300))
    assert (s.lease, s.count, s.adopted, s.respread) == (0, 300, False, False)
    assert s.next_count() == 301 + COUNT_BLOCK
