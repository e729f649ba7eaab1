"""Turn etcd's auth on in a secure cluster: the users, roles and grants of ``roles.py``,
created with etcdctl as ``root`` (its certificate), then ``auth enable``.

etcdctl, not our gRPC adapter: a user without a password (certificate auth only) needs
``UserAddOptions.no_password``, which etcd 3.5 has and python-etcd3 0.12's protobufs
predate. Idempotent: on a cluster bootstrapped before, "already exists" counts as done,
so every ``make up SECURE=1`` and every start of compose's one-shot ``bootstrap``
service runs it again safely (and adds what a changed table grants; it never revokes).

    python -m services.core.bootstrap --endpoints etcd1:2379,... \\
        --cacert /pki/ca.crt --cert /pki/root.crt --key /pki/root.key
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

from services.core import logs, roles
from services.core.etcdbin import etcd_binary
from services.core.options import add_etcd_flags, add_log_flags

ATTEMPTS = 20  # etcdctl runs of one command while the cluster settles (an election)


class BootstrapError(RuntimeError):
    """An etcdctl command failed for another reason than "already exists"."""


def etcdctl_path() -> str:
    """The chosen etcd's etcdctl (``etcdbin.py``), else the one on PATH (the compose
    bootstrap image carries etcdctl alone)."""
    try:
        return etcd_binary("etcdctl")
    except FileNotFoundError:
        found = shutil.which("etcdctl")
        if found is None:
            raise
        return found


def run(endpoints: Sequence[str], root_flags: Sequence[str], args: Sequence[str],
        timeout: float = 10.0) -> str:
    """One etcdctl command as ``root``; its output. "already exists" is success; a
    transient failure (no leader yet) is tried again for a few seconds."""
    command = [etcdctl_path(), f"--endpoints={','.join(endpoints)}", *root_flags,
               "--command-timeout=5s", *args]
    error = ""
    for _ in range(ATTEMPTS):
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                             check=False)
        if out.returncode == 0:
            return out.stdout.strip()
        error = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        if any(done in out.stderr for done in roles.ALREADY_DONE):
            return error
        if "permission denied" in out.stderr or "user name is empty" in out.stderr:
            break  # not root's certificate: waiting cannot help
        time.sleep(0.25)
    raise BootstrapError(f"etcdctl {' '.join(args)} failed: {error}")


def enable_auth(endpoints: Sequence[str], root_flags: Sequence[str]) -> list[str]:
    """Create the users, roles and grants of ``roles.ROLES`` and turn auth on; the
    commands run, for the log. ``root_flags``: ``--cacert/--cert/--key`` of root."""
    log = logs.get("bootstrap")
    done = []
    for args in roles.bootstrap_commands():
        run(endpoints, root_flags, args)
        done.append(" ".join(args))
    log.info("etcd auth enabled", users=list(roles.IDENTITIES), roles=list(roles.ROLES))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.core.bootstrap",
                                description=__doc__.split("\n\n")[0])
    add_etcd_flags(p)
    add_log_flags(p)
    args = p.parse_args(argv)
    logs.configure(args.log_level, json=args.log_json)
    if not (args.cacert and args.cert and args.key):
        p.error("give root's --cacert, --cert and --key (env ETCD_CACERT, ETCD_CERT, ETCD_KEY)")
    flags = [f"--cacert={args.cacert}", f"--cert={args.cert}", f"--key={args.key}"]
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    try:
        enable_auth(endpoints, flags)
    except (BootstrapError, FileNotFoundError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
