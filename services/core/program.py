"""What every program does between its command line and its loop, written once: typed
settings from the flags, logging, and the resources whose failure is a configuration
error (an endpoint that does not resolve, a port already taken). A configuration error
is one usage line naming the flag and exit 2, never a traceback or a retry loop."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from services.core import logs
from services.core.access import EtcdAccess
from services.core.credentials import UnusableFiles
from services.core.store import Store

if TYPE_CHECKING:  # imported when a server is asked for: a `--once` run serves nothing
    from prometheus_client import CollectorRegistry

    from services.core.httpd import HealthCheck, MetricsServer

S = TypeVar("S")
D = TypeVar("D")


def start(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    settings_from: Callable[[argparse.Namespace], S],
    daemon: Callable[[S], D],
) -> tuple[argparse.Namespace, D]:
    """Parse, build the settings and the daemon; exit 2 with the reason if either says
    ``ValueError``."""
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    logs.configure(args.log_level, json=args.log_json)
    try:
        return args, daemon(settings)
    except ValueError as exc:
        parser.error(str(exc))


def connect(endpoints: Sequence[str], timeout: float,
            access: EtcdAccess | None = None) -> Store:
    """The program's one store. ``access``: TLS and auth (default plaintext, no auth);
    a TLS file that cannot be used is a configuration error naming its flag."""
    access = access or EtcdAccess()
    try:
        store = Store(endpoints, timeout=timeout, access=access)
    except UnusableFiles:
        raise  # names its flag already
    except (ValueError, OSError) as exc:
        raise ValueError(f"--endpoints {','.join(endpoints)}: {exc}") from exc
    if access.tls or access.user:
        logs.get("etcd").info("connecting to etcd", endpoints=list(endpoints),
                              identity=store.identity, **access.describe())
    return store


def http_server(
    port: int | None, host: str, check: HealthCheck, registry: CollectorRegistry
) -> MetricsServer | None:
    """The /metrics and /healthz server, bound now (so a taken port fails at start-up)
    and started by the daemon's ``run``; None when no port is given."""
    if port is None:
        return None
    from services.core.httpd import MetricsServer

    try:
        return MetricsServer(port, check, host=host, registry=registry)
    except OSError as exc:
        raise ValueError(f"--metrics-port {port} (--metrics-host {host}): {exc}") from exc
