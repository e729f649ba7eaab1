"""The heartbeat's command line: flags, environment defaults, the typed settings, and
configuration errors that end the program with one clear line instead of a retry loop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.heartbeat.cli import build_parser, main, settings_from
from services.heartbeat.sessions import COUNT_BLOCK
from services.heartbeat.states import STATES

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("ETCD_ENDPOINTS", "METRICS_PORT", "CAPABILITIES_DIR")}
    return subprocess.run([sys.executable, "-m", "services.heartbeat", *args], cwd=REPO,
                          env={**environ, **env}, capture_output=True, text=True, timeout=30,
                          check=False)


def test_cli_defaults_are_production_and_environment_overrides_them(monkeypatch):
    args = build_parser().parse_args([])
    assert (args.ttl, args.interval, args.capabilities, args.revoke_on_exit) == (
        30, 10.0, None, False)
    assert (args.resync, args.etcd_timeout, args.metrics_port) == (60.0, 3.0, None)
    monkeypatch.setenv("HEARTBEAT_TTL", "9")
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "3")
    monkeypatch.setenv("ETCD_ENDPOINTS", "127.0.0.1:1,127.0.0.1:2")
    monkeypatch.setenv("ETCD_TIMEOUT", "1.5")
    monkeypatch.setenv("HEARTBEAT_REVOKE_ON_EXIT", "true")
    monkeypatch.setenv("CAPABILITIES_DIR", "/srv/caps")
    s = settings_from(build_parser().parse_args([]))
    assert (s.ttl, s.interval, s.endpoints) == (9, 3.0, ("127.0.0.1:1", "127.0.0.1:2"))
    assert (s.etcd_timeout, s.revoke_on_exit, s.capabilities_dir) == (
        1.5, True, Path("/srv/caps"))


def test_every_flag_of_the_heartbeat_still_parses_and_timeout_is_the_etcd_timeout():
    args = build_parser().parse_args([
        "--endpoints", "a:1", "--ttl", "6", "--interval", "2", "--capabilities", "caps",
        "--revoke-on-exit", "--metrics-port", "9102", "--metrics-host", "127.0.0.1",
        "--resync", "30", "--timeout", "1", "--log-level", "debug", "--no-log-json",
    ])
    s = settings_from(args)
    assert (s.endpoints, s.ttl, s.interval, s.capabilities_dir, s.revoke_on_exit) == (
        ("a:1",), 6, 2.0, Path("caps"), True)
    assert (s.metrics_port, s.metrics_host, s.resync, s.etcd_timeout) == (
        9102, "127.0.0.1", 30.0, 1.0)
    assert (args.log_level, args.log_json) == ("debug", False)
    assert build_parser().parse_args(["--etcd-timeout", "2"]).etcd_timeout == 2.0


def test_cli_refuses_an_interval_not_shorter_than_the_ttl():
    with pytest.raises(ValueError, match="shorter than ttl"):
        settings_from(build_parser().parse_args(["--ttl", "5", "--interval", "5"]))


@pytest.mark.parametrize("argv, message", [
    (["--ttl", "5", "--interval", "5"], "shorter than ttl"),
    (["--ttl", "1"], "at least 2 seconds"),
    (["--timeout", "0"], "--etcd-timeout must be positive"),
    (["--resync", "-1"], "--resync must be positive"),
    (["--endpoints", " , "], "no etcd endpoints"),
])
def test_a_bad_flag_ends_the_program_with_one_usage_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_a_bad_environment_variable_is_named_instead_of_a_traceback():
    done = run_cli("--help", HEARTBEAT_TTL="thirty")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "HEARTBEAT_TTL='thirty' is not valid" in done.stderr


def test_an_endpoint_that_is_not_host_port_is_a_usage_error_naming_the_flag():
    done = run_cli("--endpoints", "127.0.0.1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: --endpoints 127.0.0.1: endpoint '127.0.0.1' is not host:port" in done.stderr


def test_a_metrics_port_already_taken_is_a_usage_error_naming_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--endpoints", "127.0.0.1:1", "--metrics-port", str(port),
                       "--metrics-host", "127.0.0.1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: --metrics-port {port}" in done.stderr


def test_help_documents_every_health_state_and_both_exit_modes():
    text = build_parser().format_help()
    assert STATES.splitlines()[0] in text
    for word in ("healthy", "unhealthy", "unknown", "down", "--revoke-on-exit", "adopts"):
        assert word in text


def test_help_says_where_the_count_lives_and_what_restarts_after_a_crash_or_ttl_change_do():
    text = build_parser().format_help()
    for phrase in ("/chora/heartbeat/counts/{ns}", "never repeats", "kill -9",
                   "whatever time it had left", "TTL other than --ttl",
                   f"raises it {COUNT_BLOCK} ahead", f"jump by up to {COUNT_BLOCK}"):
        assert phrase in text


def test_help_names_the_environment_variable_of_every_flag_that_reads_one():
    text = " ".join(build_parser().format_help().split())
    for name in ("ETCD_ENDPOINTS", "ETCD_TIMEOUT", "HEARTBEAT_TTL", "HEARTBEAT_INTERVAL",
                 "CAPABILITIES_DIR", "HEARTBEAT_REVOKE_ON_EXIT", "HEARTBEAT_RESYNC",
                 "METRICS_PORT", "METRICS_HOST", "LOG_LEVEL"):
        assert f"env {name}" in text
