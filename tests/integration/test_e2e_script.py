"""``infrastructure/etcd/test-e2e.py`` against a real cluster with both daemons running.

The same four checks users run against the compose stack, here against a fresh local
cluster with short timings (heartbeat TTL 3 s, beat every 1 s) so they take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from services.core import keys
from services.core.localcluster import free_ports
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.daemon_processes import (
    REPO,
    heartbeat_command,
    logs,
    running,
    sync_command,
)

SCRIPT = REPO / "infrastructure" / "etcd" / "test-e2e.py"
NAMESPACE = "chora.awareness.sap_self_evaluation"


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


def test_all_four_checks_pass_against_a_cluster_with_both_daemons(fresh_cluster, tmp_path):
    endpoints = fresh_cluster.endpoints
    with running(sync_command(endpoints), heartbeat_command(endpoints), log_dir=tmp_path), \
            Store(endpoints, timeout=2) as store:
        def beating() -> bool:
            kv = store.get(keys.capability(NAMESPACE, keys.HEALTH))
            return kv is not None and json.loads(kv.value)["heartbeat_count"] >= 1

        try:
            wait_for(beating, timeout=30, what="the first heartbeat of " + NAMESPACE)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(tmp_path)}") from None
        out = run_script("--endpoints", ",".join(endpoints), "--heartbeat-wait", "2.5",
                         "--persist-wait", "4", "--sync-wait", "10")
    assert out.returncode == 0, out.stdout + out.stderr + logs(tmp_path)
    assert "Tests passed: 4/4" in out.stdout
    assert "Pass rate: 100.0%" in out.stdout
    assert "[SUCCESS] All tests passed!" in out.stdout


def test_a_cluster_without_daemons_fails_the_sync_and_heartbeat_checks_with_exit_1(
    fresh_cluster,
):
    out = run_script("--endpoints", ",".join(fresh_cluster.endpoints), "--heartbeat-wait", "0",
                     "--persist-wait", "0", "--sync-wait", "0.5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Tests passed: 1/4" in out.stdout
    assert "Pass rate: 25.0%" in out.stdout
    assert "[TEST 1] etcd cluster health\n  [PASS]" in out.stdout


def test_one_member_down_fails_the_health_check(fresh_cluster):
    fresh_cluster.members[2].kill()
    out = run_script("--endpoints", ",".join(fresh_cluster.endpoints), "--heartbeat-wait", "0",
                     "--persist-wait", "0", "--sync-wait", "0", "--timeout", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "[TEST 1] etcd cluster health\n  [FAIL]" in out.stdout
    assert fresh_cluster.members[2].endpoint in out.stdout


def test_an_unreachable_cluster_is_a_setup_error_with_exit_2():
    (port,) = free_ports(1)
    out = run_script("--endpoints", f"127.0.0.1:{port}", "--timeout", "1", timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "[ERROR] cannot connect to etcd" in out.stdout
    assert "Tests passed" not in out.stdout


def test_the_default_timings_and_endpoints_are_the_seeds(monkeypatch):
    monkeypatch.delenv("ETCD_ENDPOINTS", raising=False)
    spec = importlib.util.spec_from_file_location("test_e2e_main", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.build_parser().parse_args([])
    assert (args.heartbeat_wait, args.persist_wait) == (12.0, 35.0)
    assert args.namespace == NAMESPACE
    assert args.endpoints.split(",") == ["127.0.0.1:2379", "127.0.0.1:2389", "127.0.0.1:2399"]
