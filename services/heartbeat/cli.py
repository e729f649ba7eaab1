"""``python -m services.heartbeat``: flags and environment → typed settings → the daemon.
The only place that reads the command line or the environment; the flags every program
shares (etcd, /metrics, logs) come from ``services.core.options``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from services.core import program, signals
from services.core.options import (
    add_election_flags,
    add_etcd_flags,
    add_log_flags,
    add_serve_flags,
    env,
    env_flag,
    etcd_access,
)
from services.core.store import parse_endpoints
from services.heartbeat.daemon import Daemon
from services.heartbeat.settings import Settings
from services.heartbeat.states import STATES

DESCRIPTION = """\
Keep a health record alive in etcd for every Service-type capability: one lease per
service (TTL --ttl), refreshed every --interval over one keep-alive stream, and the key
/chora/capabilities/{ns}/health attached to it and rewritten on every beat. The set of
services is read from etcd (the keys the gitops sync writes) and followed with a watch,
or taken from --capabilities DIR."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.heartbeat",
        description=DESCRIPTION,
        epilog=STATES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_etcd_flags(p)
    p.add_argument("--ttl", type=int, default=env("HEARTBEAT_TTL", 30, int),
                   help="lease TTL in seconds (env HEARTBEAT_TTL; default %(default)s)")
    p.add_argument("--interval", type=float, default=env("HEARTBEAT_INTERVAL", 10.0, float),
                   help="seconds between beats and between probes of one service "
                        "(env HEARTBEAT_INTERVAL; default %(default)s)")
    p.add_argument("--capabilities", metavar="DIR", type=Path,
                   default=env("CAPABILITIES_DIR", None, Path),
                   help="take the services from the manifests in DIR instead of from etcd "
                        "(env CAPABILITIES_DIR; default: learn them from etcd)")
    p.add_argument("--revoke-on-exit", action="store_true",
                   default=env_flag("HEARTBEAT_REVOKE_ON_EXIT"),
                   help="on SIGTERM/SIGINT revoke every lease so all health keys vanish at "
                        "once (decommissioning); default: leave them for a successor "
                        "(env HEARTBEAT_REVOKE_ON_EXIT)")
    p.add_argument("--resync", type=float, default=env("HEARTBEAT_RESYNC", 60.0, float),
                   help="seconds between full re-reads of the capabilities (env "
                        "HEARTBEAT_RESYNC; default %(default)s)")
    add_election_flags(p, "heartbeat")
    add_serve_flags(p)
    add_log_flags(p)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Raises ``ValueError`` for values no daemon could run with."""
    return Settings(
        endpoints=tuple(parse_endpoints(args.endpoints)),
        ttl=args.ttl,
        interval=args.interval,
        capabilities_dir=args.capabilities,
        revoke_on_exit=args.revoke_on_exit,
        election_ttl=args.election_ttl,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        resync=args.resync,
        etcd_timeout=args.etcd_timeout,
        etcd_access=etcd_access(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    _, daemon = program.start(build_parser(), argv, settings_from, Daemon)
    signals.on_stop(daemon.stop, "heartbeat")
    return daemon.run()
