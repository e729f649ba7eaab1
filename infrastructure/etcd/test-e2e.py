#!/usr/bin/env python3
"""End-to-end test of a running registry stack (compose or ``make up``).

    python infrastructure/etcd/test-e2e.py [--endpoints 127.0.0.1:2379,127.0.0.1:2389,...]
        [--cacert ca.crt --cert reader.crt --key reader.key]   # a secure stack

Four checks, as the infrastructure guide describes them:
  1. cluster health: every member answers and has quorum, exactly one leader;
  2. gitops sync: the capability's metadata (JSON with dc_identifier and dc_title), type,
     version and dependencies (JSON list) are in etcd;
  3. heartbeat: its health record's heartbeat_count increases across --heartbeat-wait s;
  4. persistence: the health key is still there after --persist-wait s (beyond one TTL).

Exit codes: 0 all passed, 1 a check failed, 2 setup error (etcd unreachable, bad flags).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.core import admin, keys, topology
from services.core.access import EtcdAccess
from services.core.errors import StoreError
from services.core.options import add_access_flags, etcd_access
from services.core.store import Store, parse_endpoints

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2
RULE = "=" * 64
DEFAULT_NAMESPACE = "chora.awareness.sap_self_evaluation"


class CheckFailed(Exception):
    """A check's assertion, with the reason to print."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 pass, 1 a check failed, 2 setup error")
    p.add_argument(
        "--endpoints",
        default=os.environ.get("ETCD_ENDPOINTS", ",".join(topology.DEFAULT_ENDPOINTS)),
        help="etcd members, host:port,... (env ETCD_ENDPOINTS; default %(default)s)",
    )
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help="a Service capability the stack syncs and heartbeats "
                        "(default %(default)s)")
    p.add_argument("--heartbeat-wait", type=float, default=12.0,
                   help="seconds between the two heartbeat_count reads (default %(default)s)")
    p.add_argument("--persist-wait", type=float, default=35.0,
                   help="seconds the health key must survive (default %(default)s: "
                        "beyond one 30 s TTL)")
    p.add_argument("--sync-wait", type=float, default=10.0,
                   help="seconds to wait for the sync's keys and the first heartbeat to "
                        "appear (default %(default)s)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="deadline of each etcd call in seconds (default %(default)s)")
    add_access_flags(p)  # a secure stack: the reader's identity is enough for every check
    return p


def _poll(read: Callable[[], object], seconds: float, interval: float = 0.25) -> object:
    """``read()`` until it returns something truthy or ``seconds`` pass; the last result."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def check_cluster_health(store: Store, endpoints: list[str], timeout: float,
                         access: EtcdAccess | None = None) -> str:
    members = admin.members(store)
    if len(members) != len(endpoints):
        raise CheckFailed(f"cluster lists {len(members)} members, expected {len(endpoints)}")
    unhealthy, leaders, leader_ids = [], [], set()
    for endpoint in endpoints:
        try:
            with Store([endpoint], timeout=timeout, access=access) as one:
                status = admin.member_status(one)
                one.revision()  # a linearizable read through this member: it has quorum
        except StoreError as exc:
            unhealthy.append(f"{endpoint} ({exc})")
            continue
        leader_ids.add(status["leader"])
        if status["is_leader"]:
            leaders.append(endpoint)
    if unhealthy:
        raise CheckFailed("unhealthy: " + "; ".join(unhealthy))
    if len(leaders) != 1 or len(leader_ids) != 1:
        raise CheckFailed(f"expected exactly one leader, found {leaders or 'none'}")
    names = {m["id"]: m["name"] for m in members}
    return (f"{len(endpoints)}/{len(endpoints)} members healthy, "
            f"leader {names.get(next(iter(leader_ids)), '?')} ({leaders[0]})")


def check_sync_data(store: Store, namespace: str, wait: float) -> str:
    def read() -> dict[str, bytes] | None:
        values = {}
        for name in (keys.METADATA, keys.TYPE, keys.VERSION, keys.DEPENDENCIES):
            kv = store.get(keys.capability(namespace, name))
            if kv is None:
                return None
            values[name] = kv.value
        return values

    values = _poll(read, wait)
    if not values:
        missing = [n for n in (keys.METADATA, keys.TYPE, keys.VERSION, keys.DEPENDENCIES)
                   if store.get(keys.capability(namespace, n)) is None]
        raise CheckFailed(f"missing keys under {keys.CAPABILITIES}{namespace}/: {missing}")
    assert isinstance(values, dict)
    try:
        metadata = json.loads(values[keys.METADATA])
        dependencies = json.loads(values[keys.DEPENDENCIES])
    except ValueError as exc:
        raise CheckFailed(f"metadata or dependencies is not JSON: {exc}") from None
    for field in ("dc_identifier", "dc_title"):
        if not isinstance(metadata, dict) or not metadata.get(field):
            raise CheckFailed(f"metadata has no {field}")
    if metadata["dc_identifier"] != namespace:
        raise CheckFailed(f"metadata.dc_identifier is {metadata['dc_identifier']!r}")
    kind = values[keys.TYPE].decode()
    if kind not in ("service", "pattern"):
        raise CheckFailed(f"type is {kind!r}, expected service or pattern")
    version = values[keys.VERSION].decode()
    if not version:
        raise CheckFailed("version is empty")
    if not isinstance(dependencies, list):
        raise CheckFailed(f"dependencies is a {type(dependencies).__name__}, not a list")
    return (f"{metadata['dc_title']!r}: type={kind}, version={version}, "
            f"{len(dependencies)} dependencies")


def _health(store: Store, namespace: str) -> dict | None:
    kv = store.get(keys.capability(namespace, keys.HEALTH))
    if kv is None:
        return None
    record = json.loads(kv.value)
    record["_lease"] = kv.lease
    return record


def check_heartbeat(store: Store, namespace: str, wait: float, first_wait: float) -> str:
    first = _poll(lambda: _health(store, namespace), first_wait)
    if not first:
        raise CheckFailed(f"no health key for {namespace}: is the heartbeat running?")
    assert isinstance(first, dict)
    for field in ("status", "timestamp", "heartbeat_count"):
        if field not in first:
            raise CheckFailed(f"health record has no {field}: {first}")
    if not first["_lease"]:
        raise CheckFailed("health key is not attached to a lease")
    if not str(first["timestamp"]).endswith("Z"):
        raise CheckFailed(f"timestamp {first['timestamp']!r} is not ISO-8601 UTC ending in Z")
    print(f"  heartbeat_count={first['heartbeat_count']}, waiting {wait:g}s ...", flush=True)
    time.sleep(wait)
    second = _health(store, namespace)
    if second is None:
        raise CheckFailed(f"health key vanished within {wait:g}s")
    if not second["heartbeat_count"] > first["heartbeat_count"]:
        raise CheckFailed(
            f"heartbeat_count did not increase: {first['heartbeat_count']} -> "
            f"{second['heartbeat_count']}"
        )
    return (f"heartbeat_count {first['heartbeat_count']} -> {second['heartbeat_count']}, "
            f"status {second['status']}")


def check_persistence(store: Store, namespace: str, wait: float) -> str:
    print(f"  waiting {wait:g}s ...", flush=True)
    time.sleep(wait)
    record = _health(store, namespace)
    if record is None:
        raise CheckFailed(f"health key gone after {wait:g}s: the lease was not kept alive")
    ttl = store.lease_ttl(record["_lease"])
    return f"health key present after {wait:g}s (lease TTL {ttl}s left)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(RULE)
    print("chora registry: end-to-end test")
    print(f"Endpoints: {args.endpoints}")
    print(f"Capability: {args.namespace}")
    print(RULE)
    try:
        endpoints = parse_endpoints(args.endpoints)
        access = etcd_access(args)
        store = Store(endpoints, timeout=args.timeout, access=access)
        store.revision()
    except (ValueError, OSError, StoreError) as exc:
        print(f"[ERROR] cannot connect to etcd at {args.endpoints}: {exc}")
        print("Is the cluster running? (docker compose up -d, or make up)")
        return EXIT_SETUP

    checks: list[tuple[str, Callable[[], str]]] = [
        ("etcd cluster health",
         lambda: check_cluster_health(store, endpoints, args.timeout, access)),
        ("GitOps sync data", lambda: check_sync_data(store, args.namespace, args.sync_wait)),
        ("Heartbeat lease renewal",
         lambda: check_heartbeat(store, args.namespace, args.heartbeat_wait, args.sync_wait)),
        ("Health key persistence beyond TTL",
         lambda: check_persistence(store, args.namespace, args.persist_wait)),
    ]
    passed = 0
    try:
        for number, (title, check) in enumerate(checks, 1):
            print(f"\n[TEST {number}] {title}")
            try:
                detail = check()
            except CheckFailed as exc:
                print(f"  [FAIL] {exc}")
            except (StoreError, ValueError, KeyError, TypeError) as exc:
                print(f"  [FAIL] {type(exc).__name__}: {exc}")
            else:
                passed += 1
                print(f"  [PASS] {detail}")
    finally:
        store.close()

    total = len(checks)
    print()
    print(RULE)
    print(f"Tests passed: {passed}/{total}")
    print(f"Pass rate: {100.0 * passed / total:.1f}%")
    if passed == total:
        print("[SUCCESS] All tests passed!")
        return EXIT_PASS
    print(f"[FAILURE] {total - passed} test(s) failed")
    return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
