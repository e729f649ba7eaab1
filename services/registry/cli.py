"""``python -m services.registry``: flags and environment → typed settings → the
registry. The only place that reads the command line or the environment; the flags
every program shares (etcd, logs) come from ``services.core.options``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from services.core import program, signals
from services.core.options import add_etcd_flags, add_log_flags, env
from services.core.store import parse_endpoints
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
X-Registry-Index, the etcd revision it reflects):
  POST   /v1/services                          201 | 413 | 422 | 503
  PUT    /v1/services/{name}/{id}/heartbeat    204 | 404 | 422 | 503
  DELETE /v1/services/{name}/{id}              204 | 422 | 503
  GET    /v1/services/{name}                   200 record or list | 404 | 422
  GET    /v1/services?status=&tag=&dependency= 200 list
  GET    /v1/capabilities?type=&dependency=    200 list
  GET    /v1/capabilities/{namespace}          200 | 404
  GET    /v1/watch                             Server-Sent Events; Last-Event-ID resumes
  GET    /v1/health, /metrics, /openapi.json, /docs
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
    add_log_flags(p)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Raises ``ValueError`` for values no registry could run with."""
    return Settings(
        endpoints=tuple(parse_endpoints(args.endpoints)),
        host=args.host,
        port=args.port,
        heartbeat_timeout=args.heartbeat_timeout,
        removal_timeout=args.removal_timeout,
        etcd_timeout=args.etcd_timeout,
        resync=args.resync,
        watch_ring=args.watch_ring,
    )


def main(argv: Sequence[str] | None = None) -> int:
    _, daemon = program.start(build_parser(), argv, settings_from, Daemon)
    signals.on_stop(daemon.stop, "registry")
    return daemon.run()
