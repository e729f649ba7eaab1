"""The one description of the three etcd members and their flags.

The local launcher builds command lines from it and a test checks that
``infrastructure/etcd/docker-compose.yml`` says the same, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.kv import WIDE_TXN_OPS


@dataclass(frozen=True)
class Member:
    name: str
    client_port: int
    peer_port: int


MEMBERS: tuple[Member, ...] = (
    Member("etcd1", 2379, 2380),
    Member("etcd2", 2389, 2390),
    Member("etcd3", 2399, 2400),
)

CLUSTER_TOKEN = "chora-etcd-cluster"

# The seed's settings: heartbeat 100 ms, election 1000 ms, 8 GiB quota, hourly compaction;
# and wider transactions than etcd's default 128 operations (kv.py: why), which the
# sync is told of by its --max-txn-ops.
TUNING: dict[str, str] = {
    "heartbeat-interval": "100",
    "election-timeout": "1000",
    "quota-backend-bytes": str(8 * 1024**3),
    "auto-compaction-mode": "periodic",
    "auto-compaction-retention": "1h",
    "max-txn-ops": str(WIDE_TXN_OPS),
}

DEFAULT_ENDPOINTS: tuple[str, ...] = tuple(f"127.0.0.1:{m.client_port}" for m in MEMBERS)


def member_flags(
    member: Member,
    members: tuple[Member, ...],
    *,
    host_of: dict[str, str],
    listen_host: str,
    data_dir: str,
    state: str = "new",
    scheme: str = "http",
) -> list[str]:
    """Command-line flags for one member.

    ``host_of`` maps member name to the address its peers and clients reach it at
    (127.0.0.1 locally, the service name in compose); ``listen_host`` is what it binds.
    ``scheme``: "https" in the secure stack, with ``tls_flags`` added.
    """
    me = host_of[member.name]
    initial = ",".join(f"{m.name}={scheme}://{host_of[m.name]}:{m.peer_port}" for m in members)
    flags = {
        "name": member.name,
        "data-dir": data_dir,
        "listen-client-urls": f"{scheme}://{listen_host}:{member.client_port}",
        "advertise-client-urls": f"{scheme}://{me}:{member.client_port}",
        "listen-peer-urls": f"{scheme}://{listen_host}:{member.peer_port}",
        "initial-advertise-peer-urls": f"{scheme}://{me}:{member.peer_port}",
        "initial-cluster": initial,
        "initial-cluster-token": CLUSTER_TOKEN,
        "initial-cluster-state": state,
        **TUNING,
    }
    return [f"--{k}={v}" for k, v in flags.items()]


def tls_flags(ca: str, cert: str, key: str) -> list[str]:
    """A member's flags in the secure stack: TLS on the client and the peer ports (the
    same ports), and on both a certificate signed by ``ca`` is required. With etcd's auth
    on, a client certificate's common name is its etcd user (``roles.py``)."""
    flags = {
        "client-cert-auth": "true",
        "trusted-ca-file": ca,
        "cert-file": cert,
        "key-file": key,
        "peer-client-cert-auth": "true",
        "peer-trusted-ca-file": ca,
        "peer-cert-file": cert,
        "peer-key-file": key,
    }
    return [f"--{k}={v}" for k, v in flags.items()]
