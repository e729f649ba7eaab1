"""The secure stack against real etcd (TLS, client certificates, auth with the roles of
``services/core/roles.py``): who is refused at the handshake, what each identity may
and may not do, renewed certificates picked up by a running store, and password users
whose tokens expire. The daemons on the secure stack: ``test_secure_daemons.py``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core import bootstrap
from services.core.access import EtcdAccess
from services.core.errors import (
    AuthFailed,
    PermissionDenied,
    StoreError,
    TlsRefused,
    Unavailable,
)
from services.core.kv import Put
from services.core.localcluster import LocalCluster
from services.core.pki import Pki
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.conftest import TOKEN_TTL

CAP = "/chora/capabilities/probe.x/version"
HEALTH = "/chora/capabilities/probe.x/health"
SYNC = "/chora/sync/probe"
BEAT = "/chora/heartbeat/probe"
SERVICE = "/chora/services/probe/probe-0000abcd"
OTHER = "/chora/other/probe"
OUTSIDE = "/elsewhere/probe"
KEYS = (CAP, HEALTH, SYNC, BEAT, SERVICE, OTHER, OUTSIDE)

# The issue's table, written out here (not read from roles.py): what each may read, write.
MAY = {
    "gitops-sync": ({CAP, HEALTH, SYNC}, {CAP, HEALTH, SYNC}),
    "heartbeat": ({CAP, HEALTH, BEAT}, {CAP, HEALTH, BEAT}),
    # reads all of /chora/ (its one watch), a deliberate widening of the issue's table
    "registry": ({CAP, HEALTH, SYNC, BEAT, SERVICE, OTHER}, {SERVICE}),
    "reader": ({CAP, HEALTH, SYNC, BEAT, SERVICE, OTHER}, set()),
    "root": (set(KEYS), set(KEYS)),
}
CASES = [(who, action, key) for who in MAY for action in ("read", "write") for key in KEYS]


@pytest.fixture(scope="module")
def stores(secure_etcd: LocalCluster) -> Iterator[dict[str, Store]]:
    """One store per identity, shared by the read-mostly tests of this module."""
    made = {who: Store(secure_etcd.endpoints, timeout=2.0, access=secure_etcd.access(who))
            for who in MAY}
    yield made
    for s in made.values():
        s.close()


def same_ca(secure_etcd: LocalCluster, root: Path) -> Pki:
    """A PKI directory of its own that shares the cluster's CA (to issue test identities
    without touching the shared certificates)."""
    assert secure_etcd.tls is not None
    root.mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(secure_etcd.tls.root / name, root / name)
    return Pki(root)


# -- refused at the door --------------------------------------------------------------------


def test_a_plaintext_client_gets_nothing_from_the_secure_cluster(secure_etcd, root_store):
    with Store(secure_etcd.endpoints, timeout=1.0) as plain:
        with pytest.raises(Unavailable):
            plain.get(CAP)
        with pytest.raises(Unavailable):
            plain.txn([], [Put(CAP, b"plaintext")])
    assert root_store.get(CAP) is None


def test_a_client_certificate_of_another_ca_is_refused_at_the_handshake(secure_etcd, tmp_path):
    other = Pki(tmp_path / "other")
    other.ensure(clients=["heartbeat"])  # same name, other CA
    ca, _, _ = secure_etcd.tls.paths("heartbeat")
    _, cert, key = other.paths("heartbeat")
    impostor = EtcdAccess(cacert=ca, cert=cert, key=key)
    with Store(secure_etcd.endpoints, timeout=1.0, access=impostor) as store, \
            pytest.raises(TlsRefused) as refused:
        store.get(CAP)
    assert not refused.value.transient
    assert "TLS handshake with etcd failed for user heartbeat" in str(refused.value)


def test_members_whose_certificates_another_ca_signed_are_refused_by_the_client(
        secure_etcd, tmp_path):
    other = Pki(tmp_path / "other")
    other.ensure(clients=[])
    _, cert, key = secure_etcd.tls.paths("reader")
    fooled = EtcdAccess(cacert=other.ca_cert, cert=cert, key=key)
    with Store(secure_etcd.endpoints, timeout=1.0, access=fooled) as store, \
            pytest.raises(TlsRefused):
        store.revision()


def test_a_client_without_a_certificate_is_refused_at_the_handshake(secure_etcd):
    ca, _, _ = secure_etcd.tls.paths("reader")
    with Store(secure_etcd.endpoints, timeout=1.0, access=EtcdAccess(cacert=ca)) as store, \
            pytest.raises(TlsRefused):
        store.get(CAP)


def test_a_certificate_of_the_ca_whose_name_is_no_etcd_user_may_do_nothing(
        secure_etcd, tmp_path):
    pki = same_ca(secure_etcd, tmp_path / "pki")
    pki.issue("stranger")
    with Store(secure_etcd.endpoints, timeout=1.0,
               access=EtcdAccess.from_files(*pki.paths("stranger"))) as stranger:
        for attempt in (lambda: stranger.get(CAP), lambda: stranger.txn([], [Put(CAP, b"x")])):
            with pytest.raises(StoreError) as refused:
                attempt()
            assert not refused.value.transient
            assert "stranger" in str(refused.value)


# -- the roles ------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "action", "key"), CASES,
                         ids=[f"{w}-{a}-{k}" for w, a, k in CASES])
def test_each_identity_may_do_exactly_what_its_role_allows(stores, who, action, key):
    store = stores[who]
    readable, writable = MAY[who]
    allowed = key in (readable if action == "read" else writable)
    attempt = ((lambda: store.get(key)) if action == "read"
               else (lambda: store.txn([], [Put(key, who.encode())])))
    if allowed:
        attempt()
    else:
        with pytest.raises(PermissionDenied):
            attempt()


def test_a_refusal_is_terminal_and_names_the_user_and_what_it_tried(stores):
    with pytest.raises(PermissionDenied) as refused:
        stores["heartbeat"].txn([], [Put("/chora/sync/x", b"no")])
    assert not refused.value.transient
    assert str(refused.value) == (
        "etcd refused user heartbeat: permission denied writing /chora/sync/x")
    with pytest.raises(PermissionDenied, match="user registry: permission denied writing "
                                               "/chora/capabilities/x/version"):
        stores["registry"].txn([], [Put("/chora/capabilities/x/version", b"no")])


def test_a_watch_of_a_prefix_the_user_may_not_read_is_refused(stores):
    watch = stores["heartbeat"].watch_prefix("/chora/sync/", 1)
    try:
        with pytest.raises(PermissionDenied, match="user heartbeat: permission denied "
                                                   "watching /chora/sync/"):
            next(iter(watch))
    finally:
        watch.cancel()


@pytest.mark.parametrize("who", sorted(MAY))
def test_every_identity_can_prove_a_quorum_and_read_the_alarms(stores, who):
    """What the daemons ping etcd with: the revision (a linearizable read) and alarms."""
    assert stores[who].revision() > 0
    assert stores[who].alarms() == []
    assert stores[who].alarms(retry=False) == []


def test_the_heartbeat_keeps_its_health_keys_on_leases_it_grants_and_revokes(stores):
    beat = stores["heartbeat"]
    lease = beat.grant(10)
    beat.txn([], [Put(HEALTH, b'{"status": "up"}', lease=lease)])
    assert beat.refresh_leases([lease]) == {lease: 10}
    assert beat.lease_ttl(lease) > 0
    beat.revoke(lease)
    assert stores["reader"].get(HEALTH) is None


# -- certificates renewed on disk ------------------------------------------------------------


def test_a_certificate_reissued_on_disk_is_picked_up_within_the_reload_period(
        secure_etcd, tmp_path):
    pki = same_ca(secure_etcd, tmp_path / "pki")
    pki.issue("heartbeat")
    _, cert, _ = pki.paths("heartbeat")
    with Store(secure_etcd.endpoints, timeout=2.0, access=EtcdAccess.from_files(*pki.paths(
            "heartbeat")), reload_period=0.5, reload_grace=0.5) as store:
        store.txn([], [Put(BEAT, b"before")])
        pki.issue("heartbeat")  # a new key and certificate, as a renewal writes them
        wait_for(lambda: store.txn([], [Put(BEAT, b"after")]) and store.reloads == 1, 5,
                 what="the renewed certificate in use")
        assert store._connections.material.certificate_chain == cert.read_bytes()
        assert store.get(BEAT).value == b"after"


def test_a_half_written_pair_keeps_the_old_certificate_until_both_files_are_new(
        secure_etcd, tmp_path):
    """Rotated from reader to heartbeat by copying files over, certificate first: in
    between, the files are no pair, and the store goes on as reader."""
    ca, reader_cert, reader_key = secure_etcd.tls.paths("reader")
    _, beat_cert, beat_key = secure_etcd.tls.paths("heartbeat")
    cert, key = tmp_path / "me.crt", tmp_path / "me.key"
    shutil.copy(reader_cert, cert)
    shutil.copy(reader_key, key)
    with Store(secure_etcd.endpoints, timeout=2.0, access=EtcdAccess(ca, cert, key),
               reload_period=0.3, reload_grace=0.5) as store:
        with pytest.raises(PermissionDenied, match="user reader"):
            store.txn([], [Put(BEAT, b"x")])
        shutil.copy(beat_cert, cert)
        assert store._connections.check() is False  # what each period's look does
        assert store.reloads == 0 and store.identity == "reader"
        store.get(CAP)  # still connected, as reader
        shutil.copy(beat_key, key)
        # the next call after a period looks again
        wait_for(lambda: store.revision() and store.identity == "heartbeat", 5,
                 what="the whole pair picked up")
        store.txn([], [Put(BEAT, b"now heartbeat")])
        assert store.reloads == 1


# -- users with passwords ----------------------------------------------------------------


@pytest.fixture
def password_user(secure_etcd, root_store, tmp_path) -> Iterator[EtcdAccess]:
    """A ``pw-reader`` user with a password and the reader role, and a certificate of the
    CA whose name is no user: only the token says who the client is."""
    flags = secure_etcd.client_flags("root")
    bootstrap.run(secure_etcd.endpoints, flags,
                  ["user", "add", "pw-reader", "--new-user-password=s3cret-pw"])
    bootstrap.run(secure_etcd.endpoints, flags, ["user", "grant-role", "pw-reader", "reader"])
    pki = same_ca(secure_etcd, tmp_path / "pki")
    pki.issue("nobody")
    secret = tmp_path / "password"
    secret.write_text("s3cret-pw\n")
    ca, cert, key = pki.paths("nobody")
    yield EtcdAccess(cacert=ca, cert=cert, key=key, user="pw-reader", password_file=secret)
    bootstrap.run(secure_etcd.endpoints, flags, ["user", "delete", "pw-reader"])


def test_a_password_user_keeps_working_after_its_token_expired(
        secure_etcd, root_store, password_user):
    root_store.txn([], [Put(SYNC, b"v1")])
    with Store(secure_etcd.endpoints, timeout=2.0, access=password_user,
               token_refresh=3600) as store:
        assert store.get(SYNC).value == b"v1"  # the token's user reads; "nobody" may not
        with pytest.raises(PermissionDenied, match="user pw-reader: permission denied"):
            store.txn([], [Put(SYNC, b"v2")])
        assert store._token.logins == 1
        time.sleep(TOKEN_TTL + 1.5)  # the fault itself: the token unused beyond its TTL
        assert store.get(SYNC).value == b"v1"  # refused as invalid, logged in, sent again
        assert store._token.logins == 2
        time.sleep(TOKEN_TTL + 1.5)
        revision = root_store.txn([], [Put(SYNC, b"v3")])[1]

        def watched() -> bool:  # a stream cannot be replayed: re-created, as daemons do
            watch = store.watch_prefix("/chora/sync/", revision)
            try:
                return next(iter(watch))[0].kv.value == b"v3"
            finally:
                watch.cancel()

        assert wait_for(watched, 5, what="a watch after the token expired")


def test_a_token_older_than_the_refresh_age_is_renewed_before_use(secure_etcd, password_user):
    with Store(secure_etcd.endpoints, timeout=2.0, access=password_user,
               token_refresh=0.5) as store:
        store.get(SYNC)
        wait_for(lambda: store.get(SYNC) is None and store._token.logins >= 2, 5,
                 what="a new login once the token is 0.5 s old")


def test_a_wrong_password_is_a_terminal_auth_error_naming_the_user(
        secure_etcd, password_user, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it")
    access = EtcdAccess(cacert=password_user.cacert, cert=password_user.cert,
                        key=password_user.key, user="pw-reader", password_file=wrong)
    with Store(secure_etcd.endpoints, timeout=2.0, access=access) as store, \
            pytest.raises(AuthFailed, match="user pw-reader") as refused:
        store.get(SYNC)
    assert not refused.value.transient


# -- the scripts ----------------------------------------------------------------------------


def script(name: str):
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_status_reads_as_reader_and_backup_snapshots_as_root_only(secure_etcd, tmp_path):
    status, backup = script("status"), script("backup")
    report = status.collect(secure_etcd.endpoints, 2.0, secure_etcd.access("reader"))
    assert status.healthy(report), status.render(report)
    info = backup.save(secure_etcd.endpoints, tmp_path / "snap.db", 5.0,
                       secure_etcd.access("root"))
    assert (tmp_path / "snap.db").stat().st_size > 0 and "hash" in info
    with pytest.raises(ConnectionError, match="user reader: permission denied taking a "
                                              "snapshot"):
        backup.save(secure_etcd.endpoints, tmp_path / "no.db", 5.0, secure_etcd.access("reader"))
