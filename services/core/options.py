"""Flags every program shares, with their environment defaults: one definition, so
``--endpoints``/``ETCD_ENDPOINTS`` or ``--log-level`` mean the same in every ``--help``.

The command line and the environment are read only here and in each program's
``cli.py``; everything below them takes typed settings.

>>> p = argparse.ArgumentParser()
>>> add_etcd_flags(p); add_serve_flags(p); add_log_flags(p)
>>> p.parse_args(["--timeout", "1.5"]).etcd_timeout
1.5
>>> etcd_access(p.parse_args([])).tls
False
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from services.core import topology
from services.core.access import EtcdAccess

T = TypeVar("T")


def env(name: str, default: T, cast: Callable[[str], T] = str) -> T:  # type: ignore[assignment]
    """``$name`` cast to the default's type; unset or empty gives ``default``. A value
    that does not cast is a configuration error, said with the variable's name."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={raw!r} is not valid") from None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def add_etcd_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoints",
        default=env("ETCD_ENDPOINTS", ",".join(topology.DEFAULT_ENDPOINTS)),
        help="etcd members, comma-separated host:port (env ETCD_ENDPOINTS; "
        "default %(default)s)",
    )
    p.add_argument(
        "--etcd-timeout", "--timeout",
        dest="etcd_timeout",
        type=float,
        default=env("ETCD_TIMEOUT", 3.0, float),
        help="deadline of every etcd call in seconds; --timeout is the same flag "
        "(env ETCD_TIMEOUT; default %(default)s)",
    )
    add_access_flags(p)


def add_election_flags(p: argparse.ArgumentParser, program: str) -> None:
    p.add_argument(
        "--election-ttl", type=int, default=env("ELECTION_TTL", 3, int),
        help=f"seconds of the leader's session lease. Run two or three {program} "
        "instances: one leads (/chora/election/" + program + "/), the others stand by "
        "and take over when it goes: at once after a clean stop, within this TTL plus "
        "about a second after a crash (3: a standby leads < 5 s after the leader is "
        "killed; a leader that cannot reach etcd for this long steps down) "
        "(env ELECTION_TTL; default %(default)s)",
    )


def add_access_flags(p: argparse.ArgumentParser) -> None:
    """etcdctl's flag names for TLS and auth; none given: plaintext, no auth."""
    g = p.add_argument_group(
        "etcd security",
        "TLS and auth, with etcdctl's flag names (make up SECURE=1 makes the files\n"
        "under .data/pki/). None given: plaintext without auth. Certificate files\n"
        "renewed on disk are picked up within a minute, without a restart.")
    g.add_argument("--cacert", type=Path, default=env("ETCD_CACERT", None, Path),
                   help="verify the members' certificates with this CA bundle; turns TLS on "
                        "(env ETCD_CACERT)")
    g.add_argument("--cert", type=Path, default=env("ETCD_CERT", None, Path),
                   help="identify with this client certificate; its common name is the etcd "
                        "user (env ETCD_CERT)")
    g.add_argument("--key", type=Path, default=env("ETCD_KEY", None, Path),
                   help="the private key of --cert (env ETCD_KEY)")
    g.add_argument("--user", default=env("ETCD_USER", None),
                   help="etcd user for password auth, where a certificate is not possible; "
                        "the token is renewed before it expires (env ETCD_USER)")
    g.add_argument("--password-file", type=Path, default=env("ETCD_PASSWORD_FILE", None, Path),
                   help="file holding --user's password, one line (env ETCD_PASSWORD_FILE)")
    g.add_argument("--tls-server-name", default=env("ETCD_TLS_SERVER_NAME", None),
                   help="name the members' certificates must be valid for (env "
                        "ETCD_TLS_SERVER_NAME; default: the endpoints' host if they share "
                        "one, else localhost)")


def etcd_access(args: argparse.Namespace) -> EtcdAccess:
    """The parsed flags as one ``EtcdAccess``; ``ValueError`` naming the flag at fault."""
    return EtcdAccess(cacert=args.cacert, cert=args.cert, key=args.key, user=args.user,
                      password_file=args.password_file, server_name=args.tls_server_name)


def add_serve_flags(p: argparse.ArgumentParser, *, port: int | None = None) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env("METRICS_PORT", port, int),
        help="serve /metrics and /healthz on this port (env METRICS_PORT; default "
        + ("off)" if port is None else "%(default)s)"),
    )
    p.add_argument(
        "--metrics-host",
        default=env("METRICS_HOST", "0.0.0.0"),
        help="address /metrics and /healthz listen on (env METRICS_HOST; default %(default)s)",
    )


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_flags(p: argparse.ArgumentParser) -> None:
    level = env("LOG_LEVEL", "info").lower()
    if level not in LOG_LEVELS:  # argparse checks choices on the command line only
        raise SystemExit(f"error: LOG_LEVEL={level!r} is not one of {', '.join(LOG_LEVELS)}")
    p.add_argument(
        "--log-level",
        default=level,
        choices=LOG_LEVELS,
        help="(env LOG_LEVEL; default %(default)s)",
    )
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
