"""``python -m services.registry``: flags and environment → typed settings → the
registry. The only place that reads the command line or the environment; the flags
every program shares (etcd, logs) come from ``services.core.options``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from services.core import program, signals
from services.core.options import add_etcd_flags, add_log_flags, env, env_flag, etcd_access
from services.core.store import parse_endpoints
from services.registry import tokens
from services.registry.daemon import Daemon
from services.registry.settings import Settings

DESCRIPTION = """\
The registry service (SAP-044 "Manifest"): running services register instances over
HTTP, keep them alive with heartbeats and discover each other. Each instance is the key
/chora/services/{name}/{id} in etcd on a lease of its own (TTL --removal-timeout), so
etcd removes a silent instance whether or not a registry is running; reads are answered
from memory, fed by one watch of /chora/services/ and /chora/capabilities/."""

EPILOG = """\
health states of an instance (GET /v1/services/{name} -> "status"):
  up          a heartbeat arrived within --heartbeat-timeout
  unhealthy   registered, silent for more than --heartbeat-timeout; still listed; its
              next heartbeat makes it up again
  (removed)   silent for --removal-timeout, or deregistered: the key is gone, GET 404,
              the change stream says "down"; a heartbeat gets 404 (register again)
  unknown     this registry has lost the etcd quorum and answers from memory; writes
              get 503 until the quorum is back (header X-Registry-Degraded: true)

routes (JSON; errors are {"detail": ...} naming the field; every answer carries
X-Registry-Index, the etcd revision it reflects; 401 / 403: see security below):
  POST   /v1/services                          201 | 401 | 403 | 413 | 422 | 503
  PUT    /v1/services/{name}/{id}/heartbeat    204 | 401 | 403 | 404 | 422 | 503
  DELETE /v1/services/{name}/{id}              204 | 401 | 403 | 422 | 503
  GET    /v1/services/{name}                   200 record or list | 404 | 422
  GET    /v1/services?status=&tag=&dependency= 200 list
  GET    /v1/capabilities?type=&dependency=    200 list
  GET    /v1/capabilities/{namespace}          200 | 404
  GET    /v1/watch                             Server-Sent Events; Last-Event-ID resumes
                                               (?include=sync,cluster,beats: extra events)
  GET    /v1/dependencies                      200 every dependency checked, and cycles
  GET    /v1/sync                              200 the gitops sync's status
  GET    /v1/cluster                           200 etcd members, leader, alarms
  GET    /v1/health, /metrics, /openapi.json, /docs
  GET    /ui/                                  the dashboard (HTML; reads must be open)

security (README "Security"):
  without --tokens the API is open to anyone who can reach it (warned at start).
  With --tokens FILE, a write needs "Authorization: Bearer <token>" whose scopes cover
  the service name: 401 (WWW-Authenticate: Bearer) without a known token, 403 with
  the wrong scope. Scopes: read, register:<glob> (register, heartbeat and deregister
  names matching the glob), admin. Reads stay open unless --require-read-token;
  /v1/health, /metrics, /openapi.json and /docs always do. The file is re-read when
  it changes (and on SIGHUP): revoking a token is deleting its line.
  Mint a token (printed once, on stdout; its line goes to the file or stderr):
    python -m services.registry token --subject orchestrator \\
        --scope 'register:orchestrator*' --scope read --file tokens.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.registry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default=env("REGISTRY_HOST", "127.0.0.1"),
                   help="address the API, /metrics and /openapi.json listen on "
                        "(env REGISTRY_HOST; default %(default)s)")
    p.add_argument("--port", type=int, default=env("REGISTRY_PORT", 8500, int),
                   help="their port; 0 picks a free one (env REGISTRY_PORT; default "
                        "%(default)s)")
    add_etcd_flags(p)
    p.add_argument("--heartbeat-timeout", type=float,
                   default=env("REGISTRY_HEARTBEAT_TIMEOUT", 30.0, float),
                   help="seconds without a heartbeat before an instance is marked "
                        "unhealthy; clients beat every third of it (env "
                        "REGISTRY_HEARTBEAT_TIMEOUT; default %(default)s)")
    p.add_argument("--removal-timeout", type=int,
                   default=env("REGISTRY_REMOVAL_TIMEOUT", 60, int),
                   help="seconds without a heartbeat before etcd removes the instance: "
                        "the TTL of its lease (env REGISTRY_REMOVAL_TIMEOUT; default "
                        "%(default)s)")
    p.add_argument("--resync", type=float, default=env("REGISTRY_RESYNC", 300.0, float),
                   help="seconds between full re-reads of /chora/, the safety net behind "
                        "the watch (env REGISTRY_RESYNC; default %(default)s)")
    p.add_argument("--watch-ring", type=int, default=env("REGISTRY_WATCH_RING", 10_000, int),
                   help="changes kept for change-stream clients that reconnect with "
                        "Last-Event-ID; further behind, they get a resync event (env "
                        "REGISTRY_WATCH_RING; default %(default)s)")
    p.add_argument("--tokens", type=Path, default=env("REGISTRY_TOKENS", None, Path),
                   metavar="FILE",
                   help="token file (YAML list of {subject, sha256, scopes}); writes then "
                        "need a token whose scope covers the service name (env "
                        "REGISTRY_TOKENS; default: none, the API is open)")
    p.add_argument("--require-read-token", action=argparse.BooleanOptionalAction,
                   default=env_flag("REGISTRY_REQUIRE_READ_TOKEN"),
                   help="reads of data need a token with scope read or admin too; needs "
                        "--tokens (env REGISTRY_REQUIRE_READ_TOKEN=1)")
    p.add_argument("--tls-cert", type=Path, default=env("REGISTRY_TLS_CERT", None, Path),
                   metavar="FILE",
                   help="serve HTTPS with this PEM certificate (chain); needs --tls-key (env "
                        "REGISTRY_TLS_CERT)")
    p.add_argument("--tls-key", type=Path, default=env("REGISTRY_TLS_KEY", None, Path),
                   metavar="FILE",
                   help="the certificate's PEM private key (env REGISTRY_TLS_KEY); both "
                        "files are re-read when they change")
    add_log_flags(p)
    return p


def build_token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.registry token",
        description="Mint a bearer token for the registry API. The token is printed once, "
                    "on stdout, and nowhere else; the file keeps only its SHA-256. Its "
                    "entry is appended to --file (a running registry picks it up within "
                    "seconds), or printed on stderr to add by hand.",
        epilog="scopes: read (reads of data), register:<glob> (register, heartbeat and "
               "deregister instances whose name matches the glob, e.g. "
               "'register:orchestrator*'), admin (everything). Quote globs in the shell.")
    p.add_argument("--subject", required=True,
                   help="who holds the token (a service, a team, a person); named in logs")
    p.add_argument("--scope", action="append", required=True, dest="scopes",
                   help="a scope to grant; repeat for several")
    p.add_argument("--file", type=Path, metavar="FILE",
                   help="append the entry to this token file (created 0600 if absent)")
    return p


def mint(argv: Sequence[str]) -> int:
    """``python -m services.registry token ...``: exit 0, or 2 with one usage line."""
    parser = build_token_parser()
    args = parser.parse_args(argv)
    if not tokens.SUBJECT_RE.fullmatch(args.subject):
        parser.error(f"--subject {args.subject!r}: 1 to 128 of A-Z a-z 0-9 . _ @ : / -")
    try:
        scopes = list(dict.fromkeys(tokens.check_scope(s) for s in args.scopes))
    except ValueError as exc:
        parser.error(f"--scope: {exc}")
    token = tokens.mint()
    line = tokens.entry_line(args.subject, token, scopes)
    if args.file is not None:
        try:
            tokens.append(args.file, line)
        except (ValueError, OSError) as exc:
            parser.error(f"--file: {exc}")
        print(f"appended to {args.file}: {line}", file=sys.stderr)
    else:
        print(f"add this line to the --tokens file:\n{line}", file=sys.stderr)
    print(token)
    return 0


def settings_from(args: argparse.Namespace) -> Settings:
    """Raises ``ValueError`` for values no registry could run with."""
    return Settings(
        endpoints=tuple(parse_endpoints(args.endpoints)),
        host=args.host,
        port=args.port,
        heartbeat_timeout=args.heartbeat_timeout,
        removal_timeout=args.removal_timeout,
        etcd_timeout=args.etcd_timeout,
        etcd_access=etcd_access(args),
        resync=args.resync,
        watch_ring=args.watch_ring,
        tokens=args.tokens,
        require_read_token=args.require_read_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["token"]:
        return mint(argv[1:])
    _, daemon = program.start(build_parser(), argv, settings_from, Daemon)
    signals.on_stop(daemon.stop, "registry")
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload())
    return daemon.run()
