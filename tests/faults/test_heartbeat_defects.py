"""The heartbeat's fault defects (issue items 1, 6 and 7), against what the fixed daemon
promises: a restart within the TTL never blinks a health key, even after a kill -9; a
restart with another ``--ttl`` moves every key onto a lease of that TTL; and
``heartbeat_count`` strictly increases for ever (reserved under
``/chora/heartbeat/counts/{ns}``), across an expiry and a service leaving and rejoining.
The sync runs beside it, as in production: the heartbeat learns its services from etcd.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest
from etcd3 import etcdrpc

from services.core import keys
from services.core.store import Store
from tests.faults.harness import Rig, Row, judge, wait_until
from tests.faults.processes import Daemon

pytestmark = pytest.mark.fault
TABLE_ORDER = 3  # rows of the results table: held, then sync defects, then heartbeat's


def granted_ttl(store: Store, lease: int) -> int:
    """The TTL a lease was granted with (not what remains of it); -1 if unknown. The
    adapter has no call for it, so the test asks etcd's Lease service directly."""
    resp = store._lease.LeaseTimeToLive(etcdrpc.LeaseTimeToLiveRequest(ID=lease), 2.0)
    return resp.grantedTTL if resp.TTL >= 0 else -1


def beats_beyond(rig: Rig, base: dict[str, int], extra: int) -> bool:
    counts = rig.counts()
    return all(counts.get(ns, -1) >= base.get(ns, 0) + extra for ns in rig.services)


def kill_right_after_a_beat_of(rig: Rig, hb: Daemon, ns: str, timeout: float) -> None:
    """kill -9 the heartbeat the moment it has written ``ns``'s record (seen by a watch):
    the crash then falls at a known point of its beat cycle."""
    key = keys.capability(ns, keys.HEALTH)
    watch = rig.store.watch_prefix(key, rig.store.revision() + 1)
    timer = threading.Timer(timeout, watch.cancel)
    timer.start()
    try:
        for events in watch:
            if any(e.kind == "put" and e.kv.key == key for e in events):
                hb.kill()
                return
    finally:
        timer.cancel()
        watch.cancel()
    raise AssertionError(f"no beat of {ns} within {timeout}s")


@pytest.mark.timeout(240)
def test_heartbeat_killed_and_restarted_late_within_the_ttl_deletes_no_health_key(
    rig: Rig, row: Row
) -> None:
    """kill -9 (no final refresh, nothing handed over), and a restart that comes late but
    within the TTL: production timings (TTL 30 s, beat 10 s). Beats follow the services'
    order through each interval, so a crash just before the last service's beat leaves
    that service's lease the oldest, and a restarted daemon also reaches it last: if it
    spreads adopted leases over a beat interval, as it does new services, that lease runs
    out first. Restarted when it has 5 s left: every adopted lease must be refreshed at
    once. Watched for two beats after the restart."""
    row.scenario = "heartbeat kill -9, restarted with 5 s of a lease left (TTL 30 s) (defect 1)"
    ttl, interval, left_at_restart = 30, 10.0, 5
    names = rig.populate(services=20, patterns=2)
    rig.sync()
    rig.wait_converged(30)
    hb = rig.heartbeat(ttl=ttl, interval=interval)  # learns all 20 at once, in key order
    rig.wait_beating(2 * interval)
    baseline, start = rig.snapshot()
    last, before_last = names[19], names[18]
    lease = rig.health()[last].lease

    kill_right_after_a_beat_of(rig, hb, before_last, 2 * interval)
    killed = time.monotonic()
    wait_until(lambda: rig.store.lease_ttl(lease) <= left_at_restart, ttl,
               f"{last}'s lease {left_at_restart} s from its end")
    left = rig.store.lease_ttl(lease)
    hb.start()
    restarted = time.monotonic()
    before = rig.counts()
    rig.wait_beating(left_at_restart + 2 * interval, beyond=before)
    row.recovery_s = round(time.monotonic() - restarted, 1)
    wait_until(lambda: beats_beyond(rig, before, 2), 3 * interval, "two beats each after restart")

    history = judge(rig, row, baseline, start, kept=list(rig.expected), live=rig.services)
    row.note = (f"restarted {restarted - killed:.1f} s after the kill, {left} s before the "
                f"oldest lease's end; {row.expiries} of {len(rig.services)} keys deleted")
    assert row.keys_lost == 0
    assert row.expiries == 0, history.health_expiries(rig.services)


@pytest.mark.timeout(180)
def test_heartbeat_restarted_with_a_shorter_ttl_puts_every_health_key_on_a_lease_of_it(
    rig: Rig, row: Row
) -> None:
    """An operator lowers --ttl from 15 to 6 s and restarts the daemon: the leases it
    adopts were granted with 15 s, and etcd cannot change a lease's TTL, so each key must
    move to a lease granted with 6 s (and its record say "ttl": 6) without blinking;
    otherwise a dead daemon's keys would outlive the TTL the operator configured."""
    row.scenario = "heartbeat restarted with --ttl 15 -> 6 (defect 6)"
    rig.populate(services=5, patterns=1)
    rig.sync()
    first = rig.heartbeat(ttl=15, interval=3.0)
    rig.wait_converged(30)
    rig.wait_beating(15)
    baseline, start = rig.snapshot()
    old = {ns: kv.lease for ns, kv in rig.health().items()}

    assert first.terminate() == 0
    rig.heartbeat(ttl=6, interval=2.0)
    restarted = time.monotonic()

    def on_new_ttl() -> bool:
        health = rig.health()
        return all(
            ns in health
            and json.loads(health[ns].value).get("ttl") == 6
            and granted_ttl(rig.store, health[ns].lease) == 6
            for ns in rig.services
        )

    try:
        wait_until(on_new_ttl, 12, "every health key on a 6 s lease, its record saying ttl 6")
        row.recovery_s = round(time.monotonic() - restarted, 1)
    finally:
        health = rig.health()
        row.note = "granted TTLs now: " + ", ".join(
            sorted({str(granted_ttl(rig.store, kv.lease)) for kv in health.values()}))
    switched = rig.counts()
    # Past the old leases' 15 s: whatever became of them must not take a key along.
    wait_until(lambda: beats_beyond(rig, switched, 9), 30, "beats past the old TTL")
    history = judge(rig, row, baseline, start, kept=list(rig.expected), live=rig.services)
    assert row.expiries == 0, history.health_expiries(rig.services)
    assert not set(old.values()) & {kv.lease for kv in rig.health().values()}


@pytest.mark.timeout(180)
def test_heartbeat_count_strictly_increases_across_an_expiry_and_a_service_rejoining(
    rig: Rig, row: Row
) -> None:
    """Two ways a health key disappears on purpose: the daemon stopped for longer than
    the TTL (keys expire), and a service leaving the set (its manifest removed) and
    rejoining. Consumers use heartbeat_count to tell a new beat from a replayed one, so
    over the whole history every key's counts must strictly increase."""
    row.scenario = "heartbeat_count across an expiry and a leave + rejoin (defect 7)"
    ttl, interval = 4, 1.0
    rig.populate(services=3, patterns=1)
    rig.sync()
    hb = rig.heartbeat(ttl=ttl, interval=interval)
    rig.wait_converged(30)
    rig.wait_beating(10)
    baseline, start = rig.snapshot()
    wait_until(lambda: beats_beyond(rig, {}, 3), 10, "three beats each")

    assert hb.terminate() == 0  # leaves the leases: the keys expire one TTL later
    wait_until(lambda: not rig.health(), 3 * ttl, "every health key expired")
    hb.start()
    restarted = time.monotonic()
    rig.wait_beating(3 * interval + 5)
    row.recovery_s = round(time.monotonic() - restarted, 1)

    leaver = rig.services[0]
    rig.remove(leaver)
    wait_until(lambda: leaver not in rig.health(), 10, "the leaver's key revoked")
    rig.write(leaver)
    wait_until(lambda: leaver in rig.health(), 10, "the rejoined service beating")
    rejoined = rig.counts()
    wait_until(lambda: beats_beyond(rig, rejoined, 2), 10, "two more beats each")

    kept = [ns for ns in rig.expected if ns != leaver]
    history = judge(rig, row, baseline, start, kept=kept, live=None)
    regressions = {}
    for ns in rig.services:
        counts = history.heartbeat_counts(ns)
        bad = [(a, b) for a, b in itertools.pairwise(counts) if b <= a]
        if bad:
            regressions[ns] = bad
    row.note = (f"count went back: {sorted(regressions)}" if regressions
                else "strictly increasing for every service")
    row.expiries = None  # the keys went away on purpose here
    assert regressions == {}
    assert history.health_expiries([]) == []
    assert all(keys.capability(ns, keys.HEALTH) in history.final() for ns in rig.services)
