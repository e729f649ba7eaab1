"""Fixtures of the fault matrix, and the recording of its results table.

Each scenario gets a fresh 3-member cluster on free ports in its own temp dir (other
suites run beside it on this machine), and fills in a ``row``: what it measured, written
as one JSON line when the test ends, passed or failed, so the table shows the numbers of
a failing scenario too. ``scripts/fault_table.py`` prints the markdown table from them.
Where: ``$FAULT_RESULTS``, else ``.pytest_cache/d/faults/results.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

import pytest

from services.core.localcluster import LocalCluster, etcd_version
from tests.faults.harness import Rig, Row

ROW = pytest.StashKey[Row]()
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
RESULTS_ENV = "FAULT_RESULTS"


def results_path(config: pytest.Config) -> Path:
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("faults")) / "results.jsonl"
    return Path(config.rootpath) / ".pytest_cache" / "d" / "faults" / "results.jsonl"


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Row:
    r = Row(scenario=request.node.name)
    request.node.stash[ROW] = r
    return r


@pytest.fixture
def make_rig(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Rig]]:
    """``make_rig(extra_flags={...})``: a started fresh cluster (etcd flags such as a tiny
    ``quota-backend-bytes`` for NOSPACE) and the rig around it; torn down afterwards, with
    the daemons' logs printed when the scenario failed."""
    made: list[tuple[Rig, LocalCluster]] = []

    def make(extra_flags: Mapping[str, str] | None = None) -> Rig:
        cluster = LocalCluster.ephemeral(tmp_path / "etcd", extra_flags=extra_flags).start()
        rig = Rig(cluster, tmp_path)
        made.append((rig, cluster))
        return rig

    yield make
    failed = any(r.failed for r in request.node.stash.get(REPORTS, {}).values())
    for rig, cluster in made:
        if failed:
            print(f"\n=== daemon logs ===\n{rig.logs_tail()}")
        rig.close()
        cluster.destroy()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    item.stash.setdefault(REPORTS, {})[report.when] = report
    if report.when == "teardown" and item.get_closest_marker("fault") is not None:
        _record(item)


def _record(item: pytest.Item) -> None:
    reports = item.stash.get(REPORTS, {})
    if any(r.failed for r in reports.values()):
        result = "failed"
    elif any(r.skipped for r in reports.values()):
        result = "skipped"
    else:
        result = "passed"
    row = item.stash.get(ROW, Row(scenario=item.name))
    path, line, _ = item.location
    entry = {
        **asdict(row),
        "test": item.nodeid,
        "order": [getattr(getattr(item, "module", None), "TABLE_ORDER", 9), path, line or 0],
        "result": result,
        "duration_s": round(sum(r.duration for r in reports.values()), 1),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "etcd": etcd_version(),
    }
    failed = next((r for r in reports.values() if r.failed), None)
    if failed is not None:
        crash = getattr(failed.longrepr, "reprcrash", None)
        message = getattr(crash, "message", "") or failed.longreprtext.strip()
        entry["failure"] = (message.strip().splitlines() or [""])[0][:300]
    target = results_path(item.config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as out:  # one short append per test: safe across xdist workers
        out.write(json.dumps(entry) + "\n")
