"""The secure stack's pure parts, without etcd: the access flags and their validation,
how a refusal is classified and worded, the roles table, when renewed certificate files
are swapped in and when a token is renewed, and ``make up --secure``'s own checks."""

from __future__ import annotations

import importlib.util
import shutil
import threading
from pathlib import Path

import pytest

from services.core import roles
from services.core.access import EtcdAccess
from services.core.credentials import Swapping, Token, UnusableFiles, read_tls
from services.core.endpoints import server_name
from services.core.errors import (
    AuthFailed,
    LeaseNotFound,
    NoSpace,
    PermissionDenied,
    StoreError,
    TlsRefused,
    TooLarge,
    Unavailable,
    classify,
)
from services.core.options import add_etcd_flags, etcd_access
from services.core.pki import Pki
from services.heartbeat import cli as heartbeat_cli
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    made = Pki(tmp_path_factory.mktemp("pki"))
    made.ensure(members=["etcd1"], clients=["reader", "heartbeat"])
    return made


# -- flags and validation -----------------------------------------------------------------


def parse(*argv: str):
    import argparse

    p = argparse.ArgumentParser()
    add_etcd_flags(p)
    return p.parse_args(list(argv))


def test_no_security_flag_means_plaintext_without_auth(monkeypatch):
    for key in ("ETCD_CACERT", "ETCD_CERT", "ETCD_KEY", "ETCD_USER", "ETCD_PASSWORD_FILE"):
        monkeypatch.delenv(key, raising=False)
    access = etcd_access(parse())
    assert access == EtcdAccess() and not access.tls and access.user is None


def test_the_flags_and_the_environment_give_etcdctls_names(pki, monkeypatch):
    ca, cert, key = pki.paths("reader")
    access = etcd_access(parse("--cacert", str(ca), "--cert", str(cert), "--key", str(key)))
    assert (access.cacert, access.cert, access.key, access.tls) == (ca, cert, key, True)
    monkeypatch.setenv("ETCD_CACERT", str(ca))
    monkeypatch.setenv("ETCD_CERT", str(cert))
    monkeypatch.setenv("ETCD_KEY", str(key))
    assert etcd_access(parse()) == access


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"cert": "reader.crt"}, "--cert and --key go together"),
    ({"key": "reader.key"}, "--cert and --key go together"),
    ({"user": "bob"}, "--user and --password-file go together"),
    ({"password_file": "reader.key"}, "--user and --password-file go together"),
    ({"cacert": "missing.crt"}, "--cacert"),
    ({"cert": "reader.crt", "key": "missing.key"}, "--key"),
    ({"user": "bob:secret", "password_file": "reader.key"}, "--user"),
    ({"server_name": "etcd"}, "--tls-server-name needs TLS"),
])
def test_an_unusable_combination_is_a_value_error_naming_the_flag(pki, kwargs, flag):
    given = {k: (pki.root / v if k in ("cacert", "cert", "key", "password_file") else v)
             for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=flag):
        EtcdAccess(**given)


def test_the_heartbeat_exits_2_naming_the_flag_when_a_key_is_missing(pki, capsys):
    _, cert, _ = pki.paths("reader")
    with pytest.raises(SystemExit) as exited:
        heartbeat_cli.main(["--cert", str(cert)])
    assert exited.value.code == 2
    assert "--cert and --key go together" in capsys.readouterr().err


def test_the_heartbeat_settings_carry_its_identity(pki):
    ca, cert, key = pki.paths("heartbeat")
    args = heartbeat_cli.build_parser().parse_args(
        ["--cacert", str(ca), "--cert", str(cert), "--key", str(key)])
    assert heartbeat_cli.settings_from(args).etcd_access == EtcdAccess(ca, cert, key)


def test_one_tls_name_serves_every_member():
    assert server_name(["127.0.0.1:2379", "127.0.0.1:2389"]) == "127.0.0.1"
    assert server_name(["etcd1:2379", "etcd2:2389", "etcd3:2399"]) == "localhost"
    assert server_name(["etcd.example.org:2379"]) == "etcd.example.org"


# -- errors ---------------------------------------------------------------------------------


def test_a_permission_refusal_is_terminal_and_names_the_user_and_the_action():
    error = classify("PERMISSION_DENIED", "etcdserver: permission denied", who="heartbeat",
                     what="writing /chora/sync/x")
    assert isinstance(error, PermissionDenied) and not error.transient
    assert str(error) == "etcd refused user heartbeat: permission denied writing /chora/sync/x"


@pytest.mark.parametrize("detail", [
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
    "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:10000412:SSL routines:OPENSSL_"
    "internal:SSLV3_ALERT_BAD_CERTIFICATE",
    "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Custom "
    "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
])
def test_a_handshake_refused_on_a_certificate_is_terminal(detail):
    error = classify("UNAVAILABLE", detail, who="reader")
    assert isinstance(error, TlsRefused) and not error.transient
    assert "for user reader" in str(error) and "--cacert" in str(error)


@pytest.mark.parametrize(("code", "detail", "kind"), [
    ("UNAVAILABLE", "failed to connect to all addresses; last error: UNAVAILABLE: "
                    "ipv4:127.0.0.1:1: Socket closed", Unavailable),
    ("UNAVAILABLE", "connections to all backends failing: Connection refused", Unavailable),
    ("UNKNOWN", "etcdserver: leader changed", Unavailable),
    ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password",
     AuthFailed),
    ("UNAUTHENTICATED", "etcdserver: invalid auth token", AuthFailed),
    ("INVALID_ARGUMENT", "etcdserver: user name is empty", AuthFailed),
    ("NOT_FOUND", "etcdserver: requested lease not found", LeaseNotFound),
    ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded", NoSpace),
    ("INVALID_ARGUMENT", "etcdserver: too many operations in txn request", TooLarge),
])
def test_errors_keep_their_kind(code, detail, kind):
    error = classify(code, detail)
    assert type(error) is kind
    assert isinstance(error, StoreError)


# -- the roles table ------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "action", "key", "allowed"), [
    ("heartbeat", "write", "/chora/capabilities/a.b/health", True),
    ("heartbeat", "write", "/chora/capabilities/a.b/version", True),  # etcd ranges: see docs
    ("heartbeat", "write", "/chora/sync/x", False),
    ("heartbeat", "write", "/chora/services/x", False),
    ("heartbeat", "write", "/chora/heartbeat/counts/a.b", True),
    ("registry", "write", "/chora/capabilities/x/version", False),
    ("registry", "read", "/chora/capabilities/x/version", True),
    ("registry", "write", "/chora/services/a/a-1", True),
    ("gitops-sync", "write", "/chora/sync/status", True),
    ("gitops-sync", "read", "/chora/services/a/a-1", False),
    ("reader", "read", "/chora/anything", True),
    ("reader", "write", "/chora/capabilities/x/version", False),
    ("reader", "read", "/elsewhere", False),
    ("root", "write", "/elsewhere", True),
    ("stranger", "read", "/chora/", False),
])
def test_the_roles_table_says_who_may_do_what(user, action, key, allowed):
    assert roles.allowed(user, action, key) is allowed


def test_a_prefix_range_ends_where_etcdctl_prefix_ends():
    assert roles.range_end("/chora/") == "/chora0"
    assert roles.range_end("/chora/sync/") == "/chora/sync0"


# -- certificate files renewed on disk -------------------------------------------------------


def copy_identity(pki: Pki, name: str, into: Path) -> EtcdAccess:
    ca, cert, key = pki.paths(name)
    into.mkdir(exist_ok=True)
    for src in (ca, cert, key):
        shutil.copy(src, into / ("me" + src.suffix if src != ca else "ca.crt"))
    return EtcdAccess(into / "ca.crt", into / "me.crt", into / "me.key")


def test_a_certificate_and_a_key_that_are_no_pair_are_refused(pki, tmp_path):
    access = copy_identity(pki, "reader", tmp_path)
    shutil.copy(pki.paths("heartbeat")[1], access.cert)
    with pytest.raises(UnusableFiles, match="not a pair"):
        read_tls(access)


def test_renewed_files_build_a_new_connection_and_close_the_old_after_the_grace(pki, tmp_path):
    access = copy_identity(pki, "reader", tmp_path)
    built, closed = [], []

    def build(material):
        built.append(material.common_name)
        return len(built)

    conns = Swapping(access, build, closed.append, period=0.0, grace=0.05)
    assert conns.get() == 1 and conns.check() is False  # nothing changed on disk
    shutil.copy(pki.paths("heartbeat")[1], access.cert)  # half-written: the key is old
    assert conns.get() == 1 and conns.reloads == 0
    shutil.copy(pki.paths("heartbeat")[2], access.key)
    assert conns.get() == 2 and conns.reloads == 1
    assert built == ["reader", "heartbeat"]
    wait_for(lambda: closed == [1], 2, what="the old connection closed after its grace")
    conns.close()
    assert closed == [1, 2]


def test_files_are_looked_at_no_more_often_than_the_period(pki, tmp_path):
    access = copy_identity(pki, "reader", tmp_path)
    conns = Swapping(access, lambda m: m.common_name, lambda c: None, period=3600)
    shutil.copy(pki.paths("heartbeat")[1], access.cert)
    shutil.copy(pki.paths("heartbeat")[2], access.key)
    assert conns.get() == "reader"  # not due for an hour
    assert conns.check() is True and conns.get() == "heartbeat"


# -- tokens ---------------------------------------------------------------------------------


def test_a_token_is_renewed_once_however_many_calls_found_it_stale(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    logins: list[tuple[str, str]] = []

    def login(user: str, password: str) -> str:
        logins.append((user, password))
        return f"token-{len(logins)}"

    token = Token(EtcdAccess(user="svc", password_file=secret), login, refresh=3600)
    assert token.current() == "token-1" and logins == [("svc", "pw")]
    threads = [threading.Thread(target=token.renew, args=("token-1",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert token.current() == "token-2" and len(logins) == 2
    token.forget()
    assert token.current() == "token-3"


# -- make up --secure ---------------------------------------------------------------------


def up_script():
    spec = importlib.util.spec_from_file_location("up_script", REPO / "scripts" / "up.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cluster_keeps_the_mode_it_was_created_in(tmp_path):
    up = up_script()
    assert up.mode_conflict(tmp_path, secure=True) is None  # nothing there yet
    (tmp_path / "etcd1" / "member").mkdir(parents=True)
    assert up.mode_conflict(tmp_path, secure=False) is None
    assert "created plaintext" in up.mode_conflict(tmp_path, secure=True)
    (tmp_path / up.SECURE_MARK).touch()
    assert up.mode_conflict(tmp_path, secure=True) is None
    assert "make up SECURE=1" in up.mode_conflict(tmp_path, secure=False)


def test_make_up_passes_an_identity_only_to_programs_that_connect_with_it():
    up = up_script()
    assert up.takes_access("heartbeat") is True
    flags = ["--cacert=ca", "--cert=c", "--key=k"]
    assert up.registry_args("e:1", flags)[-3:] == flags


def test_the_sync_refuses_transactions_narrower_than_etcds_default():
    from services.gitops_sync import cli as sync_cli

    parser = sync_cli.build_parser()
    wide = sync_cli.settings_from(parser.parse_args(["--max-txn-ops", "1024"]))
    assert wide.max_txn_ops == 1024
    assert sync_cli.settings_from(parser.parse_args([])).max_txn_ops == 128
    with pytest.raises(ValueError, match="--max-txn-ops must be at least 128"):
        sync_cli.settings_from(parser.parse_args(["--max-txn-ops", "64"]))
