"""Static checks of ``docker-compose.secure.yml`` (no Docker engine here), as
``test_infrastructure_static.py`` checks the plain file:

- valid against the Compose Specification's schema;
- its members run exactly the topology's flags with https URLs plus ``tls_flags``, so
  ``make up SECURE=1`` (``LocalCluster(tls=...)``) and compose run the same members;
- every container mounts read-only the CA certificate and its own identity's
  certificate and key, nothing else of the PKI (never ``ca.key``), and the programs
  are given exactly those files with etcdctl's flag names;
- the programs wait for the one-shot ``bootstrap`` (users and roles of ``roles.py``,
  built from the Dockerfile stage that carries etcdctl of the members' etcd image);
- apart from the security flags, every program runs what the plain file runs.
"""

from __future__ import annotations

import importlib
import json
import re

import jsonschema
import pytest
import yaml

from services.core import roles, topology
from tests.unit.test_infrastructure_static import (
    COMPOSE,
    INFRA,
    SCHEMA,
    _errors,
    _image_env,
    _instructions,
    _stages,
)

SECURE = INFRA / "docker-compose.secure.yml"
# compose service -> (module, etcd identity)
PROGRAMS = {
    "gitops-sync": ("services.gitops_sync", "gitops-sync"),
    "heartbeat": ("services.heartbeat", "heartbeat"),
    "manifest": ("services.registry", "registry"),
    "bootstrap": ("services.core.bootstrap", "root"),
}
PKI = "../../.data/pki"


@pytest.fixture(scope="module")
def secure() -> dict:
    return yaml.safe_load(SECURE.read_text())


@pytest.fixture(scope="module")
def plain() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def schema() -> jsonschema.Draft201909Validator:
    return jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))


def identity_mounts(name: str) -> list[str]:
    return [f"{PKI}/ca.crt:/pki/ca.crt:ro", f"{PKI}/{name}.crt:/pki/{name}.crt:ro",
            f"{PKI}/{name}.key:/pki/{name}.key:ro"]


def identity_flags(name: str) -> list[str]:
    return ["--cacert=/pki/ca.crt", f"--cert=/pki/{name}.crt", f"--key=/pki/{name}.key"]


def test_the_secure_compose_file_is_valid_against_the_compose_specification(secure, schema):
    assert _errors(schema, secure) == []
    broken = yaml.safe_load(SECURE.read_text())
    broken["services"]["bootstrap"]["depends_on"]["etcd1"]["condition"] = "done"
    assert _errors(schema, broken)  # the schema does check what it is given


def test_it_runs_the_members_the_programs_and_the_bootstrap(secure, plain):
    plain_stack = {n for n, s in plain["services"].items() if "profiles" not in s}
    assert set(secure["services"]) == plain_stack | {"bootstrap"}


@pytest.mark.parametrize("member", topology.MEMBERS, ids=lambda m: m.name)
def test_each_member_runs_the_topology_over_tls_requiring_client_certificates(secure, plain,
                                                                              member):
    service = secure["services"][member.name]
    flags = topology.member_flags(member, topology.MEMBERS,
                                  host_of={m.name: m.name for m in topology.MEMBERS},
                                  listen_host="0.0.0.0", data_dir="/etcd-data", scheme="https")
    tls = topology.tls_flags("/pki/ca.crt", f"/pki/{member.name}.crt", f"/pki/{member.name}.key")
    assert service["command"] == ["/usr/local/bin/etcd", *flags, *tls]
    assert {"--client-cert-auth=true", "--peer-client-cert-auth=true"} <= set(tls)
    assert not any("http://" in flag for flag in service["command"])
    assert service["volumes"] == [f"{member.name}-data:/etcd-data",
                                  *identity_mounts(member.name)]
    same = ("image", "ports", "restart", "container_name", "hostname")
    assert {k: service[k] for k in same} == {k: plain["services"][member.name][k] for k in same}
    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", "etcdctl"] and test[-2:] == ["endpoint", "health"]
    assert f"--endpoints=https://127.0.0.1:{member.client_port}" in test
    assert set(identity_flags(member.name)) <= set(test)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_each_program_mounts_and_uses_only_its_own_identity(secure, name, monkeypatch):
    module, identity = PROGRAMS[name]
    service = secure["services"][name]
    pki_mounts = [v for v in service["volumes"] if ".data/pki" in v]
    assert pki_mounts == identity_mounts(identity)
    assert service["command"][:3] == ["python", "-m", module]
    assert service["command"][-3:] == identity_flags(identity)
    for key in ("ETCD_CACERT", "ETCD_CERT", "ETCD_KEY", "ETCD_USER", "ETCD_PASSWORD_FILE"):
        monkeypatch.delenv(key, raising=False)
    if module == "services.core.bootstrap":
        return  # its parser is built in main(): the flags are the shared ones, below
    args = importlib.import_module(f"{module}.cli").build_parser().parse_args(
        service["command"][3:])
    assert (str(args.cacert), str(args.cert), str(args.key)) == (
        "/pki/ca.crt", f"/pki/{identity}.crt", f"/pki/{identity}.key")
    assert args.user is None


def test_no_container_mounts_the_ca_key_or_a_whole_pki_directory(secure):
    for name, service in secure["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.endswith("ca.key"), name
            assert not re.fullmatch(r".*\.data/pki/?", source), name


@pytest.mark.parametrize("name", sorted(set(PROGRAMS) - {"bootstrap"}))
def test_each_program_waits_for_the_bootstrap_and_otherwise_runs_what_the_plain_file_runs(
        secure, plain, name):
    service, before = secure["services"][name], plain["services"][name]
    assert service["depends_on"] == {
        **{m.name: {"condition": "service_healthy"} for m in topology.MEMBERS},
        "bootstrap": {"condition": "service_completed_successfully"},
    }
    assert service["command"][:-3] == before["command"]
    for key in ("environment", "ports", "healthcheck", "build", "image", "restart"):
        assert service[key] == before[key], key
    assert service["user"] == "${CHORA_UID:-10001}:${CHORA_GID:-10001}"


def test_the_bootstrap_runs_once_as_root_from_the_stage_that_carries_etcdctl(secure):
    service = secure["services"]["bootstrap"]
    assert service["restart"] == "no"
    assert service["build"]["target"] == "bootstrap"
    assert service["depends_on"] == {m.name: {"condition": "service_healthy"}
                                     for m in topology.MEMBERS}
    assert service["environment"]["ETCD_ENDPOINTS"] == ",".join(
        f"{m.name}:{m.client_port}" for m in topology.MEMBERS)
    lines = _instructions("bootstrap")
    copy = next(line for line in lines if line.startswith("COPY --from="))
    stage = copy.split()[1].removeprefix("--from=")
    members_image = secure["services"]["etcd1"]["image"]
    assert _stages()[stage][0].split()[1] == members_image
    assert copy.split()[-1] == "/usr/local/bin/etcdctl"
    assert lines[-1] == 'CMD ["python", "-m", "services.core.bootstrap"]'
    assert "ETCD_ENDPOINTS" in _image_env("bootstrap")


def test_the_bootstrap_creates_exactly_the_users_and_roles_of_the_table():
    commands = list(roles.bootstrap_commands())
    assert commands[0] == ["user", "add", "root", "--no-password"]
    assert commands[1] == ["user", "grant-role", "root", "root"]
    assert commands[-1] == ["auth", "enable"]
    users = [c[2] for c in commands if c[:2] == ["user", "add"]]
    assert users == list(roles.IDENTITIES)
    assert all("--no-password" in c for c in commands if c[:2] == ["user", "add"])
    grants = {(c[2], c[3], c[4], c[5]) for c in commands if c[:2] == ["role", "grant-permission"]}
    assert grants == {
        ("gitops-sync", "readwrite", "/chora/capabilities/", "/chora/capabilities0"),
        ("gitops-sync", "readwrite", "/chora/sync/", "/chora/sync0"),
        ("gitops-sync", "readwrite", "/chora/election/gitops-sync/",
         "/chora/election/gitops-sync0"),
        ("heartbeat", "readwrite", "/chora/election/heartbeat/", "/chora/election/heartbeat0"),
        ("heartbeat", "readwrite", "/chora/capabilities/", "/chora/capabilities0"),
        ("heartbeat", "readwrite", "/chora/heartbeat/", "/chora/heartbeat0"),
        ("registry", "readwrite", "/chora/services/", "/chora/services0"),
        ("registry", "read", "/chora/", "/chora0"),  # one watch of /chora/: see roles.py
        ("reader", "read", "/chora/", "/chora0"),
    }
