"""A real Prometheus (Debian's ``prometheus`` binary) scraping a real stack: a 3-member
cluster, gitops-sync, the heartbeat and the registry as processes on free ports of
127.0.0.1, with the very ``alerts.yml`` operators get.

The Prometheus config is ``prometheus.yml`` (the ``make up`` one) with its jobs and
labels kept and only the targets moved to this run's ports, scraped and evaluated every
second. The rules are ``alerts.yml`` with one change, made in a temporary copy: every
``for:`` becomes 1 s, so an alert that would wait a minute in production fires within
seconds here; expressions, labels and annotations are untouched. (What ``for:`` does is
the promtool unit tests' subject, ``alerts.test.yml``.)

Every wait polls Prometheus' HTTP API against a deadline; none sleeps a fixed time.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml

from services.core.localcluster import LocalCluster, free_ports
from tests.integration.daemon_processes import heartbeat_command, logs, running, sync_command
from tests.integration.test_client_harness import RegistryProcess
from tests.unit.monitoring_support import (
    ALERTS,
    PROMETHEUS_LOCAL,
    binary,
    dashboard_expressions,
)

FOR = "1s"  # every rule's `for:` in this test (production: 1m to 15m)
DEADLINE = 20.0  # seconds for each thing awaited


def _alerts_with_short_for(path: Path) -> None:
    """alerts.yml with every ``for:`` set to ``FOR``; nothing else changed."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _config(path: Path, rules: Path, targets: dict[str, str]) -> None:
    """prometheus.yml with each target replaced by ``targets[job or member]``, scraping
    and evaluating every second."""
    doc = yaml.safe_load(PROMETHEUS_LOCAL.read_text())
    doc["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                     "evaluation_interval": "1s"}
    doc["rule_files"] = [str(rules)]
    for job in doc["scrape_configs"]:
        for static in job["static_configs"]:
            key = static.get("labels", {}).get("member", job["job_name"])
            static["targets"] = [targets.pop(key)]
    assert targets == {}, f"not in prometheus.yml: {targets}"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@contextmanager
def _prometheus(config: Path, data: Path, log_path: Path) -> Iterator[str]:
    """The real binary on a free port of 127.0.0.1, its TSDB in ``data``; its URL.
    Stopped (SIGTERM, then SIGKILL) at exit."""
    (port,) = free_ports(1)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=data.parent)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _api(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/{path}", timeout=2) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def _poll(condition: Callable[[], object], what: str, log_dir: Path,
          seen: Callable[[], object] | None = None) -> object:
    """``condition()`` until truthy; after ``DEADLINE`` s fail with ``what``, what was
    last seen (``seen()``, else the last answer) and every process's log (Prometheus'
    included)."""
    deadline = time.monotonic() + DEADLINE
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except OSError as exc:  # Prometheus not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    if seen is not None:
        last = seen()
    raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}; last seen: "
                         f"{last!r}\n{logs(log_dir)}")


def _query(url: str, expr: str) -> list[dict] | str:
    """An instant query's result, or Prometheus' error message for it."""
    try:
        return _api(url, "query?" + urllib.parse.urlencode({"query": expr}))["result"]
    except urllib.error.HTTPError as exc:  # 400/422: the expression, not the server
        return json.loads(exc.read()).get("error", str(exc))


def _targets_down(url: str) -> dict[str, str]:
    """scrape URL -> health of every target not up (all of them before the first scrape)."""
    active = _api(url, "targets")["activeTargets"]
    return {t["scrapeUrl"]: t["health"] for t in active if t["health"] != "up"} if active else {
        "(no target yet)": "unknown"}


def _active_alerts(url: str) -> list[tuple[str, str, str]]:
    return sorted((a["labels"]["alertname"], a["labels"].get("job", ""), a["state"])
                  for a in _api(url, "alerts")["alerts"])


def _evaluated_since(url: str, since: float) -> bool:
    """Every rule group has been evaluated after wall time ``since``."""
    groups = _api(url, "rules")["groups"]
    return bool(groups) and all(
        _timestamp(group["lastEvaluation"]) > since for group in groups)


def _timestamp(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times carry nanoseconds, which datetime does not take."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(match[1] + zone).timestamp() + float(f"0.{match[2] or 0}")


def test_prometheus_scrapes_the_stack_quietly_answers_the_dashboard_and_alerts_when_the_sync_stops(
        fresh_cluster: LocalCluster, tmp_path: Path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    sync_port, heartbeat_port = free_ports(2)
    registry = RegistryProcess(fresh_cluster.endpoints, log_dir)
    metrics_flags = ["--metrics-host", "127.0.0.1", "--metrics-port"]
    sync = [*sync_command(fresh_cluster.endpoints), *metrics_flags, str(sync_port)]
    heartbeat = [*heartbeat_command(fresh_cluster.endpoints), *metrics_flags,
                 str(heartbeat_port)]

    rules, config = tmp_path / "alerts.yml", tmp_path / "prometheus.yml"
    _alerts_with_short_for(rules)
    _config(config, rules, {
        **{m.name: m.endpoint for m in fresh_cluster.members},
        "gitops-sync": f"127.0.0.1:{sync_port}",
        "heartbeat": f"127.0.0.1:{heartbeat_port}",
        "registry": f"127.0.0.1:{registry.port}",
    })

    with running(sync, heartbeat, log_dir=log_dir) as (sync_proc, _):
        registry.start()
        try:
            with _prometheus(config, tmp_path / "tsdb",
                             log_dir / "prometheus.log") as url:
                _poll(lambda: not _targets_down(url), "all 6 targets up", log_dir,
                      seen=lambda: _targets_down(url))
                all_up = time.time()
                assert len(_api(url, "targets")["activeTargets"]) == 6

                # A healthy stack raises nothing: a misspelt metric in an absent(), a wrong
                # job name or a threshold below normal would show here as an active alert,
                # and a rule that fails on real series (say, a many-to-many match) as an
                # evaluation error.
                _poll(lambda: _evaluated_since(url, all_up) and not _active_alerts(url),
                      "no alert active on the healthy stack", log_dir,
                      seen=lambda: _active_alerts(url))
                errors = {rule["name"]: rule.get("lastError")
                          for group in _api(url, "rules")["groups"] for rule in group["rules"]
                          if rule["health"] != "ok"}
                assert errors == {}

                # What the dashboard asks, this Prometheus answers without an error; and
                # its leader panels show exactly one leader per program.
                failed = {}
                for name, expr in dashboard_expressions("1m").items():
                    answer = _query(url, expr)
                    if isinstance(answer, str):
                        failed[name] = answer
                assert failed == {}
                for metric, job in (("chora_sync_leader", "gitops-sync"),
                                    ("heartbeat_leader", "heartbeat")):
                    (series,) = _query(url, f"sum by (job) ({metric})")
                    assert (series["metric"], series["value"][1]) == ({"job": job}, "1")

                sync_proc.send_signal(signal.SIGTERM)
                assert sync_proc.wait(15) == 0
                expected = {("ChoraTargetDown", "gitops-sync", "firing"),
                            ("GitopsSyncNoLeader", "gitops-sync", "firing")}
                _poll(lambda: expected <= set(_active_alerts(url)),
                      f"{sorted(expected)} after the sync stopped", log_dir,
                      seen=lambda: _active_alerts(url))
                alerts = _api(url, "alerts")["alerts"]
                about_others = [a["labels"] for a in alerts
                                if a["labels"].get("job") != "gitops-sync"]
                assert about_others == [], "alerts about what still runs"
                down = next(a for a in alerts if a["labels"]["alertname"] == "ChoraTargetDown")
                assert down["labels"]["instance"] == f"127.0.0.1:{sync_port}"
                assert (f"curl -s http://127.0.0.1:{sync_port}/healthz"
                        in down["annotations"]["description"])
        finally:
            registry.stop()
