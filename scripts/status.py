#!/usr/bin/env python3
"""The registry at a glance: members, leader, DB sizes, alarms, the last sync, live heartbeats.

    python scripts/status.py [--endpoints h:p,h:p,h:p] [--json]
    python scripts/status.py --cacert .data/pki/ca.crt --cert .data/pki/reader.crt \
        --key .data/pki/reader.key          # the secure stack (make status SECURE=1)

Exit codes: 0 every member healthy with one leader and no alarm raised, 1 degraded (a
member down, no leader, an alarm such as NOSPACE), 2 no member reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.core import admin, keys, topology
from services.core.access import EtcdAccess
from services.core.errors import NoSpace, StoreError
from services.core.options import add_access_flags, etcd_access
from services.core.store import Store, parse_endpoints

EXIT_OK, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2

# The cure of each alarm whose cure is known. NOSPACE refuses every write (the sync's and
# the heartbeat's: health keys expire) until an operator clears it, and nothing else
# shows it: every member still answers and looks healthy.
HOW_TO_CLEAR = {"NOSPACE": NoSpace.HOW_TO_CLEAR}
PROGRAMS = ("gitops-sync", "heartbeat")  # the daemons that elect a leader (core/leadership.py)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", ",".join(topology.DEFAULT_ENDPOINTS)),
        help="etcd members, host:port,... (env ETCD_ENDPOINTS; default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="deadline of each etcd call in seconds (default %(default)s)")
    add_access_flags(p)
    return p


def _member(endpoint: str, timeout: float, access: EtcdAccess | None) -> dict[str, Any]:
    try:
        with Store([endpoint], timeout=timeout, access=access) as one:
            status = admin.member_status(one)
    except (StoreError, OSError, ValueError) as exc:
        return {"endpoint": endpoint, "healthy": False, "error": str(exc)}
    return {"endpoint": endpoint, "healthy": True, **status}


def collect(endpoints: list[str], timeout: float = 2.0,
            access: EtcdAccess | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data; raises ``StoreError`` when no member
    can be reached at all. ``access``: TLS and auth (the reader's identity suffices)."""
    members = [_member(e, timeout, access) for e in endpoints]
    with Store(endpoints, timeout=timeout, access=access) as store:
        try:
            names = {m["id"]: m["name"] for m in admin.members(store)}
        except StoreError:
            if not any(m["healthy"] for m in members):
                raise
            names = {}
        for m in members:
            if m["healthy"]:
                m["name"] = names.get(m["member_id"], "?")
        leaders = {m["leader"] for m in members if m["healthy"] and m["leader"]}
        leader = next(iter(leaders)) if len(leaders) == 1 else None
        try:
            kvs, revision = store.get_prefix(keys.CAPABILITIES, keys_only=True)
            sync = store.get(keys.SYNC_STATUS)
            candidates, _ = store.get_prefix(keys.ELECTION)
            readable = True
        except StoreError:  # members answer, but there is no quorum for a read
            kvs, revision, sync, candidates, readable = {}, 0, None, {}, False
        alarms: list[str] | None = None  # None: unknown (asking needs a quorum)
        if readable:
            try:
                alarms = store.alarms()
            except StoreError:
                alarms = None
    parts = [keys.split(k) for k in kvs]
    capabilities = sorted({p[0] for p in parts if p and p[1] == keys.TYPE})
    health = sorted({p[0] for p in parts if p and p[1] == keys.HEALTH})
    last_sync: dict[str, Any] | None = None
    if sync is not None:
        try:
            last_sync = json.loads(sync.value)
        except ValueError:
            last_sync = {"unreadable": sync.value.decode(errors="replace")}
        last_sync["revision"] = sync.mod_revision
    daemons: dict[str, list[str]] = {program: [] for program in PROGRAMS}
    for kv in sorted(candidates.values(), key=lambda kv: kv.create_revision):
        program = kv.key[len(keys.ELECTION):].split("/", 1)[0]
        daemons.setdefault(program, []).append(kv.value.decode(errors="replace"))
    return {
        "endpoints": endpoints,
        "daemons": daemons,  # program -> its instances, the leader first
        "members": members,
        "leader": names.get(leader) if leader else None,
        "quorum": readable,
        "alarms": alarms,
        "how_to_clear": {a: HOW_TO_CLEAR[a] for a in alarms or [] if a in HOW_TO_CLEAR},
        "revision": revision,
        "capabilities": len(capabilities),
        "live_health_keys": len(health),
        "health_keys": health,
        "last_sync": last_sync,
    }


def _members_ok(report: dict[str, Any]) -> bool:
    return (
        all(m["healthy"] for m in report["members"])
        and report["leader"] is not None
        and report["quorum"]
    )


def healthy(report: dict[str, Any]) -> bool:
    """OK needs every member, one leader, a quorum, and no alarm known to be raised: an
    alarm (NOSPACE) refuses writes while every member still looks healthy."""
    return _members_ok(report) and report["alarms"] == []


def verdict(report: dict[str, Any]) -> str:
    """OK, DEGRADED, ALARM NOSPACE or both: an alarm gets its own word because
    nothing clears it by itself, an operator must (the cure is printed above)."""
    if healthy(report):
        return "OK"
    words = [] if _members_ok(report) and report["alarms"] else ["DEGRADED"]
    if report["alarms"]:
        words.append("ALARM " + ", ".join(report["alarms"]))
    return ", ".join(words)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(report: dict[str, Any]) -> str:
    rows = [("MEMBER", "ENDPOINT", "HEALTH", "ROLE", "DB SIZE", "RAFT TERM", "REVISION")]
    for m in report["members"]:
        if m["healthy"]:
            rows.append((m["name"], m["endpoint"], "healthy",
                         "leader" if m["is_leader"] else "follower", _size(m["db_size"]),
                         str(m["raft_term"]), str(m["revision"])))
        else:
            rows.append(("?", m["endpoint"], "DOWN", "-", "-", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.append("")
    lines.append(f"leader:        {report['leader'] or 'NONE'}"
                 + ("" if report["quorum"] else "  (no quorum: reads fail)"))
    alarms = report["alarms"]
    if alarms is None:
        unknown = "no quorum" if not report["quorum"] else "the alarm request failed"
        lines.append(f"alarms:        unknown ({unknown})")
    else:
        lines.append(f"alarms:        {', '.join(alarms) or 'none'}")
    for name, cure in report["how_to_clear"].items():
        lines.append(f"  {name}: {cure}")
    lines.append(f"capabilities:  {report['capabilities']}")
    lines.append(f"live health:   {report['live_health_keys']}"
                 + (f"  ({', '.join(report['health_keys'])})" if report["health_keys"] else ""))
    for program, instances in report["daemons"].items():
        if not instances:
            lines.append(f"{program + ':':<15}NO LEADER (no instance running)")
            continue
        standby = f"; standby {', '.join(instances[1:])}" if instances[1:] else "; no standby"
        lines.append(f"{program + ':':<15}leader {instances[0]}{standby}")
    sync = report["last_sync"]
    if sync is None:
        lines.append("last sync:     never (no /chora/sync/status key)")
    else:
        commit = sync.get("commit") or "-"
        dirty = {True: " (dirty tree)", False: "", None: ""}.get(sync.get("dirty"), "")
        errors = sync.get("errors") or []
        lines.append(f"last sync:     commit {commit[:12]}{dirty}, "
                     f"{sync.get('capabilities', '?')} capabilities, {len(errors)} error(s), "
                     f"at revision {sync['revision']}")
        for err in errors:
            where = f" [{err['namespace']}]" if err.get("namespace") else ""
            lines.append(f"  error: {err.get('file')}{where}: {err.get('reason')}")
    lines.append("")
    lines.append("status:        " + verdict(report))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        endpoints = parse_endpoints(args.endpoints)
        report = collect(endpoints, args.timeout, etcd_access(args))
    except (StoreError, OSError, ValueError) as exc:
        if args.json:
            print(json.dumps({"endpoints": args.endpoints, "error": str(exc)}))
        else:
            print(f"cannot reach etcd at {args.endpoints}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_OK if healthy(report) else EXIT_DEGRADED


if __name__ == "__main__":
    sys.exit(main())
