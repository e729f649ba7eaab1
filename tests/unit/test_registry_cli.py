"""The registry's command line: defaults, environment, --help explaining each flag, and
configuration errors that end the program with one clear line naming the flag."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.registry.cli import build_parser, settings_from
from services.registry.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("ETCD_", "REGISTRY_"))}
    return subprocess.run([sys.executable, "-m", "services.registry", *args], cwd=REPO,
                          env={**environ, **env}, capture_output=True, text=True, timeout=30,
                          check=False)


def test_defaults_are_the_contracts_and_the_environment_overrides_them(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("ETCD_", "REGISTRY_")):
            monkeypatch.delenv(name)
    s = settings_from(build_parser().parse_args([]))
    assert (s.host, s.port, s.heartbeat_timeout, s.removal_timeout) == (
        "127.0.0.1", 8500, 30.0, 60)
    assert (s.etcd_timeout, s.resync, s.watch_ring) == (3.0, 300.0, 10_000)
    assert s.endpoints == ("127.0.0.1:2379", "127.0.0.1:2389", "127.0.0.1:2399")
    monkeypatch.setenv("REGISTRY_PORT", "9500")
    monkeypatch.setenv("REGISTRY_HEARTBEAT_TIMEOUT", "5")
    monkeypatch.setenv("REGISTRY_REMOVAL_TIMEOUT", "9")
    monkeypatch.setenv("ETCD_ENDPOINTS", "127.0.0.1:1,127.0.0.1:2")
    s = settings_from(build_parser().parse_args([]))
    assert (s.port, s.heartbeat_timeout, s.removal_timeout, s.endpoints) == (
        9500, 5.0, 9, ("127.0.0.1:1", "127.0.0.1:2"))
    s = settings_from(build_parser().parse_args(["--port", "0", "--heartbeat-timeout", "2",
                                                 "--removal-timeout", "4"]))
    assert (s.port, s.heartbeat_timeout, s.removal_timeout) == (0, 2.0, 4)


def test_help_explains_every_flag_the_states_and_the_routes():
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in ("--host", "--port", "--endpoints", "--etcd-timeout", "--heartbeat-timeout",
                 "--removal-timeout", "--resync", "--watch-ring", "--log-level", "--log-json"):
        assert flag in out.stdout, flag
    for text in ("unhealthy", "unknown", "X-Registry-Index", "POST   /v1/services",
                 "/v1/watch", "Last-Event-ID", "default 8500"):
        assert text in out.stdout, text


@pytest.mark.parametrize(("args", "named"), [
    (["--heartbeat-timeout", "60", "--removal-timeout", "30"], "--heartbeat-timeout"),
    (["--removal-timeout", "1"], "--removal-timeout"),
    (["--port", "70000"], "--port"),
    (["--watch-ring", "0"], "--watch-ring"),
    (["--endpoints", "no-port-here"], "--endpoints"),
])
def test_a_configuration_error_is_one_usage_line_naming_the_flag(args, named):
    out = run_cli(*args)
    assert out.returncode == 2
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_port_already_taken_is_a_configuration_error_not_a_retry_loop():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--port", str(port), "--endpoints", "127.0.0.1:1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: --port {port} (--host 127.0.0.1)" in done.stderr


def test_settings_refuse_what_no_registry_could_run_with():
    with pytest.raises(ValueError, match="removal-timeout"):
        Settings(("h:1",), removal_timeout=1)
    with pytest.raises(ValueError, match="heartbeat-timeout"):
        Settings(("h:1",), heartbeat_timeout=0)
    assert Settings(("h:1",), heartbeat_timeout=2).status_tick == 0.5
    assert Settings(("h:1",)).status_tick == 1.0
