#!/usr/bin/env python3
"""Back up and restore the registry's etcd cluster.

    python scripts/backup.py save [--out PATH] [--endpoints h:p,...]
                                  [--cacert CA --cert root.crt --key root.key]
    python scripts/backup.py restore SNAPSHOT [--data-dir .data] [--secure]

``save`` streams a snapshot from the first member that answers (it works against any
cluster: ``make up``, compose, a remote one), writes it atomically and checks it with
``etcdutl snapshot status``. Default path: ``.data/backups/etcd-<UTC time>.db``. With
auth on, etcd gives a snapshot to ``root`` only: ``make backup SECURE=1`` passes root's
certificate from ``.data/pki/``.

``restore`` rebuilds the data directories of the LOCAL cluster that ``make up`` runs
(``<data-dir>/etcd1``, ``etcd2``, ``etcd3``) from a snapshot, one ``etcdutl snapshot
restore`` per member with the flags of ``services/core/topology.py``:

  1. stop ``make up`` (Ctrl-C); restore refuses while any member still answers;
  2. ``make restore SNAPSHOT=path/to/snapshot.db`` (this command); the old member
     directories are moved aside to ``<data-dir>/pre-restore-<time>/``, never deleted;
  3. ``make up``: the members start from the restored data, as a new cluster holding
     every key of the snapshot; the daemons reconcile against it as after any restart.
     A snapshot of the secure stack keeps its users, roles and auth; restore it with
     ``--secure`` (``make restore SECURE=1 ...``: https peer URLs) and ``make up SECURE=1``.

For the compose stack, see infrastructure/etcd/README.md ("Backup and restore").
Exit codes: 0 done, 1 refused or failed, 2 etcd unreachable (save).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.core import admin, topology
from services.core.access import EtcdAccess
from services.core.errors import StoreError
from services.core.localcluster import SECURE_MARK, etcd_binary
from services.core.options import add_access_flags, etcd_access
from services.core.store import Store, parse_endpoints

REPO = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


class BackupError(Exception):
    """A refusal or failure with the reason to print."""


def etcdutl() -> str:
    return etcd_binary("etcdutl")


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def snapshot_status(path: Path) -> dict[str, object]:
    """``etcdutl snapshot status``: hash, revision, totalKey, totalSize; raises if corrupt."""
    out = subprocess.run(
        [etcdutl(), "snapshot", "status", str(path), "-w", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if out.returncode != 0:
        raise BackupError(f"{path} is not a valid snapshot: {out.stderr.strip()}")
    return json.loads(out.stdout)


def save(endpoints: list[str], out: Path, timeout: float = 5.0,
         access: EtcdAccess | None = None) -> dict[str, object]:
    """Snapshot the first member that answers into ``out``; the snapshot's status.
    ``access``: with auth on, root's identity (etcd refuses a snapshot to anyone else)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    errors = []
    for endpoint in endpoints:
        try:
            with Store([endpoint], timeout=timeout, access=access) as one:
                admin.member_status(one)  # fail fast on a dead member before streaming
                admin.snapshot(one, str(partial))
        except (StoreError, OSError) as exc:
            errors.append(f"{endpoint}: {exc}")
            partial.unlink(missing_ok=True)
            continue
        status = snapshot_status(partial)
        partial.replace(out)
        return {"path": str(out), "endpoint": endpoint, **status}
    raise ConnectionError("no member could be snapshotted: " + "; ".join(errors))


def _answering(members: tuple[topology.Member, ...]) -> list[str]:
    """Members whose client port accepts a connection: running, plaintext or TLS."""
    alive = []
    for m in members:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", m.client_port)) == 0:
                alive.append(m.name)
    return alive


def restore(
    snapshot: Path,
    data_dir: Path,
    members: tuple[topology.Member, ...] = topology.MEMBERS,
    scheme: str = "http",
) -> list[Path]:
    """Rebuild ``data_dir/<member>`` for every member from ``snapshot``; the new dirs.
    ``scheme``: "https" for the secure stack (its peers talk TLS).

    Refuses while a member answers on its client port (the cluster must be stopped).
    Existing member directories are moved to ``data_dir/pre-restore-<time>/``.
    """
    snapshot = snapshot.resolve()
    if not snapshot.is_file():
        raise BackupError(f"no snapshot at {snapshot}")
    snapshot_status(snapshot)
    alive = _answering(members)
    if alive:
        raise BackupError(
            f"members {alive} are running: stop the cluster first (Ctrl-C in `make up`, "
            "or stop whatever runs it), then restore"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = [data_dir / m.name for m in members if (data_dir / m.name).exists()]
    if existing:
        aside = data_dir / f"pre-restore-{_stamp()}"
        aside.mkdir()
        for path in existing:
            path.rename(aside / path.name)
        print(f"moved the old data directories to {aside}")
    restored = []
    for m in members:
        target = data_dir / m.name
        flags = dict(
            f[2:].split("=", 1)
            for f in topology.member_flags(
                m, members,
                host_of={x.name: "127.0.0.1" for x in members},
                listen_host="127.0.0.1",
                data_dir=str(target),
                scheme=scheme,
            )
        )
        command = [
            etcdutl(), "snapshot", "restore", str(snapshot),
            f"--name={flags['name']}",
            f"--data-dir={flags['data-dir']}",
            f"--initial-cluster={flags['initial-cluster']}",
            f"--initial-cluster-token={flags['initial-cluster-token']}",
            f"--initial-advertise-peer-urls={flags['initial-advertise-peer-urls']}",
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise BackupError(f"etcdutl snapshot restore for {m.name} failed: "
                              f"{out.stderr.strip()[-2000:]}")
        restored.append(target)
    mark = data_dir / SECURE_MARK  # what `make up` checks the mode against
    if scheme == "https":
        mark.touch()
    else:
        mark.unlink(missing_ok=True)
    return restored


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="write a snapshot of the cluster to a file")
    s.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", ",".join(topology.DEFAULT_ENDPOINTS)),
        help="etcd members, host:port,... (env ETCD_ENDPOINTS; default %(default)s)",
    )
    s.add_argument("--out", type=Path, default=None,
                   help="snapshot file (default .data/backups/etcd-<UTC time>.db)")
    s.add_argument("--timeout", type=float, default=5.0,
                   help="deadline of each etcd call in seconds (default %(default)s)")
    add_access_flags(s)
    r = sub.add_parser("restore", help="rebuild the stopped local cluster from a snapshot")
    r.add_argument("snapshot", type=Path)
    r.add_argument("--data-dir", type=Path, default=REPO / ".data",
                   help="where `make up` keeps etcd1/ etcd2/ etcd3/ (default %(default)s)")
    r.add_argument("--secure", action="store_true",
                   help="the cluster of `make up SECURE=1`: members with https peer URLs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "save":
            out = args.out or REPO / ".data" / "backups" / f"etcd-{_stamp()}.db"
            info = save(parse_endpoints(args.endpoints), out, args.timeout,
                        etcd_access(args))
            print(f"snapshot saved to {info['path']} from {info['endpoint']}: "
                  f"revision {info['revision']}, {info['totalKey']} keys, "
                  f"{info['totalSize']} bytes, hash {info['hash']}")
            return EXIT_OK
        dirs = restore(args.snapshot, args.data_dir,
                       scheme="https" if args.secure else "http")
        print(f"restored {args.snapshot} into {', '.join(str(d) for d in dirs)}")
        print("start the cluster again with `make up" + (" SECURE=1`" if args.secure else "`"))
        return EXIT_OK
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (BackupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
