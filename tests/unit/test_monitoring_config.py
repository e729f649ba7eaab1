"""Static checks of the monitoring set-up (no Docker engine here to run compose):

- both Prometheus configs pass ``promtool check config`` (which loads alerts.yml too), and
  scrape what really runs: ``prometheus.yml`` the members' client ports of
  ``services/core/topology.py`` and the programs' ports of ``scripts/up.py`` (``make
  up``), ``prometheus.compose.yml`` the same jobs under docker-compose.yml's service names
  and ports;
- compose's ``monitoring`` profile runs Prometheus and Grafana only when asked, mounts
  files that exist where the configs expect them, and Grafana's data source is that
  Prometheus;
- the Grafana dashboard is valid JSON, every panel has the provisioned data source and
  queries, every query parses (``promtool``) and reads metrics that exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from services.core import topology
from tests.unit.monitoring_support import (
    ALERTS,
    DASHBOARD,
    GRAFANA,
    INFRA,
    PROMETHEUS_COMPOSE,
    PROMETHEUS_LOCAL,
    alert_rules,
    check_expressions,
    dashboard_expressions,
    etcd_metric_names,
    program_metric_names,
    promtool,
    unknown_metrics,
)
from tests.unit.test_infrastructure_static import _up_script

PROGRAM_JOBS = {"gitops-sync", "heartbeat", "registry"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _targets(config_path: Path) -> dict[str, list[tuple[str, dict]]]:
    """job -> [(target, labels)] of a Prometheus config's static configs."""
    config = yaml.safe_load(config_path.read_text())
    jobs: dict[str, list[tuple[str, dict]]] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job["static_configs"]:
            for target in static["targets"]:
                jobs.setdefault(job["job_name"], []).append((target, static.get("labels", {})))
    return jobs


# -- Prometheus configs ------------------------------------------------------------------


@pytest.mark.parametrize("config", [PROMETHEUS_LOCAL, PROMETHEUS_COMPOSE], ids=lambda p: p.name)
def test_promtool_accepts_the_prometheus_config_and_the_rules_it_loads(config):
    done = promtool("check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    loaded = yaml.safe_load(config.read_text())["rule_files"]
    assert [(config.parent / path).resolve() for path in loaded] == [ALERTS.resolve()]


def test_the_make_up_config_scrapes_every_member_and_program_on_the_ports_make_up_uses():
    up = _up_script()
    expected = {
        "etcd": sorted((f"127.0.0.1:{m.client_port}", {"member": m.name})
                       for m in topology.MEMBERS),
        "gitops-sync": [(f"127.0.0.1:{up.SYNC_METRICS}", {})],
        "heartbeat": [(f"127.0.0.1:{up.HEARTBEAT_METRICS}", {})],
        "registry": [(f"127.0.0.1:{up.REGISTRY_PORT}", {})],
    }
    assert {job: sorted(t) for job, t in _targets(PROMETHEUS_LOCAL).items()} == expected


def test_the_compose_config_scrapes_the_same_jobs_under_the_compose_services_and_ports(compose):
    services = compose["services"]

    def client_port(name: str) -> int:
        flag = next(f for f in services[name]["command"] if f.startswith("--listen-client-urls"))
        return int(flag.rsplit(":", 1)[1])

    expected = {
        "etcd": sorted((f"{m.name}:{client_port(m.name)}", {"member": m.name})
                       for m in topology.MEMBERS),
        "registry": [(f"manifest:{services['manifest']['environment']['REGISTRY_PORT']}", {})],
    }
    for job in ("gitops-sync", "heartbeat"):  # both instances: one leads, one stands by
        expected[job] = sorted((f"{name}:{services[name]['environment']['METRICS_PORT']}", {})
                               for name in (job, f"{job}-standby"))
    jobs = _targets(PROMETHEUS_COMPOSE)
    assert {job: sorted(targets) for job, targets in jobs.items()} == expected
    # The same jobs and labels as the make-up config, so alerts.yml fits both.
    local = _targets(PROMETHEUS_LOCAL)
    assert {job: {str(labels) for _, labels in targets} for job, targets in jobs.items()} == {
        job: {str(labels) for _, labels in targets} for job, targets in local.items()}


def test_the_alerts_name_only_jobs_the_configs_scrape():
    jobs = set(_targets(PROMETHEUS_LOCAL))
    named = set(re.findall(r'job=~?"([^"]+)"', ALERTS.read_text()))
    named = {job for pattern in named for job in pattern.split("|")}
    assert named <= jobs
    assert PROGRAM_JOBS | {"etcd"} == jobs


# -- compose's monitoring profile --------------------------------------------------------


def test_the_monitoring_profile_runs_prometheus_and_grafana_only_when_asked(compose):
    profiled = {name: service["profiles"] for name, service in compose["services"].items()
                if "profiles" in service}
    assert profiled == {"prometheus": ["monitoring"], "grafana": ["monitoring"]}
    for name in profiled:
        assert compose["services"][name]["networks"] == ["registry"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", compose["services"][name]["image"])


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = source
    return mounts


def test_prometheus_mounts_the_compose_config_with_the_alerts_where_it_loads_them(compose):
    service = compose["services"]["prometheus"]
    mounts = _mounts(service)
    for source in mounts.values():
        assert (INFRA / source).exists(), source
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = PurePosixPath(config_flag.split("=", 1)[1])
    assert (INFRA / mounts[str(config_path)]).resolve() == PROMETHEUS_COMPOSE.resolve()
    for rule_file in yaml.safe_load(PROMETHEUS_COMPOSE.read_text())["rule_files"]:
        in_container = str(config_path.parent / rule_file)
        assert (INFRA / mounts[in_container]).resolve() == ALERTS.resolve()
    listen = next(a for a in service["command"] if a.startswith("--web.listen-address="))
    port = listen.rsplit(":", 1)[1]
    assert f"{port}:{port}" in service["ports"]
    assert f":{port}/-/ready" in " ".join(service["healthcheck"]["test"])


def test_grafana_is_provisioned_with_that_prometheus_and_the_dashboard(compose, dashboard):
    service = compose["services"]["grafana"]
    mounts = _mounts(service)
    for source in mounts.values():
        assert (INFRA / source).is_dir(), source
    provisioning = INFRA / mounts["/etc/grafana/provisioning"]
    assert provisioning.resolve() == (GRAFANA / "provisioning").resolve()

    (source,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus = compose["services"]["prometheus"]
    listen = next(a for a in prometheus["command"] if a.startswith("--web.listen-address="))
    assert source["url"] == f"http://prometheus:{listen.rsplit(':', 1)[1]}"
    assert source["type"] == "prometheus"
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {source["uid"]}

    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "chora.yml").read_text())["providers"]
    dashboards_dir = provider["options"]["path"]
    assert (INFRA / mounts[dashboards_dir]).resolve() == DASHBOARD.parent.resolve()
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
    assert service["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


# -- the Grafana dashboard ---------------------------------------------------------------


def test_the_dashboard_is_json_with_a_uid_and_panels_that_do_not_overlap(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_has_the_prometheus_data_source_and_queries(dashboard):
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_dashboard_query_parses_with_promtool(dashboard):
    exprs = dashboard_expressions()
    done = check_expressions(exprs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_every_metric_the_dashboard_reads_is_exported_by_a_program_or_by_etcd(dashboard, etcd):
    known = program_metric_names() | etcd_metric_names(etcd.endpoints[0])
    assert unknown_metrics(dashboard_expressions(), known) == {}


@pytest.mark.parametrize("needed", [
    "chora_sync_leader", "heartbeat_leader",
    "chora_sync_reconcile_duration_seconds_bucket", "chora_sync_reconciles_total",
    "chora_sync_manifest_errors", "heartbeat_beat_lag_seconds_bucket",
    "heartbeat_lease_losses_total", "chora_registry_requests_total",
    "chora_registry_request_duration_seconds_bucket", "etcd_server_has_leader",
    "etcd_mvcc_db_total_size_in_bytes", "etcd_server_quota_backend_bytes", 'up{job="etcd"}',
])
def test_the_dashboard_shows_what_an_operator_needs(dashboard, needed):
    assert any(needed in expr for expr in dashboard_expressions().values())


def test_the_dashboards_reference_lines_are_the_alerts_thresholds(dashboard):
    exprs = " ".join(dashboard_expressions().values())
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    for name in ("HeartbeatBeatLagHigh", "GitopsSyncReconcileStalled"):
        threshold = re.search(r">\s*(\d+)\s*$", rules[name].strip())
        assert threshold, name
        assert f"vector({threshold[1]})" in exprs, name
