"""How many operations the sync puts in one transaction (``--max-txn-ops``), against
real etcd members started with their own ``--max-txn-ops``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core import keys
from services.core.localcluster import LocalCluster
from services.core.store import Store
from tests.conftest import _wipe
from tests.integration.sync_harness import run_once
from tests.manifests import corpus

N = 300  # ~6 operations each: 1,800 operations


@pytest.fixture
def caps(tmp_path: Path) -> Path:
    return corpus(tmp_path / "capabilities", N)


def synced_namespaces(store: Store) -> set[str]:
    kvs, _ = store.get_prefix(keys.SYNC_OWNED)
    return {k[len(keys.SYNC_OWNED):] for k in kvs}


def test_a_first_sync_in_wide_transactions_takes_fewer_revisions(caps, etcd, store):
    # The test cluster runs etcd with --max-txn-ops 1024, as make up does.
    start = store.revision()
    wide = run_once(caps, etcd.endpoints, "--max-txn-ops", "1024")
    assert wide.returncode == 0, wide.stderr
    assert len(synced_namespaces(store)) == N
    wide_revisions = store.revision() - start

    _wipe(store)
    start = store.revision()
    narrow = run_once(caps, etcd.endpoints)  # etcd's default: 128
    assert narrow.returncode == 0, narrow.stderr
    narrow_revisions = store.revision() - start

    # One revision per transaction, plus the status and the checkpoint.
    assert wide_revisions <= 2 + 3
    assert narrow_revisions >= 2 + 14


def test_a_sync_wider_than_its_cluster_allows_falls_back_to_etcds_default(caps, tmp_path):
    cluster = LocalCluster.ephemeral(tmp_path / "etcd", size=1,
                                     extra_flags={"max-txn-ops": "128"}).start()
    store = Store(cluster.endpoints, timeout=3.0)
    try:
        result = run_once(caps, cluster.endpoints, "--max-txn-ops", "1024", "--log-json")
        assert result.returncode == 0, result.stderr
        assert len(synced_namespaces(store)) == N
        warnings = [line for line in map(json.loads, result.stderr.splitlines())
                    if line["event"].startswith("etcd accepts fewer operations")]
        assert len(warnings) == 1
        assert warnings[0]["max_txn_ops"] == 1024 and warnings[0]["now"] == 128
        assert "too many operations" in warnings[0]["error"]
    finally:
        store.close()
        cluster.destroy()
