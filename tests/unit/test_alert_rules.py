"""The alert rules (``infrastructure/etcd/monitoring/alerts.yml``), checked with the real
``promtool`` and against what the programs and etcd export:

- promtool accepts the rules, and its unit tests (``alerts.test.yml``) pass;
- every alert has a promtool case where it fires and one where it does not;
- every metric a rule reads exists (a misspelt name would never fire, or in ``absent()``
  always fire);
- every alert tells the operator what is wrong and which command to run, and the README
  explains it;
- the thresholds tied to the programs' settings (the heartbeat's TTL, the sync's
  reconcile interval) follow those settings.

The integration test (``tests/integration/test_monitoring.py``) runs the same rules in a
real Prometheus against real processes.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.unit.monitoring_support import (
    ALERT_TESTS,
    ALERTS,
    INFRA,
    alert_rules,
    check_expressions,
    etcd_metric_names,
    metric_names,
    program_metric_names,
    promtool,
    unknown_metrics,
)

COMMANDS = ("etcdctl", "curl", "make status", "make up", "docker compose")


@pytest.fixture(scope="module")
def known_metrics(etcd) -> set[str]:
    return program_metric_names() | etcd_metric_names(etcd.endpoints[0])


def _alert_tests() -> list[dict]:
    """Every (eval_time, alertname, exp_alerts) of alerts.test.yml."""
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    return [case for group in doc["tests"] for case in group["alert_rule_test"]]


def test_promtool_accepts_the_alert_rules():
    done = promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_promtool_unit_tests_of_every_alert_pass():
    done = promtool("test", "rules", ALERT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_does_not():
    cases = _alert_tests()
    names = {rule["alert"] for rule in alert_rules()}
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    stays_quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert names - fires == set(), "alerts never seen firing in alerts.test.yml"
    assert names - stays_quiet == set(), "alerts never seen quiet in alerts.test.yml"
    assert {case["alertname"] for case in cases} <= names, "tests of alerts that do not exist"


def test_alert_names_are_unique_so_a_test_cannot_pass_on_the_wrong_rule():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))


def test_every_metric_the_alerts_read_is_exported_by_a_program_or_by_etcd(known_metrics):
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert unknown_metrics(exprs, known_metrics) == {}


def test_the_metric_name_reader_sees_names_and_ignores_functions_labels_and_keywords():
    expr = ('sum by (job) (rate(x_total{job="a", le="1e3"}[5m])) / on (job) group_left '
            'max(y) > bool 0.8 or absent(z{job="b"}) unless time() - w offset 1m')
    assert metric_names(expr) == {"x_total", "y", "z", "w"}


def test_promtool_rejects_an_expression_that_does_not_parse():
    # The dashboard test relies on this: a broken expression is an error, named.
    done = check_expressions({"fine": "up == 0", "broken": "sum by (job (up)"})
    assert done.returncode != 0
    assert '"check:broken": could not parse expression' in done.stdout + done.stderr
    assert '"check:fine"' not in done.stdout + done.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_says_what_is_wrong_and_which_command_to_run(rule):
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), "no summary"
    description = annotations.get("description", "")
    assert "Check" in description, "the description does not say what to check"
    assert any(command in description for command in COMMANDS), (
        f"the description names no command to run ({', '.join(COMMANDS)})")
    assert rule["labels"]["severity"] in ("critical", "warning")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_the_readme_explains_every_alert(rule):
    readme = (INFRA / "README.md").read_text()
    assert "\n## Monitoring\n" in readme, "infrastructure/etcd/README.md has no Monitoring section"
    section = readme.split("\n## Monitoring\n", 1)[1].split("\n## ", 1)[0]
    assert f"`{rule['alert']}`" in section


def _rule(name: str) -> dict:
    return next(rule for rule in alert_rules() if rule["alert"] == name)


def test_the_beat_lag_alert_fires_at_a_third_of_the_heartbeats_default_ttl():
    from services.heartbeat.cli import build_parser

    ttl = build_parser().parse_args(["--endpoints", "127.0.0.1:2379"]).ttl
    threshold = float(re.search(r">\s*([\d.]+)\s*$", _rule("HeartbeatBeatLagHigh")["expr"])[1])
    assert threshold == ttl / 3
    assert "heartbeat_beat_lag_seconds_bucket" in _rule("HeartbeatBeatLagHigh")["expr"]


def test_the_stall_alert_allows_three_of_the_syncs_reconcile_intervals():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    command = compose["services"]["gitops-sync"]["command"]
    interval = float(next(arg for arg in command if arg.startswith("--reconcile-interval="))
                      .split("=", 1)[1])
    expr = _rule("GitopsSyncReconcileStalled")["expr"]
    threshold = float(re.search(r">\s*([\d.]+)\s*$", expr.strip())[1])
    assert threshold == 3 * interval


def test_the_no_leader_alerts_also_fire_when_every_replica_is_gone():
    # With no replica scraped there is no series for `max(...) < 1` to find.
    for name, metric in (("GitopsSyncNoLeader", "chora_sync_leader"),
                         ("HeartbeatNoLeader", "heartbeat_leader")):
        assert f"absent({metric}" in _rule(name)["expr"].replace(" ", "")
