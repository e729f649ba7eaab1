"""Restarting the sync against a real 3-member cluster: what it parses and writes when
nothing, a file, or a key changed while it was down, and what its status calls files.

``--once`` prints "parsed P of N files": the figure these tests read, as a user would."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.core import keys
from services.core.kv import Delete, Put
from tests.conftest import wait_for
from tests.integration.sync_harness import SyncDaemon, run_once, status, value, written_since
from tests.manifests import corpus, manifest

N = 12


@pytest.fixture
def caps(tmp_path: Path) -> Path:
    return corpus(tmp_path / "capabilities", N)


def parsed(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    found = re.search(r"parsed (\d+) of (\d+) files", result.stdout)
    assert found, result.stdout + result.stderr
    return int(found[1]), int(found[2])


def synced(caps: Path, endpoints: list[str], code: int = 0) -> tuple[int, int]:
    result = run_once(caps, endpoints)
    assert result.returncode == code, result.stderr
    return parsed(result)


def test_an_unchanged_restart_parses_nothing_and_writes_nothing(caps, etcd, store):
    (caps / "bad.yaml").write_text("metadata: [")
    assert synced(caps, etcd.endpoints, 1) == (N + 1, N + 1)
    revision = store.revision()
    # A file that failed to load is parsed again every time: nothing vouches for it.
    assert synced(caps, etcd.endpoints, 1) == (1, N + 1)
    assert store.revision() == revision
    daemon = SyncDaemon(caps, etcd.endpoints).start()
    try:
        wait_for(lambda: daemon.synced_once, what="the daemon's first reconcile")
        assert daemon.metrics.manifests_parsed._value.get() == 1
    finally:
        daemon.stop()
    assert written_since(store, revision) == set()


def test_a_file_changed_while_the_sync_was_down_is_parsed_and_synced(caps, etcd, store):
    assert synced(caps, etcd.endpoints) == (N, N)
    (caps / "c03.yaml").write_text(manifest("chora.test.c03", version="2.0.0"))
    result = run_once(caps, etcd.endpoints)
    assert parsed(result) == (1, N) and "1 change(s) applied" in result.stdout
    assert value(store, "chora.test.c03", keys.VERSION) == "2.0.0"
    assert synced(caps, etcd.endpoints) == (0, N)


def test_a_key_edited_or_deleted_by_hand_while_the_sync_was_down_is_repaired_on_restart(
    caps, etcd, store
):
    assert synced(caps, etcd.endpoints) == (N, N)
    store.txn([], [Put(keys.capability("chora.test.c05", keys.VERSION), b"6.6.6")])
    # Only the file whose keys no longer hash to its inventory entry is parsed.
    assert synced(caps, etcd.endpoints) == (1, N)
    assert value(store, "chora.test.c05", keys.VERSION) == "1.0.0"
    store.txn([], [Delete(keys.capability("chora.test.c07", keys.TYPE))])
    assert synced(caps, etcd.endpoints) == (1, N)
    assert value(store, "chora.test.c07", keys.TYPE) == "service"
    revision = store.revision()
    assert synced(caps, etcd.endpoints) == (0, N)
    assert store.revision() == revision


def test_after_a_restart_that_parsed_nothing_drift_and_edits_are_still_synced(caps, etcd, store):
    """The daemon knows the recalled files' namespaces but not their keys: a watch event
    or a file event makes it prove them from etcd (hashes) or parse the file."""
    assert synced(caps, etcd.endpoints) == (N, N)
    daemon = SyncDaemon(caps, etcd.endpoints).start()
    try:
        wait_for(lambda: daemon.synced_once, what="the daemon's first reconcile")
        store.txn([], [Put(keys.capability("chora.test.c02", keys.VERSION), b"6.6.6")])
        wait_for(lambda: value(store, "chora.test.c02", keys.VERSION) == "1.0.0",
                 what="drift repaired")
        (caps / ".c04.yaml.tmp").write_text(manifest("chora.test.c04", version="4.0.0"))
        (caps / ".c04.yaml.tmp").replace(caps / "c04.yaml")  # whole, as an editor saves
        wait_for(lambda: value(store, "chora.test.c04", keys.VERSION) == "4.0.0",
                 what="edit synced")
        assert daemon.metrics.manifests_parsed._value.get() == 2  # c02 and c04 only
    finally:
        daemon.stop()


def test_an_inventory_without_hashes_is_upgraded_once_touching_nothing_else(caps, etcd, store):
    assert synced(caps, etcd.endpoints) == (N, N)
    old = [Put(keys.owned(f"chora.test.c{i:02}"), json.dumps({"source": f"c{i:02}.yaml"},
                                                              separators=(",", ":")).encode())
           for i in range(N)]
    store.txn([], [*old, Delete(keys.SYNC_CHECKPOINT)])  # as the previous version left it
    capability_keys, _ = store.get_prefix(keys.CAPABILITIES)
    result = run_once(caps, etcd.endpoints)
    assert parsed(result) == (N, N) and f"{N} change(s) applied" in result.stdout
    assert store.get_prefix(keys.CAPABILITIES)[0] == capability_keys  # not rewritten
    for i in range(N):
        entry = json.loads(store.get(keys.owned(f"chora.test.c{i:02}")).value)
        digest = hashlib.sha256((caps / f"c{i:02}.yaml").read_bytes()).hexdigest()
        assert entry["source"] == f"c{i:02}.yaml" and entry["sha256"] == digest
    revision = store.revision()
    assert synced(caps, etcd.endpoints) == (0, N)
    assert store.revision() == revision


def test_the_status_names_files_relative_to_the_directory_wherever_it_is(
    caps, etcd, store, tmp_path
):
    (caps / "bad.yaml").write_text("metadata: [")
    (caps / "dup.yaml").write_text(manifest("chora.test.c01"))
    result = run_once(caps, etcd.endpoints)
    errors = {e["file"]: e["reason"] for e in status(store)["errors"]}
    assert set(errors) == {"bad.yaml", "c01.yaml", "dup.yaml"}
    assert "also claimed by dup.yaml" in errors["c01.yaml"]
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {e["file"] for e in logged if e["event"] == "manifest rejected"} == set(errors)
    assert "error: bad.yaml:2:1: invalid YAML" in result.stderr
    # The same directory on another path (another machine, another checkout): same
    # status, same inventory, nothing parsed but the broken files, nothing written.
    revision = store.revision()
    elsewhere = shutil.copytree(caps, tmp_path / "elsewhere" / "capabilities")
    assert synced(elsewhere, etcd.endpoints, 1) == (3, N + 2)
    assert store.revision() == revision


PROBE = """
import sys
from services.gitops_sync import cli
code = cli.main(sys.argv[1:])
heavy = ("etcd3", "google.protobuf", "structlog", "prometheus_client", "watchdog",
         "multiprocessing")
print("loaded:", ",".join(m for m in heavy if m in sys.modules))
sys.exit(code)
"""


def test_an_unchanged_once_run_loads_no_etcd3_logging_metrics_or_watch_library(caps, etcd, store):
    """Their imports were most of an unchanged restart: they load when first needed."""
    assert synced(caps, etcd.endpoints) == (N, N)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--capabilities", str(caps), "--endpoints",
         ",".join(etcd.endpoints), "--once"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "parsed 0 of" in result.stdout
    assert result.stdout.splitlines()[-1] == "loaded: "
