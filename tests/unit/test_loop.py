"""The sync's /healthz verdicts, from the loop's own bookkeeping (no etcd needed)."""

import time

from services.core.errors import NoSpace
from services.gitops_sync.loop import Liveness


def test_healthz_is_503_with_a_reason_until_the_first_reconcile_reaches_etcd():
    ok, detail = Liveness().check()
    assert not ok and detail["reason"].startswith("starting")


def test_healthz_is_200_after_contact_and_503_once_etcd_was_not_reached_for_a_while():
    h = Liveness(unreachable_after=12.0)
    h.reached()
    assert h.check() == (True, h.check()[1]) and h.check()[1]["reason"] == ""
    h.contact_at = time.monotonic() - 13
    ok, detail = h.check()
    assert not ok and "not reached for 13 s" in detail["reason"]


def test_healthz_names_the_nospace_alarm_and_how_to_clear_it():
    h = Liveness()
    h.reached()
    h.failed(NoSpace.HOW_TO_CLEAR)
    ok, detail = h.check()
    assert not ok and "NOSPACE" in detail["reason"] and "alarm disarm" in detail["reason"]
    assert "unreachable" not in detail["reason"]


def test_healthz_says_which_step_is_stalled():
    h = Liveness(stall_after=10.0)
    h.reached()
    with h.running("full reconcile"):
        assert h.check()[0]
        h.step_since -= 11
        ok, detail = h.check()
        assert not ok and detail["reason"] == "stalled: full reconcile has been running for 11 s"
    assert h.check()[0]


def test_an_etcd_error_is_reported_until_etcd_answers_again():
    h = Liveness()
    h.reached()
    h.failed("UNAVAILABLE: connection refused")
    assert h.check()[1]["reason"] == "etcd unreachable: UNAVAILABLE: connection refused"
    h.reached()
    assert h.check()[0]
