"""The sync daemon against a real 3-member etcd cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from services.core import keys
from services.core.kv import Put
from services.core.localcluster import free_ports
from services.core.store import Store
from services.gitops_sync.reconciling import Reconciler
from tests.conftest import wait_for
from tests.integration.sync_harness import (
    SyncDaemon,
    errors_by_file,
    namespaces,
    run_once,
    status,
    value,
    written_since,
)
from tests.manifests import manifest


@pytest.fixture
def caps(tmp_path: Path) -> Path:
    root = tmp_path / "capabilities"
    root.mkdir()
    return root


@pytest.fixture
def daemon(caps, etcd, store):
    d = SyncDaemon(caps, etcd.endpoints)
    yield d
    d.stop()


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_created_updated_and_deleted_manifests_follow_the_directory(caps, daemon, store):
    for i in range(4):
        write(caps, f"c{i}.yaml", manifest(f"chora.test.c{i}"))
    daemon.start()
    wait_for(lambda: namespaces(store) == {f"chora.test.c{i}" for i in range(4)}, what="create")
    assert value(store, "chora.test.c0", "type") == "service"
    metadata = json.loads(value(store, "chora.test.c0", "metadata"))
    assert metadata["dc_identifier"] == "chora.test.c0" and metadata["type"] == "service"

    write(caps, "c1.yaml", manifest("chora.test.c1", version="1.2.0", type="Pattern"))
    wait_for(lambda: value(store, "chora.test.c1", "version") == "1.2.0", what="update")
    assert value(store, "chora.test.c1", "type") == "pattern"

    (caps / "c2.yaml").unlink()
    wait_for(lambda: "chora.test.c2" not in namespaces(store), what="delete")
    assert store.get_prefix(keys.capability("chora.test.c2", ""))[0] == {}
    assert store.get(keys.owned("chora.test.c2")) is None


def test_a_prune_never_touches_the_heartbeats_health_key_or_foreign_keys(caps, daemon, store):
    write(caps, "a.yaml", manifest("chora.test.a"))
    write(caps, "b.yaml", manifest("chora.test.b"))
    write(caps, "c.yaml", manifest("chora.test.c"))
    daemon.start()
    wait_for(lambda: len(namespaces(store)) == 3)
    health, foreign = (
        keys.capability("chora.test.a", "health"),
        keys.capability("chora.test.a", "x"),
    )
    store.txn([], [Put(health, b'{"status":"healthy"}'), Put(foreign, b"mine")])
    (caps / "a.yaml").unlink()
    wait_for(lambda: value(store, "chora.test.a", "type") is None, what="prune")
    assert store.get(health).value == b'{"status":"healthy"}'
    assert store.get(foreign).value == b"mine"


def test_a_rename_keeps_the_capability_and_updates_only_the_inventory(caps, daemon, store):
    write(caps, "old.yaml", manifest("chora.test.r"))
    write(caps, "other.yaml", manifest("chora.test.o"))
    daemon.start()
    wait_for(lambda: store.get(keys.owned("chora.test.r")) is not None)
    type_rev = store.get(keys.capability("chora.test.r", "type")).mod_revision
    os.rename(caps / "old.yaml", caps / "new.yaml")
    wait_for(lambda: b"new.yaml" in store.get(keys.owned("chora.test.r")).value, what="rename")
    assert store.get(keys.capability("chora.test.r", "type")).mod_revision == type_rev


def test_an_editor_save_through_a_temp_file_and_rename_ends_in_the_new_content(caps, daemon, store):
    write(caps, "e.yaml", manifest("chora.test.e"))
    write(caps, "f.yaml", manifest("chora.test.f"))
    daemon.start()
    wait_for(lambda: value(store, "chora.test.e", "version") == "1.0.0")
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        tmp = write(caps, ".e.yaml.swp", manifest("chora.test.e", version=version))
        os.replace(tmp, caps / "e.yaml")
    wait_for(lambda: value(store, "chora.test.e", "version") == "1.3.0", what="temp-file save")


def test_files_moved_in_and_out_of_the_directory_are_synced_and_pruned(
    caps, daemon, store, tmp_path
):
    for name in ("a", "b", "c"):
        write(caps, f"{name}.yaml", manifest(f"chora.test.{name}"))
    outside = write(tmp_path, "in.yaml", manifest("chora.test.moved"))
    daemon.start()
    wait_for(lambda: len(namespaces(store)) == 3)
    shutil.move(outside, caps / "in.yaml")
    wait_for(lambda: "chora.test.moved" in namespaces(store), what="moved in")
    shutil.move(caps / "in.yaml", tmp_path / "out.yaml")
    wait_for(lambda: "chora.test.moved" not in namespaces(store), what="moved out")


def test_a_directory_swapped_in_by_rename_is_synced_and_watched(caps, daemon, store, tmp_path):
    """A checkout or volume swapped in under the same path: inotify still watches the old
    inode, so the daemon must notice and watch the new directory (interval is 1 h here)."""
    write(caps, "a.yaml", manifest("chora.test.a"))
    write(caps, "b.yaml", manifest("chora.test.b"))
    daemon.start()
    wait_for(lambda: len(namespaces(store)) == 2)
    fresh = tmp_path / "next"
    fresh.mkdir()
    write(fresh, "a.yaml", manifest("chora.test.a"))
    write(fresh, "b.yaml", manifest("chora.test.b", version="2.0.0"))
    os.rename(caps, tmp_path / "previous")
    os.rename(fresh, caps)
    wait_for(lambda: value(store, "chora.test.b", "version") == "2.0.0", what="swapped-in dir")
    write(caps, "c.yaml", manifest("chora.test.c"))
    wait_for(lambda: "chora.test.c" in namespaces(store), what="an event in the new directory")


def test_a_burst_of_500_new_files_all_arrive(caps, daemon, store):
    write(caps, "seed.yaml", manifest("chora.burst.seed"))
    daemon.start()
    wait_for(lambda: daemon.synced_once)
    for i in range(500):
        write(caps, f"b{i:03}.yaml", manifest(f"chora.burst.b{i:03}"))
    wait_for(lambda: len(namespaces(store)) == 501, timeout=30, what="500 files")
    for i in range(0, 500, 2):
        write(caps, f"b{i:03}.yaml", manifest(f"chora.burst.b{i:03}", version="2.0.0"))
    wait_for(
        lambda: (
            value(store, "chora.burst.b498", "version") == "2.0.0"
            and sum(
                value(store, f"chora.burst.b{i:03}", "version") == "2.0.0" for i in range(0, 500, 2)
            )
            == 250
        ),
        timeout=30,
        what="250 edits",
    )


BAD_INPUTS = {
    "invalid-yaml.yaml": ("metadata: {dc_identifier: chora.bad.yaml\n", "invalid YAML"),
    "schema.yaml": ("metadata: {dc_identifier: chora.bad.schema, dc_type: Service}\n", "dc_title"),
    "namespace.yaml": (manifest("Chora/../etc"), "namespace"),
    "bomb.yaml": (
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "alias bomb",
    ),
    "huge.yaml": (manifest("chora.bad.huge") + "x: '" + "y" * (1024 * 1024) + "'\n", "at most"),
    "latin1.yaml": (None, "not UTF-8"),
    "empty.yaml": ("", "empty file"),
    # PyYAML's own constructor fails with a KeyError here: it escaped every reconcile
    "tagged.yaml": (manifest("chora.bad.tagged") + "x: !!bool maybe\n",
                    "'maybe' is not a valid !!bool"),
}


def test_every_kind_of_bad_input_is_reported_by_file_and_nothing_else_is_lost(
    caps, daemon, store, tmp_path
):
    write(caps, "good.yaml", manifest("chora.test.good"))
    write(caps, "victim.yaml", manifest("chora.test.victim"))
    write(caps, "dup1.yaml", manifest("chora.test.dup"))
    write(caps, "notes.md", "# not a manifest")
    daemon.start()
    wait_for(lambda: len(namespaces(store)) == 3)
    revision_of_victim = store.get(keys.capability("chora.test.victim", "type")).mod_revision

    for name, (text, _) in BAD_INPUTS.items():
        if text is None:
            (caps / name).write_bytes(manifest("chora.bad.latin").encode() + b"x: caf\xe9\n")
        else:
            write(caps, name, text)
    outside = write(tmp_path, "outside.yaml", manifest("chora.bad.outside"))
    os.symlink(outside, caps / "escape.yaml")
    write(caps, "dup2.yaml", manifest("chora.test.dup", version="9.0.0"))
    # The victim breaks: its last good state must stay.
    write(caps, "victim.yaml", "metadata: [broken\n")
    write(caps, "late.yaml", manifest("chora.test.late"))

    expected = {name: reason for name, (_, reason) in BAD_INPUTS.items()}
    expected |= {
        "escape.yaml": "outside",
        "dup1.yaml": "also claimed",
        "dup2.yaml": "also claimed",
        "victim.yaml": "invalid YAML",
    }
    wait_for(lambda: set(errors_by_file(store)) == set(expected), what="all errors reported")
    for name, reason in errors_by_file(store).items():
        assert expected[name] in reason, (name, reason)
    wait_for(lambda: "chora.test.late" in namespaces(store), what="others keep syncing")
    assert namespaces(store) == {
        "chora.test.good",
        "chora.test.victim",
        "chora.test.dup",
        "chora.test.late",
    }
    assert (
        store.get(keys.capability("chora.test.victim", "type")).mod_revision == revision_of_victim
    )
    assert value(store, "chora.test.dup", "version") == "1.0.0"

    write(caps, "victim.yaml", manifest("chora.test.victim", version="1.0.1"))
    (caps / "dup2.yaml").unlink()
    wait_for(lambda: "victim.yaml" not in errors_by_file(store), what="error cleared")
    wait_for(lambda: value(store, "chora.test.victim", "version") == "1.0.1")
    assert "dup1.yaml" not in errors_by_file(store)


def test_once_exits_0_when_valid_1_when_a_manifest_is_bad_2_when_etcd_is_unreachable(
    caps, etcd, store
):
    write(caps, "a.yaml", manifest("chora.test.a"))
    assert run_once(caps, etcd.endpoints).returncode == 0
    write(caps, "bad.yaml", "metadata: [")
    result = run_once(caps, etcd.endpoints)
    assert result.returncode == 1
    assert "bad.yaml" in result.stderr and "invalid YAML" in result.stderr
    dead = [f"127.0.0.1:{p}" for p in free_ports(2)]
    assert run_once(caps, dead).returncode == 2


def test_a_dry_run_prints_the_plan_and_writes_nothing(caps, etcd, store):
    write(caps, "a.yaml", manifest("chora.test.a"))
    before = store.revision()
    result = run_once(caps, etcd.endpoints, "--dry-run")
    assert "create chora.test.a: put metadata,type,version,dependencies,manifest,inventory" in (
        result.stdout
    )
    assert "nothing written" in result.stdout
    assert store.revision() == before


def test_a_restart_with_nothing_changed_writes_nothing(caps, etcd, store):
    for i in range(20):
        write(caps, f"c{i}.yaml", manifest(f"chora.test.c{i}"))
    write(caps, "bad.yaml", "metadata: [")
    assert run_once(caps, etcd.endpoints).returncode == 1
    revision = store.revision()
    assert run_once(caps, etcd.endpoints).returncode == 1
    d = SyncDaemon(caps, etcd.endpoints).start()
    try:
        wait_for(lambda: d.synced_once, what="daemon's first reconcile")
    finally:
        d.stop()
    assert written_since(store, revision) == set()


def test_mass_prune_is_refused_unless_allowed(caps, etcd, store):
    for i in range(4):
        write(caps, f"c{i}.yaml", manifest(f"chora.test.c{i}"))
    assert run_once(caps, etcd.endpoints).returncode == 0
    for i in range(3):
        (caps / f"c{i}.yaml").unlink()
    result = run_once(caps, etcd.endpoints)
    assert "refusing to prune 3 of 4 capabilities" in result.stderr
    assert len(namespaces(store)) == 4
    assert run_once(caps, etcd.endpoints, "--allow-mass-prune").returncode == 0
    assert namespaces(store) == {"chora.test.c3"}


def test_the_status_records_the_git_commit_and_whether_the_tree_is_dirty(caps, etcd, store):
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(caps), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    write(caps, "a.yaml", manifest("chora.test.a"))
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "a")
    assert run_once(caps, etcd.endpoints).returncode == 0
    assert status(store)["commit"] == git("rev-parse", "HEAD")
    assert status(store)["dirty"] is False
    write(caps, "a.yaml", manifest("chora.test.a", version="1.0.1"))
    assert run_once(caps, etcd.endpoints).returncode == 0
    assert status(store)["dirty"] is True


def test_the_daemon_serves_health_and_metrics_and_stops_cleanly_on_sigterm(caps, etcd, store):
    write(caps, "a.yaml", manifest("chora.test.a"))
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.gitops_sync",
            "--capabilities",
            str(caps),
            "--endpoints",
            ",".join(etcd.endpoints),
            "--metrics-port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def get(path: str) -> tuple[int, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()

        wait_for(lambda: get("/healthz")[0] == 200, what="/healthz")
        assert json.loads(get("/healthz")[1])["etcd"] == "reachable"
        wait_for(lambda: "chora_sync_capabilities 1.0" in get("/metrics")[1], what="metrics")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines()]
        assert {"gitops sync started", "gitops sync stopped"} <= {e["event"] for e in logs}
    finally:
        proc.kill()


def test_a_fifo_named_like_a_manifest_is_reported_and_edits_keep_flowing(caps, daemon, store):
    write(caps, "a.yaml", manifest("chora.test.a"))
    os.mkfifo(caps / "pipe.yaml")
    daemon.start()
    wait_for(lambda: "pipe.yaml" in errors_by_file(store), what="the FIFO reported")
    assert "FIFO" in errors_by_file(store)["pipe.yaml"]
    write(caps, "a.yaml", manifest("chora.test.a", version="2.0.0"))
    wait_for(lambda: value(store, "chora.test.a", "version") == "2.0.0", what="edit synced")
    (caps / "dir.yaml").mkdir()
    wait_for(lambda: "is a directory" in errors_by_file(store).get("dir.yaml", ""),
             what="a directory named like a manifest reported")


def test_emptying_the_directory_gradually_prunes_at_most_the_ratio_and_says_what_was_held(
    caps, etcd, store, tmp_path
):
    for i in range(20):
        write(caps, f"c{i:02d}.yaml", manifest(f"chora.test.c{i:02d}"))
    d = SyncDaemon(caps, etcd.endpoints).start()
    try:
        wait_for(lambda: len(namespaces(store)) == 20, what="first sync")
        away = tmp_path / "away"
        away.mkdir()
        for path in sorted(caps.glob("*.yaml")):  # an unmounting volume, a slow rsync
            path.rename(away / path.name)
            wait_for(lambda p=path: d.reconciler.index.entries.get(p.name) is None,
                     what=f"{path.name} seen gone")
        wait_for(lambda: len(status(store).get("prunes_held", [])) == 10, what="held prunes")
        assert len(namespaces(store)) == 10
        st = status(store)
        assert "already pruned in the last 600 s" in st["prune_refusal"]
        assert set(st["prunes_held"]) == namespaces(store)
    finally:
        d.stop()


def test_a_capability_whose_inventory_entry_was_deleted_is_reported_and_kept(
    caps, daemon, store
):
    write(caps, "a.yaml", manifest("chora.test.a"))
    write(caps, "b.yaml", manifest("chora.test.b"))
    write(caps, "c.yaml", manifest("chora.test.c"))
    daemon.start()
    wait_for(lambda: namespaces(store) == {"chora.test.a", "chora.test.b", "chora.test.c"})
    from etcd3 import etcdrpc

    store._kv.DeleteRange(etcdrpc.DeleteRangeRequest(key=keys.owned("chora.test.b").encode()), 5)
    (caps / "b.yaml").unlink()
    wait_for(lambda: status(store).get("unowned") == ["chora.test.b"], what="reported unowned")
    assert "chora.test.b" in namespaces(store)  # never pruned silently
    assert daemon.metrics.unowned._value.get() == 1


def test_a_key_changed_outside_the_sync_is_repaired_within_seconds(caps, daemon, store):
    write(caps, "a.yaml", manifest("chora.test.a"))
    daemon.start()
    wait_for(lambda: value(store, "chora.test.a", "version") == "1.0.0", what="first sync")
    repairs = daemon.metrics.drift_repairs._value.get()
    store.txn([], [Put(keys.capability("chora.test.a", keys.VERSION), b"6.6.6")])
    wait_for(lambda: value(store, "chora.test.a", "version") == "1.0.0", timeout=3,
             what="drift repaired")
    assert daemon.metrics.drift_repairs._value.get() == repairs + 1
    from etcd3 import etcdrpc

    store._kv.DeleteRange(
        etcdrpc.DeleteRangeRequest(key=keys.capability("chora.test.a", keys.TYPE).encode()), 5)
    wait_for(lambda: value(store, "chora.test.a", "type") == "service", timeout=3,
             what="deleted key restored")


class _Interfering(Store):
    """A store through which someone else writes a capability key just before the
    sync's first transaction: the revisions after the sync's read are then not all its."""

    interfered = False

    def txn(self, guards, ops, **kwargs):
        if not self.interfered:
            self.interfered = True
            super().txn([], [Put(keys.capability("chora.test.other", keys.VERSION), b"9.9.9")])
        return super().txn(guards, ops, **kwargs)


@pytest.mark.parametrize("interfering", [False, True])
def test_a_drift_watch_skips_the_syncs_own_writes_only_when_no_one_else_wrote_among_them(
    caps, etcd, store, interfering
):
    """A first sync of 10,000 is 70,000 events of the sync's own: a drift watch begun at
    the read replayed them all (~1.7 s of CPU) before it passed on the first edit. It
    begins after them, unless another write came in between: that one must be seen."""
    for i in range(3):
        write(caps, f"c{i}.yaml", manifest(f"chora.test.c{i}"))
    through = _Interfering(etcd.endpoints) if interfering else store
    rec = Reconciler(caps, through)
    try:
        read = store.revision()
        outcome = rec.full()
    finally:
        rec.close()
        if through is not store:
            through.close()
    assert outcome.revisions and not outcome.errors
    assert rec.revision == (read if interfering else max(outcome.revisions))
