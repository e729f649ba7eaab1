"""``scripts/status.py``: what an operator sees, against a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core import keys
from services.core.errors import NoSpace
from services.core.kv import Put
from services.core.localcluster import LocalCluster, etcd_binary, free_ports
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.daemon_processes import REPO
from tests.integration.sync_harness import SyncDaemon

SCRIPT = REPO / "scripts" / "status.py"
TINY_QUOTA = 1024 * 1024  # bytes: a few large puts exceed it


def status(endpoints: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--endpoints", ",".join(endpoints), "--timeout", "1",
         *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def seed(store) -> None:
    sync_status = {
        "commit": "0123456789abcdef0123", "dirty": True, "capabilities": 2,
        "errors": [{"file": "capabilities/broken.yaml", "reason": "invalid YAML at line 3",
                    "namespace": None}],
    }
    lease = store.grant(30)
    store.txn([], [
        Put(keys.capability("a.one", keys.TYPE), b"service"),
        Put(keys.capability("a.two", keys.TYPE), b"pattern"),
        Put(keys.capability("a.one", keys.HEALTH), b'{"heartbeat_count": 1}', lease),
        Put(keys.SYNC_STATUS, json.dumps(sync_status).encode()),
    ])


def test_json_report_lists_members_leader_sync_and_live_health_keys(etcd, store):
    seed(store)
    out = status(etcd.endpoints, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert sorted(m["name"] for m in report["members"]) == ["etcd1", "etcd2", "etcd3"]
    assert all(m["healthy"] and m["db_size"] > 0 for m in report["members"])
    assert report["leader"] == etcd.leader().name
    assert sum(m["is_leader"] for m in report["members"]) == 1
    assert report["capabilities"] == 2
    assert report["live_health_keys"] == 1 and report["health_keys"] == ["a.one"]
    assert report["last_sync"]["commit"] == "0123456789abcdef0123"
    assert report["last_sync"]["errors"][0]["file"] == "capabilities/broken.yaml"


def test_table_is_readable_in_a_terminal(etcd, store):
    seed(store)
    out = status(etcd.endpoints)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert text.splitlines()[0].split()[:4] == ["MEMBER", "ENDPOINT", "HEALTH", "ROLE"]
    assert text.count("healthy") == 3 and text.count("leader  ") >= 1
    assert "capabilities:  2" in text and "live health:   1  (a.one)" in text
    assert "commit 0123456789ab (dirty tree), 2 capabilities, 1 error(s)" in text
    assert "error: capabilities/broken.yaml: invalid YAML at line 3" in text
    assert text.rstrip().endswith("status:        OK")


def test_an_empty_registry_says_the_sync_never_ran(etcd, store):
    out = status(etcd.endpoints)
    assert out.returncode == 0
    assert "last sync:     never" in out.stdout and "capabilities:  0" in out.stdout


def test_a_dead_member_is_shown_down_and_the_exit_code_is_1(fresh_cluster):
    dead = fresh_cluster.members[1]
    dead.kill()
    out = status(fresh_cluster.endpoints, "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    down = [m for m in report["members"] if not m["healthy"]]
    assert [m["endpoint"] for m in down] == [dead.endpoint]
    assert report["leader"] is not None and report["quorum"] is True
    text = status(fresh_cluster.endpoints).stdout
    assert "DOWN" in text and "status:        DEGRADED" in text


def test_no_reachable_member_exits_2():
    out = status([f"127.0.0.1:{p}" for p in free_ports(2)])
    assert out.returncode == 2
    assert "cannot reach etcd" in out.stderr


@pytest.fixture
def tiny_quota_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh cluster whose members refuse writes beyond 1 MiB: NOSPACE within seconds."""
    cluster = LocalCluster.ephemeral(
        tmp_path / "etcd", extra_flags={"quota-backend-bytes": str(TINY_QUOTA)}
    ).start()
    yield cluster
    cluster.destroy()


def fill_until_nospace(store: Store) -> int:
    """Overwrite one key with 128 KiB values until etcd refuses with NOSPACE; the puts it
    took. etcd checks the quota against a DB size that lags its writes by a commit or
    two, so the count varies (20-60 here); the loop is bounded in puts and in time."""
    value = b"x" * (128 * 1024)
    deadline = time.monotonic() + 60
    for puts in range(1, 1000):
        try:
            store.txn([], [Put("/fill/blob", value)])
        except NoSpace:
            return puts
        assert time.monotonic() < deadline, f"no NOSPACE after {puts} puts in 60 s"
    raise AssertionError("no NOSPACE after 1000 puts of 128 KiB")


def etcdctl(cluster: LocalCluster, *args: str) -> str:
    out = subprocess.run(
        [etcd_binary("etcdctl"), f"--endpoints={','.join(cluster.endpoints)}",
         "--command-timeout=10s", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, f"etcdctl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def test_a_raised_nospace_alarm_is_named_with_its_cure_and_status_is_ok_once_cleared(
    tiny_quota_cluster,
):
    cluster = tiny_quota_cluster
    with Store(cluster.endpoints, timeout=3.0) as store:
        fill_until_nospace(store)

        out = status(cluster.endpoints, "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["alarms"] == ["NOSPACE"]
        assert report["how_to_clear"] == {"NOSPACE": NoSpace.HOW_TO_CLEAR}
        assert all(m["healthy"] for m in report["members"]) and report["quorum"]
        text = status(cluster.endpoints).stdout
        assert "alarms:        NOSPACE" in text
        assert f"  NOSPACE: {NoSpace.HOW_TO_CLEAR}" in text
        assert text.rstrip().endswith("status:        ALARM NOSPACE")

        # The cure, exactly as HOW_TO_CLEAR and the README tell an operator.
        revision = store.revision()
        etcdctl(cluster, "compact", str(revision))
        etcdctl(cluster, "defrag", "--cluster")
        etcdctl(cluster, "alarm", "disarm")

        out = status(cluster.endpoints, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["alarms"] == [] and report["how_to_clear"] == {}
        assert all(m["db_size"] < TINY_QUOTA for m in report["members"])
        text = status(cluster.endpoints).stdout
        assert "alarms:        none" in text
        assert text.rstrip().endswith("status:        OK")
        store.txn([], [Put("/fill/small", b"accepted again")])


def test_an_ok_cluster_reports_no_alarms(etcd, store):
    report = json.loads(status(etcd.endpoints, "--json").stdout)
    assert report["alarms"] == [] and report["how_to_clear"] == {}
    assert "alarms:        none" in status(etcd.endpoints).stdout


def test_the_report_names_each_daemons_leader_and_standbys(etcd, store, tmp_path):
    """Two syncs (in this process: they carry the same host:pid name, so the order is
    what tells them apart), no heartbeat at all."""
    first = SyncDaemon(tmp_path, etcd.endpoints).start()
    try:
        wait_for(lambda: first.check()[1].get("role") == "leader", what="the first leading")
        second = SyncDaemon(tmp_path, etcd.endpoints).start()
        try:
            wait_for(lambda: second.check()[1].get("role") == "standby",
                     what="the second standing by")
            report = json.loads(status(etcd.endpoints, "--json").stdout)
            name = first.check()[1]["candidate"]
            assert report["daemons"] == {"gitops-sync": [name, name], "heartbeat": []}
            text = status(etcd.endpoints).stdout
            assert f"gitops-sync:   leader {name}; standby {name}" in text
            assert "heartbeat:     NO LEADER (no instance running)" in text
        finally:
            second.stop()
    finally:
        first.stop()
