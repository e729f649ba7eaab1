"""Command line of ``python -m services.heartbeat``: flags with environment defaults."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from services.core import logs, topology
from services.core.store import parse_endpoints
from services.heartbeat.settings import Settings
from services.heartbeat.states import STATES

DESCRIPTION = """\
Keep a health record alive in etcd for every Service-type capability: one lease per
service (TTL --ttl), refreshed every --interval over one keep-alive stream, and the key
/chora/capabilities/{ns}/health attached to it and rewritten on every beat. The set of
services is read from etcd (the keys the gitops sync writes) and followed with a watch,
or taken from --capabilities DIR."""


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.heartbeat",
        description=DESCRIPTION,
        epilog=STATES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoints", default=os.environ.get("ETCD_ENDPOINTS",
                                              ",".join(topology.DEFAULT_ENDPOINTS)),
        help="etcd endpoints, comma-separated host:port (env ETCD_ENDPOINTS; "
             "default %(default)s)",
    )
    p.add_argument("--ttl", type=int, default=_env_int("HEARTBEAT_TTL", 30),
                   help="lease TTL in seconds (env HEARTBEAT_TTL; default %(default)s)")
    p.add_argument("--interval", type=float, default=_env_float("HEARTBEAT_INTERVAL", 10.0),
                   help="seconds between beats and between probes of one service "
                        "(env HEARTBEAT_INTERVAL; default %(default)s)")
    p.add_argument("--capabilities", metavar="DIR", type=Path,
                   default=os.environ.get("CAPABILITIES_DIR") or None,
                   help="take the services from the manifests in DIR instead of from etcd "
                        "(env CAPABILITIES_DIR; default: learn them from etcd)")
    p.add_argument("--revoke-on-exit", action="store_true",
                   default=os.environ.get("HEARTBEAT_REVOKE_ON_EXIT", "") in ("1", "true"),
                   help="on SIGTERM/SIGINT revoke every lease so all health keys vanish at "
                        "once (decommissioning); default: leave them for a successor")
    p.add_argument("--metrics-port", type=int, default=_env_int("METRICS_PORT", None),
                   help="serve /metrics and /healthz on this port (env METRICS_PORT; "
                        "default off)")
    p.add_argument("--metrics-host", default=os.environ.get("METRICS_HOST", "0.0.0.0"),
                   help="address for /metrics (default %(default)s)")
    p.add_argument("--resync", type=float, default=_env_float("HEARTBEAT_RESYNC", 60.0),
                   help="seconds between full re-reads of the capabilities (default "
                        "%(default)s)")
    p.add_argument("--timeout", type=float, default=_env_float("ETCD_TIMEOUT", 3.0),
                   help="deadline of every etcd call in seconds (default %(default)s)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                   help="JSON log lines (default: JSON unless stderr is a terminal)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        endpoints=tuple(parse_endpoints(args.endpoints)),
        ttl=args.ttl,
        interval=args.interval,
        capabilities_dir=args.capabilities,
        revoke_on_exit=args.revoke_on_exit,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        resync=args.resync,
        timeout=args.timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    logs.configure(args.log_level, json=args.log_json)
    from services.heartbeat.daemon import Daemon  # after logging is configured

    daemon = Daemon(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if daemon.stopping.is_set():
            logs.get("heartbeat").warning("second signal: exiting now")
            os._exit(1)
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
