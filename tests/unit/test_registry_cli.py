"""The registry's command line: defaults, environment, --help explaining each flag, and
configuration errors that end the program with one clear line naming the flag."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.registry import tokens
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


# -- security flags and the token command -------------------------------------------------


def test_security_flags_come_from_the_environment_too(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("ETCD_", "REGISTRY_")):
            monkeypatch.delenv(name)
    s = settings_from(build_parser().parse_args([]))
    assert (s.tokens, s.require_read_token, s.tls_cert, s.tls_key) == (None, False, None, None)
    assert s.scheme == "http"
    monkeypatch.setenv("REGISTRY_TOKENS", str(tmp_path / "t.yaml"))
    monkeypatch.setenv("REGISTRY_REQUIRE_READ_TOKEN", "1")
    monkeypatch.setenv("REGISTRY_TLS_CERT", "/etc/c.pem")
    monkeypatch.setenv("REGISTRY_TLS_KEY", "/etc/k.pem")
    s = settings_from(build_parser().parse_args([]))
    assert (s.tokens, s.require_read_token, s.scheme) == (tmp_path / "t.yaml", True, "https")
    s = settings_from(build_parser().parse_args(["--no-require-read-token"]))
    assert s.require_read_token is False


def test_help_explains_the_security_flags_scopes_and_the_token_command():
    out = run_cli("--help")
    for text in ("--tokens", "--require-read-token", "--tls-cert", "--tls-key",
                 "register:<glob>", "401", "403", "SIGHUP", "services.registry token"):
        assert text in out.stdout, text
    token_help = run_cli("token", "--help")
    assert token_help.returncode == 0
    for text in ("--subject", "--scope", "--file", "stdout", "admin"):
        assert text in token_help.stdout, text


@pytest.mark.parametrize(("args", "named"), [
    (["--require-read-token"], "--require-read-token needs --tokens"),
    (["--tls-cert", "/x.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "/x.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"],
     "--tls-cert /nonexistent/c.pem: No such file or directory"),
    (["--tokens", "/nonexistent/tokens.yaml"], "--tokens /nonexistent/tokens.yaml: cannot "
                                               "read it"),
])
def test_a_security_misconfiguration_is_one_usage_line_naming_the_flag(args, named):
    out = run_cli(*args, "--endpoints", "127.0.0.1:1", "--port", "0")
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m services.registry: error: ") and named in last


def test_a_tls_pair_that_is_not_pem_is_refused_at_start(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    out = run_cli("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"),
                  "--endpoints", "127.0.0.1:1", "--port", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--tls-cert {tmp_path / 'c.pem'} / --tls-key" in out.stderr
    assert "not a PEM certificate" in out.stderr


def test_a_key_that_wants_a_passphrase_is_refused_at_start_without_prompting(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    out = run_cli("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"),
                  "--endpoints", "127.0.0.1:1", "--port", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"--tls-key {tmp_path / 'k.pem'}: not a PEM certificate" in out.stderr


def test_a_malformed_token_file_is_refused_at_start_naming_the_file_and_the_entry(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(tokens.entry_line("ok", tokens.mint(), ["read"]) + "\n"
                    "- {subject: typo, sha256: " + "c" * 64 + ", scopes: [raed]}\n")
    out = run_cli("--tokens", str(path), "--endpoints", "127.0.0.1:1", "--port", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"error: --tokens {path}: entry 2 (subject 'typo'): unknown scope 'raed'" \
        in out.stderr


def test_the_token_command_prints_the_token_once_on_stdout_and_its_line_on_stderr():
    out = run_cli("token", "--subject", "orchestrator", "--scope", "register:orchestrator*",
                  "--scope", "read")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert out.stdout == token + "\n" and token.startswith("chora_")
    assert token not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    found = tokens.parse(line, "stderr").identify(tokens.digest(token))
    assert found is not None and found.subject == "orchestrator"
    assert found.may_write("orchestrator-2") and found.may_read()


def test_the_token_command_appends_to_a_file_and_refuses_a_bad_scope(tmp_path):
    path = tmp_path / "tokens.yaml"
    first = run_cli("token", "--subject", "a", "--scope", "admin", "--file", str(path))
    second = run_cli("token", "--subject", "b", "--scope", "read", "--file", str(path))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert f"appended to {path}" in second.stderr
    found = tokens.read_file(path)
    assert found.subjects == ["a", "b"]
    assert found.identify(tokens.digest(first.stdout.strip())).admin
    assert first.stdout.strip() not in path.read_text()
    bad = run_cli("token", "--subject", "c", "--scope", "write", "--file", str(path))
    assert bad.returncode == 2 and "unknown scope 'write'" in bad.stderr
    assert bad.stdout == "" and len(tokens.read_file(path)) == 2
    assert run_cli("token", "--subject", "c").returncode == 2  # a scope is required
