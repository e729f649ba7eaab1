"""``python -m services.gitops_sync``: flags, environment, signals. The only place that
reads the command line or the environment."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from services.core import logs, topology
from services.core.errors import NoSpace, StoreError, Unavailable
from services.core.httpd import MetricsServer
from services.core.store import Store
from services.gitops_sync.plan import Policy
from services.gitops_sync.reconciling import Reconciler
from services.gitops_sync.running import Health, run
from services.gitops_sync.scanning import DirectoryMissing

EXIT_OK, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2

EPILOG = """\
keys written, per capability (see shared/registry-contract.md):
  /chora/capabilities/{ns}/metadata|type|version|dependencies|manifest
  /chora/sync/owned/{ns}      inventory: prune deletes only what is listed here
  /chora/sync/status          {commit, dirty, capabilities, errors[], unowned[],
                              prunes_held[], prune_refusal}; written on change only

/healthz answers 503 with a "reason" within seconds when etcd cannot be reached, when
etcd's NOSPACE alarm refuses writes (the reason says how to clear it), when the
directory is missing, or when one step of the loop has been running for too long.
A key of ours changed by someone else is repaired within a debounce, with a warning.

exit codes with --once / --dry-run:
  0 every manifest valid, 1 at least one manifest rejected, 2 etcd unreachable
"""


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.gitops_sync",
        description="Keep /chora/capabilities/ in etcd an exact projection of a directory "
        "of capability manifests: a full reconcile at start and every interval, file "
        "events in between, prune for deletions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--capabilities",
        type=Path,
        default=Path(_env("CAPABILITIES_DIR", "capabilities") or "capabilities"),
        help="directory of *.yaml manifests (env CAPABILITIES_DIR; default %(default)s)",
    )
    p.add_argument(
        "--endpoints",
        default=_env("ETCD_ENDPOINTS", ",".join(topology.DEFAULT_ENDPOINTS)),
        help="etcd members, host:port,... (env ETCD_ENDPOINTS; default %(default)s)",
    )
    p.add_argument(
        "--reconcile-interval",
        type=float,
        default=float(_env("RECONCILE_INTERVAL", "60") or 60),
        help="seconds between full reconciles (env RECONCILE_INTERVAL; default %(default)s)",
    )
    p.add_argument(
        "--debounce",
        type=float,
        default=0.05,
        help="quiet period after file events before syncing them (default %(default)s s)",
    )
    p.add_argument("--once", action="store_true", help="one full reconcile, then exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the changes a full reconcile would make, write nothing, exit",
    )
    p.add_argument(
        "--allow-mass-prune",
        action="store_true",
        help="allow a reconcile to remove more than --max-prune-ratio of capabilities",
    )
    p.add_argument(
        "--max-prune-ratio",
        type=float,
        default=0.5,
        help="share of the capabilities owned that prunes may remove within "
        "--prune-window; more is refused and kept (default %(default)s)",
    )
    p.add_argument(
        "--prune-window",
        type=float,
        default=float(_env("PRUNE_WINDOW", "600") or 600),
        help="seconds over which prunes are added up for --max-prune-ratio, so a "
        "directory emptied one file at a time is caught like one emptied at once "
        "(env PRUNE_WINDOW; default %(default)s)",
    )
    p.add_argument(
        "--etcd-timeout",
        type=float,
        default=3.0,
        help="deadline of each etcd call in seconds (default %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(m) if (m := _env("METRICS_PORT", None)) else None,
        help="serve /metrics and /healthz on this port (env METRICS_PORT; default off)",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a terminal)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, json=args.log_json)
    log = logs.get("gitops_sync")
    try:
        store = Store(args.endpoints.split(","), timeout=args.etcd_timeout)
    except (ValueError, OSError) as exc:
        log.error("bad --endpoints", endpoints=args.endpoints, error=str(exc))
        return EXIT_UNREACHABLE
    policy = Policy(args.max_prune_ratio, args.allow_mass_prune, args.prune_window)
    reconciler = Reconciler(args.capabilities, store, policy=policy)
    try:
        if args.once or args.dry_run:
            return _once(reconciler, dry_run=args.dry_run, log=log)
        return _daemon(reconciler, args, log)
    finally:
        reconciler.close()
        store.close()


def _once(
    reconciler: Reconciler, *, dry_run: bool, log: logs.structlog.typing.FilteringBoundLogger
) -> int:
    deadline = time.monotonic() + 3 * reconciler.store.timeout
    while True:
        try:
            outcome = reconciler.full(dry_run=dry_run)
            break
        except NoSpace as exc:
            log.error("etcd refuses writes", error=str(exc))
            return EXIT_UNREACHABLE
        except Unavailable as exc:
            if time.monotonic() > deadline:
                log.error("etcd unreachable", endpoints=reconciler.store.endpoints, error=str(exc))
                return EXIT_UNREACHABLE
            time.sleep(0.5)
        except DirectoryMissing as exc:
            log.error("nothing synced", reason=str(exc))
            return EXIT_INVALID
        except StoreError as exc:
            log.error("etcd rejected a request", error=str(exc))
            return EXIT_UNREACHABLE
    if dry_run:
        for change in outcome.plan.changes:
            print(change.describe())
        if outcome.plan.refusal:
            print(f"REFUSED: {outcome.plan.refusal}")
        print(
            f"{len(outcome.plan.changes)} change(s) planned, {len(outcome.errors)} manifest "
            "error(s); nothing written (dry run)"
        )
    for err in outcome.errors:
        print(f"error: {err}", file=sys.stderr)
    return EXIT_INVALID if outcome.errors else EXIT_OK


def _daemon(
    reconciler: Reconciler,
    args: argparse.Namespace,
    log: logs.structlog.typing.FilteringBoundLogger,
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A step may legitimately take a few etcd deadlines (a ping retried across members).
    health = Health(stall_after=max(10.0, 3 * args.etcd_timeout))
    server = None
    if args.metrics_port is not None:
        server = MetricsServer(args.metrics_port, health.check).start()
        log.info("serving /metrics and /healthz", port=server.port)
    log.info(
        "gitops sync started",
        capabilities=str(args.capabilities),
        endpoints=reconciler.store.endpoints,
        interval=args.reconcile_interval,
    )
    try:
        run(
            reconciler,
            stop,
            interval=args.reconcile_interval,
            debounce=args.debounce,
            health=health,
        )
    finally:
        if server is not None:
            server.stop()
    log.info("gitops sync stopped")
    return EXIT_OK
