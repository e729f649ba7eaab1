from services.core.backoff import FLOOR, Backoff


def test_the_wait_doubles_up_to_the_cap_and_resets_after_a_success():
    b = Backoff(initial=0.5, cap=10.0, rng=lambda: 1.0)
    assert [b.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.failures == 7
    b.reset()
    assert b.next() == 0.5


def test_jitter_spreads_the_wait_below_the_ceiling_but_never_below_the_floor():
    assert Backoff(initial=1.0, rng=lambda: 0.0).next() == FLOOR
    waits = [Backoff(initial=1.0, cap=1.0).next() for _ in range(200)]
    assert all(FLOOR <= w <= 1.0 for w in waits) and len(set(waits)) > 100


def test_a_thousand_failures_do_not_overflow():
    b = Backoff(initial=0.2, cap=5.0, rng=lambda: 1.0)
    for _ in range(1000):
        assert b.next() <= 5.0
