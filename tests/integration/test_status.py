"""``scripts/status.py``: what an operator sees, against a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys

from services.core import keys
from services.core.localcluster import free_ports
from services.core.store import Put
from tests.integration.daemon_processes import REPO

SCRIPT = REPO / "scripts" / "status.py"


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
