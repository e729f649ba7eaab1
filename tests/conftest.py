"""Fixtures: real etcd clusters of local processes on free random ports.

``etcd`` is one 3-member cluster for the whole session (keys wiped between tests);
``fresh_cluster`` is a new cluster per test, for fault tests that kill or freeze members.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.core.localcluster import LocalCluster
from services.core.store import Store


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster.ephemeral(tmp_path_factory.mktemp("etcd-session")).start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def store(etcd: LocalCluster) -> Iterator[Store]:
    s = Store(etcd.endpoints, timeout=3.0)
    s.txn([], [])  # connection check
    _wipe(s)
    yield s
    _wipe(s)
    s.close()


def _wipe(s: Store) -> None:
    from etcd3 import etcdrpc  # test-only: a range delete has no place in the adapter

    s._kv.DeleteRange(etcdrpc.DeleteRangeRequest(key=b"\0", range_end=b"\0"), 5)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster.ephemeral(tmp_path / "etcd").start()
    yield cluster
    cluster.destroy()


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> object:
    """Poll ``condition`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # the condition may race a restart
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last!r}")


def pytest_report_header() -> list[str]:
    """Which etcd the suite runs against, and its known bugs, at the top of every run."""
    from services.core.localcluster import report_header

    return report_header()
