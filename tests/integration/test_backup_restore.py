"""``scripts/backup.py``: snapshot, lose the cluster, restore into a new one, all keys back."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.request

import pytest

from services.core import admin, keys, topology
from services.core.kv import Put
from services.core.localcluster import LocalCluster
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.daemon_processes import (
    CAPABILITIES,
    REPO,
    heartbeat_command,
    logs,
    running,
    sync_command,
)

SCRIPT = REPO / "scripts" / "backup.py"
NAMESPACE = "chora.awareness.sap_self_evaluation"


def _module():
    spec = importlib.util.spec_from_file_location("backup_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


backup = _module()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=REPO)


def everything(store: Store) -> dict[str, bytes]:
    kvs, _ = store.get_prefix("/chora/")
    return {k: kv.value for k, kv in kvs.items()}


def test_a_snapshot_restored_into_a_new_cluster_brings_every_key_back(tmp_path):
    old = LocalCluster.ephemeral(tmp_path / "old").start()
    members = old.members_spec
    try:
        sync = subprocess.run([*sync_command(old.endpoints), "--once"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        assert sync.returncode == 0, sync.stderr
        with Store(old.endpoints) as store:
            lease = store.grant(60)
            store.txn([], [Put(keys.capability(NAMESPACE, keys.HEALTH),
                               b'{"heartbeat_count": 7}', lease),
                           Put("/chora/heartbeat/note", b"bookkeeping")])
            before = everything(store)
        assert sum(k.endswith("/type") for k in before) == len(list(CAPABILITIES.glob("*.y*ml")))

        snapshot = tmp_path / "backups" / "snap.db"
        out = cli("save", "--endpoints", ",".join(old.endpoints), "--out", str(snapshot))
        assert out.returncode == 0, out.stderr
        assert f"{len(before)}" in out.stdout or "keys" in out.stdout
        assert snapshot.is_file() and not snapshot.with_name("snap.db.part").exists()

        # While the cluster runs, a restore is refused and touches nothing.
        with pytest.raises(backup.BackupError, match="running"):
            backup.restore(snapshot, tmp_path / "new", members)
        assert not (tmp_path / "new").exists()
    finally:
        old.destroy()  # SIGKILL every member and wipe its data
    assert not (tmp_path / "old").exists()

    restored = backup.restore(snapshot, tmp_path / "new", members)
    assert [p.name for p in restored] == [m.name for m in members]
    new = LocalCluster(tmp_path / "new", members).start()
    try:
        with Store(new.endpoints) as store:
            assert everything(store) == before
            assert len(admin.members(store)) == 3
            new.leader()
    finally:
        new.destroy()


def test_restore_moves_old_member_directories_aside_instead_of_deleting_them(tmp_path):
    cluster = LocalCluster.ephemeral(tmp_path / "c").start()
    members = cluster.members_spec
    try:
        with Store(cluster.endpoints) as store:
            store.txn([], [Put("/chora/x", b"1")])
        snapshot = tmp_path / "s.db"
        backup.save(cluster.endpoints, snapshot)
        cluster.stop()
        marker = tmp_path / "c" / "etcd1" / "marker"
        marker.write_text("old data")
        backup.restore(snapshot, tmp_path / "c", members)
        moved = list((tmp_path / "c").glob("pre-restore-*/etcd1/marker"))
        assert [p.read_text() for p in moved] == ["old data"]
        assert not marker.exists()
        cluster.start()
        with Store(cluster.endpoints) as store:
            assert store.get("/chora/x").value == b"1"
    finally:
        cluster.destroy()


def test_daemons_resume_against_a_restored_cluster(tmp_path):
    old = LocalCluster.ephemeral(tmp_path / "old").start()
    members = old.members_spec
    try:
        sync = subprocess.run([*sync_command(old.endpoints), "--once"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        assert sync.returncode == 0, sync.stderr
        snapshot = tmp_path / "snap.db"
        backup.save(old.endpoints, snapshot)
    finally:
        old.destroy()
    backup.restore(snapshot, tmp_path / "new", members)
    new = LocalCluster(tmp_path / "new", members).start()
    commands = [sync_command(new.endpoints), heartbeat_command(new.endpoints)]
    try:
        with running(*commands, log_dir=tmp_path) as procs, Store(new.endpoints) as store:
            def beats() -> int:
                kv = store.get(keys.capability(NAMESPACE, keys.HEALTH))
                return json.loads(kv.value)["heartbeat_count"] if kv else 0

            first = wait_for(beats, timeout=30, what="a heartbeat after the restore")
            wait_for(lambda: beats() > first, timeout=15, what="the next heartbeat")
            status = json.loads(store.get(keys.SYNC_STATUS).value)
            assert status["errors"] == []
            assert all(p.poll() is None for p in procs), logs(tmp_path)
        # Nothing to do for the sync: the restored keys already match the manifests.
        again = subprocess.run([*sync_command(new.endpoints), "--dry-run"], cwd=REPO,
                               capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 0 and again.stdout.startswith("0 change(s)"), again.stdout
    finally:
        new.destroy()


def _topology_ports_free() -> bool:
    for m in topology.MEMBERS:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{m.client_port}/health", timeout=0.5)
        except OSError:
            continue
        return False
    return True


@pytest.mark.skipif(not _topology_ports_free(), reason="a `make up` cluster is running here")
def test_the_make_restore_command_rebuilds_the_three_local_member_directories(tmp_path, etcd):
    snapshot = tmp_path / "s.db"
    assert cli("save", "--endpoints", ",".join(etcd.endpoints), "--out", str(snapshot)
               ).returncode == 0
    out = cli("restore", str(snapshot), "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 0, out.stderr
    for m in topology.MEMBERS:
        assert (tmp_path / "data" / m.name / "member" / "snap" / "db").is_file()
    assert "make up" in out.stdout
    missing = cli("restore", str(tmp_path / "nope.db"), "--data-dir", str(tmp_path / "d2"))
    assert missing.returncode == 1 and "no snapshot" in missing.stderr
    shutil.rmtree(tmp_path / "data")
