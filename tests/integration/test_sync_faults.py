"""The sync under real etcd failures: members SIGKILLed, the leader killed, quorum lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.sync_harness import SyncDaemon, namespaces, value
from tests.manifests import manifest


@pytest.fixture
def caps(tmp_path: Path) -> Path:
    root = tmp_path / "capabilities"
    root.mkdir()
    for i in range(10):
        (root / f"c{i}.yaml").write_text(manifest(f"chora.fault.c{i}"))
    return root


@pytest.fixture
def observer(fresh_cluster):
    s = Store(fresh_cluster.endpoints, timeout=2.0)
    yield s
    s.close()


def write_batch(root: Path, start: int, count: int, version: str = "1.0.0") -> None:
    for i in range(start, start + count):
        (root / f"c{i}.yaml").write_text(manifest(f"chora.fault.c{i}", version=version))


def expected(count: int) -> set[str]:
    return {f"chora.fault.c{i}" for i in range(count)}


def test_changes_keep_syncing_while_one_member_is_sigkilled(caps, fresh_cluster, observer):
    d = SyncDaemon(caps, fresh_cluster.endpoints, interval=3600).start()
    try:
        wait_for(lambda: namespaces(observer) == expected(10))
        write_batch(caps, 10, 20)
        fresh_cluster.members[0].kill()
        write_batch(caps, 30, 20)
        write_batch(caps, 0, 10, version="2.0.0")
        wait_for(lambda: namespaces(observer) == expected(50), timeout=20, what="50 capabilities")
        wait_for(
            lambda: all(
                value(observer, f"chora.fault.c{i}", "version") == "2.0.0" for i in range(10)
            ),
            timeout=20,
            what="edits during the kill",
        )
    finally:
        d.stop()


def test_changes_survive_the_leader_being_killed(caps, fresh_cluster, observer):
    d = SyncDaemon(caps, fresh_cluster.endpoints, interval=3600).start()
    try:
        wait_for(lambda: namespaces(observer) == expected(10))
        leader = fresh_cluster.leader()
        write_batch(caps, 10, 15)
        leader.kill()
        write_batch(caps, 25, 15)
        (caps / "c3.yaml").unlink()
        wait_for(
            lambda: namespaces(observer) == expected(40) - {"chora.fault.c3"},
            timeout=20,
            what="convergence after leader kill",
        )
    finally:
        d.stop()


def test_changes_keep_syncing_while_the_leader_is_frozen_with_sigstop(caps, fresh_cluster):
    victim = fresh_cluster.leader()
    observer = Store([m.endpoint for m in fresh_cluster.members if m is not victim], timeout=2.0)
    d = SyncDaemon(caps, fresh_cluster.endpoints, interval=3600).start()
    try:
        wait_for(lambda: namespaces(observer) == expected(10))
        victim.pause()
        write_batch(caps, 10, 20)
        write_batch(caps, 0, 5, version="2.0.0")
        (caps / "c7.yaml").unlink()
        wait_for(lambda: namespaces(observer) == expected(30) - {"chora.fault.c7"}, timeout=20,
                 what="convergence with the leader frozen")
        assert all(value(observer, f"chora.fault.c{i}", "version") == "2.0.0" for i in range(5))
    finally:
        victim.resume()
        d.stop()
        observer.close()


def test_quorum_lost_and_restored_converges_with_nothing_lost_and_no_busy_retry(
    caps, fresh_cluster, observer
):
    d = SyncDaemon(caps, fresh_cluster.endpoints, interval=3600).start()
    try:
        wait_for(lambda: namespaces(observer) == expected(10))
        failures_before = d.etcd_failures()
        survivors_down = fresh_cluster.members[1:]
        for m in survivors_down:
            m.kill()
        write_batch(caps, 10, 5)
        write_batch(caps, 0, 2, version="3.0.0")
        (caps / "c9.yaml").unlink()
        wait_for(lambda: not d.check()[0], timeout=20, what="daemon notices the outage")
        outage_start = time.monotonic()
        wait_for(
            lambda: d.etcd_failures() - failures_before >= 2,
            timeout=30,
            what="retries during the outage",
        )
        outage = time.monotonic() - outage_start
        assert d.thread.is_alive()
        for m in survivors_down:
            m.start()
        fresh_cluster.wait_healthy(30)
        want = expected(15) - {"chora.fault.c9"}
        wait_for(lambda: namespaces(observer) == want, timeout=40, what="convergence")
        wait_for(lambda: value(observer, "chora.fault.c1", "version") == "3.0.0", timeout=10)
        attempts = d.etcd_failures() - failures_before
        # Backoff, not a spin: a handful of attempts over the whole outage.
        assert attempts <= 4 + outage, attempts
        wait_for(lambda: d.check()[0], timeout=10, what="/healthz ok again")
    finally:
        d.stop()


def test_healthz_turns_503_with_the_reason_within_15_seconds_of_losing_quorum(
    caps, fresh_cluster, observer
):
    d = SyncDaemon(caps, fresh_cluster.endpoints, interval=3600).start()
    try:
        wait_for(lambda: namespaces(observer) == expected(10))
        wait_for(lambda: d.check()[0], what="healthy")
        lost = time.monotonic()
        for m in fresh_cluster.members[1:]:
            m.kill()
        wait_for(lambda: not d.check()[0], timeout=20, what="503")
        assert time.monotonic() - lost <= 15
        assert "etcd unreachable" in d.check()[1]["reason"]
        for m in fresh_cluster.members[1:]:
            m.start()
        back = time.monotonic()
        wait_for(lambda: d.check()[0], timeout=30, what="200 again")
        write_batch(caps, 10, 1)
        wait_for(lambda: namespaces(observer) == expected(11), timeout=10, what="syncing again")
        assert time.monotonic() - back < 30
    finally:
        d.stop()
