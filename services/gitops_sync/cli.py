"""``python -m services.gitops_sync``: flags and environment → typed settings → the
daemon. The only place that reads the command line or the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.core import program, signals
from services.core.kv import MAX_TXN_OPS, WIDE_TXN_OPS
from services.core.options import (
    add_election_flags,
    add_etcd_flags,
    add_log_flags,
    add_serve_flags,
    env,
    etcd_access,
)
from services.core.store import parse_endpoints
from services.gitops_sync.daemon import Daemon
from services.gitops_sync.settings import Settings

EPILOG = """\
keys written, per capability (see shared/registry-contract.md):
  /chora/capabilities/{ns}/metadata|type|version|dependencies|manifest
  /chora/sync/owned/{ns}      inventory {source, sha256, keys}: prune deletes only what
                              is listed here; a file whose sha256 and keys still match
                              is not parsed again
  /chora/sync/status          {commit, dirty, capabilities, errors[{file, ...}], unowned[],
                              prunes_held[], prune_refusal}; written on change only;
                              files named relative to --capabilities
  /chora/sync/checkpoint      a revision at which every owned capability matched its
                              inventory, so a restart need not read them all back

/healthz answers 503 with a "reason" within seconds when etcd cannot be reached, when
etcd's NOSPACE alarm refuses writes (the reason says how to clear it), when the
directory is missing, or when one step of the loop has been running for too long.
A key of ours changed by someone else is repaired within a debounce, with a warning.

--once prints one line: changes applied, manifest errors, files parsed of all. It
refuses to run (exit 2) while a gitops-sync daemon leads: two writers would race.

high availability: run two or three daemons with the same flags. One leads (its key
/chora/election/gitops-sync/{lease} has the lowest create revision) and syncs; the
others stand by (/healthz 200 with "role": "standby", chora_sync_leader 0) and take
over when it goes. Every write of the leader is a transaction that also checks its
election key, so a leader frozen past --election-ttl and woken up writes nothing.

exit codes with --once / --dry-run:
  0 every manifest valid, 1 at least one manifest rejected, 2 etcd unreachable
"""


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
        "--capabilities", type=Path, default=Path(env("CAPABILITIES_DIR", "capabilities")),
        help="directory of *.yaml manifests (env CAPABILITIES_DIR; default %(default)s)",
    )
    add_etcd_flags(p)
    p.add_argument(
        "--reconcile-interval", type=float, default=env("RECONCILE_INTERVAL", 60.0, float),
        help="seconds between full reconciles (env RECONCILE_INTERVAL; default %(default)s)",
    )
    p.add_argument(
        "--debounce", type=float, default=0.05,
        help="quiet period after file events before syncing them (default %(default)s s)",
    )
    p.add_argument("--once", action="store_true", help="one full reconcile, then exit")
    p.add_argument(
        "--dry-run", action="store_true",
        help="print the changes a full reconcile would make, write nothing, exit",
    )
    p.add_argument(
        "--allow-mass-prune", action="store_true",
        help="allow prunes beyond --max-prune-ratio (the deletion is intended)",
    )
    p.add_argument(
        "--max-prune-ratio", type=float, default=0.5,
        help="share of the capabilities owned that prunes may remove within "
        "--prune-window; more is refused and kept (default %(default)s)",
    )
    p.add_argument(
        "--prune-window", type=float, default=env("PRUNE_WINDOW", 600.0, float),
        help="seconds over which prunes are added up for --max-prune-ratio, so a "
        "directory emptied one file at a time is caught like one emptied at once "
        "(env PRUNE_WINDOW; default %(default)s)",
    )
    p.add_argument(
        "--max-txn-ops", type=int, default=env("MAX_TXN_OPS", MAX_TXN_OPS, int),
        help="operations per etcd transaction: at most the cluster's own --max-txn-ops, "
        f"whose default is {MAX_TXN_OPS}. Wider transactions cost etcd less: make up and "
        f"the compose files run both at {WIDE_TXN_OPS}. Set too high, the sync falls back "
        "to etcd's default at the first refusal, with a warning (env MAX_TXN_OPS; "
        "default %(default)s)",
    )
    add_election_flags(p, "gitops-sync")
    add_serve_flags(p)
    add_log_flags(p)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        endpoints=tuple(parse_endpoints(args.endpoints)),
        capabilities=args.capabilities,
        etcd_timeout=args.etcd_timeout,
        etcd_access=etcd_access(args),
        reconcile_interval=args.reconcile_interval,
        debounce=args.debounce,
        max_prune_ratio=args.max_prune_ratio,
        prune_window=args.prune_window,
        allow_mass_prune=args.allow_mass_prune,
        max_txn_ops=args.max_txn_ops,
        election_ttl=args.election_ttl,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        record_metrics=not (args.once or args.dry_run) or args.metrics_port is not None,
    )


def main(argv: list[str] | None = None) -> int:
    args, daemon = program.start(build_parser(), argv, settings_from, Daemon)
    if args.once or args.dry_run:
        return daemon.once(dry_run=args.dry_run)
    signals.on_stop(daemon.stop, "gitops_sync")
    return daemon.run()
