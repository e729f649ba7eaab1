"""Where the etcd members are: ``--endpoints`` parsed, resolved to the addresses gRPC's
multi-address target takes, and the one name their TLS certificates are checked
against. No gRPC here (``store.py`` uses these)."""

from __future__ import annotations

import socket
from collections.abc import Iterable


def resolve(endpoint: str) -> str:
    """gRPC's ipv4: target takes addresses only, so compose service names resolve here."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return f"{socket.gethostbyname(host)}:{port}"


def parse_endpoints(text: str | Iterable[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = [e.strip().removeprefix("http://").removeprefix("https://")
                 for e in items if e.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoints given")
    return endpoints


def server_name(endpoints: list[str]) -> str:
    """The name the members' certificates are checked against. gRPC checks a channel's
    target name, and the multi-address target "ipv4:a:p,b:p" is no name at all (measured:
    "Hostname Verification Check failed" on every member), so one name is set with
    ``grpc.ssl_target_name_override`` and it must be valid in every member's
    certificate: the endpoints' host when they share one (127.0.0.1 under ``make up``),
    else "localhost", which ``pki.py`` puts in every member's certificate (compose's
    etcd1/etcd2/etcd3 resolve to three addresses); ``--tls-server-name`` for any other
    CA. The CA check stays: only a member certificate of that CA passes."""
    hosts = {e.rpartition(":")[0] for e in endpoints}
    return hosts.pop() if len(hosts) == 1 else "localhost"
