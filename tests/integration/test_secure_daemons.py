"""The daemons on the secure stack (TLS, client certificates, etcd auth), each with its
own identity: the heartbeat through a leader kill, the sync following its directory,
and ``infrastructure/etcd/test-e2e.py`` passing its four checks as ``reader``.

The sync takes a ``Store`` built with its identity (its command line does not pass the
TLS flags on yet); the heartbeat runs from its own flags, in-process and as a process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.core import keys
from services.core.localcluster import LocalCluster
from services.core.store import Store
from services.gitops_sync.daemon import Daemon as SyncDaemon
from services.gitops_sync.settings import Settings as SyncSettings
from services.heartbeat.daemon import Daemon as HeartbeatDaemon
from services.heartbeat.settings import Settings as HeartbeatSettings
from tests.conftest import wait_for
from tests.integration.daemon_processes import CAPABILITIES, REPO, logs, running
from tests.integration.registry_server import serving
from tests.integration.test_heartbeat import Deletions, count, publish
from tests.manifests import manifest

SCRIPT = REPO / "infrastructure" / "etcd" / "test-e2e.py"
NAMESPACE = "chora.awareness.sap_self_evaluation"


@contextmanager
def sync_running(cluster: LocalCluster, capabilities: Path) -> Iterator[SyncDaemon]:
    """The sync daemon in a thread, connected as ``gitops-sync``."""
    store = Store(cluster.endpoints, timeout=1.0, access=cluster.access("gitops-sync"))
    daemon = SyncDaemon(SyncSettings(endpoints=tuple(cluster.endpoints),
                                     capabilities=capabilities, etcd_timeout=1.0,
                                     reconcile_interval=5.0), store=store)
    thread = threading.Thread(target=daemon.run, name="secure-sync", daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(30)
        store.close()
        assert not thread.is_alive(), "sync did not stop within 30 s"


@contextmanager
def heartbeat_running(cluster: LocalCluster) -> Iterator[HeartbeatDaemon]:
    settings = HeartbeatSettings(tuple(cluster.endpoints), ttl=3, interval=1.0,
                                 etcd_timeout=1.0, etcd_access=cluster.access("heartbeat"))
    daemon = HeartbeatDaemon(settings)
    thread = threading.Thread(target=daemon.run, name="secure-heartbeat")
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(20)
        assert not thread.is_alive(), "heartbeat did not stop within 20 s"


@pytest.fixture
def fresh_secure_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster.secure(tmp_path / "etcd").start()
    yield cluster
    cluster.destroy()


def test_the_heartbeat_as_its_own_user_expires_no_key_when_the_leader_is_killed(
        fresh_secure_cluster):
    cluster = fresh_secure_cluster
    writer = Store(cluster.endpoints, timeout=1.0, access=cluster.access("gitops-sync"))
    # Reads retry for one timeout: 3 s outlasts the election the leader's kill starts.
    observer = Store(cluster.endpoints, timeout=3.0, access=cluster.access("reader"))
    names = [f"secure.s{i}" for i in range(5)]
    for ns in names:
        publish(writer, ns)  # what the sync writes, with the sync's identity
    with heartbeat_running(cluster) as daemon:
        wait_for(lambda: all(count(observer, ns) >= 1 for ns in names), 10, what="beating")
        assert daemon.store.identity == "heartbeat"
        deletions = Deletions(observer)
        before = {ns: count(observer, ns) for ns in names}  # read before the election
        cluster.leader().kill()
        wait_for(lambda: all(count(observer, ns) >= before[ns] + 6 for ns in names), 20,
                 what="beats continuing past two TTLs")
        assert deletions.stop() == []
        assert daemon.loop.liveness()[0]
    writer.close()
    observer.close()


def test_the_sync_as_its_own_user_follows_the_directory(secure_etcd, root_store, tmp_path):
    caps = tmp_path / "capabilities"
    caps.mkdir()
    for i in range(3):
        (caps / f"c{i}.yaml").write_text(manifest(f"secure.sync.c{i}"))

    def synced() -> set[str]:
        kvs, _ = root_store.get_prefix(keys.CAPABILITIES, keys_only=True)
        return {s[0] for k in kvs if (s := keys.split(k)) and s[1] == keys.TYPE}

    with sync_running(secure_etcd, caps) as daemon:
        wait_for(lambda: synced() == {f"secure.sync.c{i}" for i in range(3)}, 15, what="create")
        (caps / "c1.yaml").write_text(manifest("secure.sync.c1", version="2.0.0"))
        (caps / "c2.yaml").unlink()
        wait_for(lambda: synced() == {"secure.sync.c0", "secure.sync.c1"}, 10, what="prune")
        wait_for(lambda: root_store.get(keys.capability("secure.sync.c1", keys.VERSION))
                 .value == b"2.0.0", 10, what="update")
        status = json.loads(root_store.get(keys.SYNC_STATUS).value)
        assert status["capabilities"] == 2 and status["errors"] == []
        wait_for(lambda: daemon.check()[0], 10, what="/healthz ok (its etcd ping)")
        assert daemon.store.identity == "gitops-sync"


def test_all_four_e2e_checks_pass_against_the_secure_stack_as_reader(
        secure_etcd, root_store, tmp_path):
    endpoints = secure_etcd.endpoints
    heartbeat = [sys.executable, "-m", "services.heartbeat", "--endpoints", ",".join(endpoints),
                 "--ttl", "3", "--interval", "1", *secure_etcd.client_flags("heartbeat")]
    with sync_running(secure_etcd, CAPABILITIES), running(heartbeat, log_dir=tmp_path):
        def beating() -> bool:
            kv = root_store.get(keys.capability(NAMESPACE, keys.HEALTH))
            return kv is not None and json.loads(kv.value)["heartbeat_count"] >= 1

        try:
            wait_for(beating, timeout=30, what="the first heartbeat of " + NAMESPACE)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(tmp_path)}") from None
        out = subprocess.run(
            [sys.executable, str(SCRIPT), "--endpoints", ",".join(endpoints),
             "--heartbeat-wait", "2.5", "--persist-wait", "4", "--sync-wait", "10",
             *secure_etcd.client_flags("reader")],
            capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr + logs(tmp_path)
    assert "Tests passed: 4/4" in out.stdout


def test_the_e2e_script_without_a_certificate_is_a_setup_error(secure_etcd):
    out = subprocess.run([sys.executable, str(SCRIPT), "--endpoints",
                          ",".join(secure_etcd.endpoints), "--timeout", "1"],
                         capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "[ERROR] cannot connect to etcd" in out.stdout


def test_a_heartbeat_started_as_reader_is_refused_by_name_and_writes_nothing(
        secure_etcd, root_store, tmp_path):
    publish(root_store, "secure.refused")
    log = tmp_path / "heartbeat.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.heartbeat", "--endpoints",
             ",".join(secure_etcd.endpoints), "--ttl", "3", "--interval", "1",
             "--timeout", "1", "--log-json", *secure_etcd.client_flags("reader")],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "etcd refused user reader: permission denied" in log.read_text(),
                 20, what="the refusal in the heartbeat's log")
    finally:
        proc.terminate()
        proc.wait(15)
    assert root_store.get(keys.capability("secure.refused", keys.HEALTH)) is None


def test_the_registry_as_its_own_user_registers_serves_and_deregisters(secure_etcd, root_store):
    with serving(secure_etcd.endpoints, etcd_access=secure_etcd.access("registry")) as reg:
        iid = reg.register("secure-svc")
        assert reg.http.get("/v1/services/secure-svc").json()["id"] == iid
        stored = root_store.get(keys.service("secure-svc", iid))
        assert stored is not None and stored.lease != 0
        assert reg.http.put(f"/v1/services/secure-svc/{iid}/heartbeat").status_code == 204
        assert reg.http.get("/v1/health").json()["status"] == "healthy"
        assert reg.http.delete(f"/v1/services/secure-svc/{iid}").status_code == 204
    assert root_store.get(keys.service("secure-svc", iid)) is None
