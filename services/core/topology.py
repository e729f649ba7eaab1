"""The one description of the three etcd members and their flags.

The local launcher builds command lines from it and a test checks that
``infrastructure/etcd/docker-compose.yml`` says the same, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass


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

# The seed's settings: heartbeat 100 ms, election 1000 ms, 8 GiB quota, hourly compaction.
TUNING: dict[str, str] = {
    "heartbeat-interval": "100",
    "election-timeout": "1000",
    "quota-backend-bytes": str(8 * 1024**3),
    "auto-compaction-mode": "periodic",
    "auto-compaction-retention": "1h",
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
) -> list[str]:
    """Command-line flags for one member.

    ``host_of`` maps member name to the address its peers and clients reach it at
    (127.0.0.1 locally, the service name in compose); ``listen_host`` is what it binds.
    """
    me = host_of[member.name]
    initial = ",".join(f"{m.name}=http://{host_of[m.name]}:{m.peer_port}" for m in members)
    flags = {
        "name": member.name,
        "data-dir": data_dir,
        "listen-client-urls": f"http://{listen_host}:{member.client_port}",
        "advertise-client-urls": f"http://{me}:{member.client_port}",
        "listen-peer-urls": f"http://{listen_host}:{member.peer_port}",
        "initial-advertise-peer-urls": f"http://{me}:{member.peer_port}",
        "initial-cluster": initial,
        "initial-cluster-token": CLUSTER_TOKEN,
        "initial-cluster-state": state,
        **TUNING,
    }
    return [f"--{k}={v}" for k, v in flags.items()]
