"""When each service beats (or is probed) next: pure, times passed in."""

from __future__ import annotations

from services.heartbeat.schedule import Schedule, next_beat


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
    s.at("late", 7.0)  # rescheduled: the old entry no longer counts
    assert s.pop_due(6.0) == []
    assert s.pop_due(7.0) == [("late", 7.0)]
    assert s.pop_due(100.0) == [], "popped names leave the schedule until put back"


def test_next_beat_keeps_phase_but_never_bursts_to_catch_up():
    assert next_beat(10.0, now=10.3, interval=10.0) == 20.0
    assert next_beat(10.0, now=35.0, interval=10.0, spread=1.0) == 45.0
    assert next_beat(10.0, now=35.0, interval=10.0, spread=0.0) == 40.0
