"""Shared by the monitoring tests (``test_alert_rules.py``, ``test_monitoring_config.py``,
``tests/integration/test_monitoring.py``): where the files are, the real ``promtool``, and
which metric names exist.

Metric names are checked against what the programs and etcd really export, not against a
list kept here: the programs' ``Metrics`` classes are instantiated and rendered as
Prometheus text (so counters carry prometheus_client's ``_total``, histograms their
``_bucket``/``_sum``/``_count``), and etcd's names come from a running member's
``/metrics``. A list kept by hand would agree with the rules by construction.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infrastructure" / "etcd"
MONITORING = INFRA / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
PROMETHEUS_LOCAL = MONITORING / "prometheus.yml"
PROMETHEUS_COMPOSE = MONITORING / "prometheus.compose.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "chora-registry.json"

HOW_TO_INSTALL = ("install Debian's package prometheus: `sudo apt-get install -y prometheus` "
                  "(`make test` installs it when it can)")

# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}

# PromQL words that look like metric names to a tokenizer.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "atan2", "inf", "nan"}


def binary(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; a missing one fails the test (never a
    skip: a skipped check would pass `make test` without checking anything)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {HOW_TO_INSTALL}", pytrace=False)
    return path


def promtool(*args: str | Path, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def alert_rules() -> list[dict]:
    """Every alerting rule of alerts.yml, with its group's name under ``group``."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [{**rule, "group": group["name"]} for group in doc["groups"]
            for rule in group["rules"] if "alert" in rule]


def check_expressions(exprs: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` over a temporary rule file holding each expression as a
    recording rule: promtool parses (and type-checks) every one, and its message names the
    rule (the key of ``exprs``) of an expression that does not parse."""
    rules = [{"record": f"check:{name}", "expr": expr} for name, expr in exprs.items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exprs.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
        return promtool("check", "rules", path)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (inside ``{}`` or a ``by (...)`` list), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def dashboard_expressions(rate_interval: str = "1m") -> dict[str, str]:
    """Every panel query of the dashboard, keyed ``panel_<id>_<refId>``, with Grafana's
    ``$__rate_interval`` (no PromQL) replaced by a duration."""
    exprs = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            exprs[f"panel_{panel['id']}_{target['refId']}"] = expr
    return exprs


def names_in_exposition(text: str) -> set[str]:
    """Every series name a Prometheus text exposition offers, including those of families
    that have no sample yet (a labelled metric nothing has touched)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def program_metric_names() -> set[str]:
    """What gitops-sync, the heartbeat and the registry export, from their Metrics
    classes (each builds its own registry: nothing global is touched)."""
    from prometheus_client import generate_latest

    from services.gitops_sync.metrics import Metrics as SyncMetrics
    from services.heartbeat.metrics import Metrics as HeartbeatMetrics
    from services.registry.metrics import Metrics as RegistryMetrics

    names: set[str] = set()
    for metrics in (SyncMetrics(), HeartbeatMetrics(), RegistryMetrics()):
        names |= names_in_exposition(generate_latest(metrics.registry).decode())
    return names


def etcd_metric_names(endpoint: str) -> set[str]:
    """What a running etcd member exports on its client port's /metrics."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as response:
        return names_in_exposition(response.read().decode())


def unknown_metrics(exprs: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    """Per expression, the metric names it reads that nothing exports."""
    unknown = {name: metric_names(expr) - known - PROMETHEUS_OWN
               for name, expr in exprs.items()}
    return {name: missing for name, missing in unknown.items() if missing}
