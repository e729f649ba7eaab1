"""Benchmark the sync against a naive baseline, on one local 3-member cluster.

    .venv/bin/python scripts/bench_sync.py [--sizes 1000,10000] [--edits 200]

The baseline does what the seed's reference script did: parse every file with
``yaml.safe_load`` and put each key with its own unary call, no batching, no comparison
with what etcd holds, and discover edits by polling the directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import json  # noqa: E402

import etcd3  # noqa: E402 - the baseline talks to etcd the naive way
import yaml  # noqa: E402
from etcd3 import etcdrpc  # noqa: E402

from services.core import keys, logs  # noqa: E402
from services.core.localcluster import LocalCluster  # noqa: E402
from services.core.store import Store  # noqa: E402
from services.gitops_sync.loop import Liveness, run  # noqa: E402
from services.gitops_sync.reconciling import Reconciler  # noqa: E402

MANIFEST = """\
apiVersion: chora.dev/v1
kind: Capability
metadata:
  dc_identifier: chora.bench.c{i:05}
  dc_title: Benchmark capability {i}
  dc_description: >
    A generated capability used to measure how fast the registry follows git.
  dc_type: {type}
  dc_hasVersion: '{version}'
  dc_creator: bench
  dc_date: '2025-11-15'
  dc_subject: [bench, generated]
chora_service:
  interfaces: [cli, rest]
  health: {{endpoint: /health, interval: 10, timeout: 5, heartbeat_ttl: 30}}
dc_relation:
  requires:
    - capability: chora.bench.c{dep:05}
      version: ^1.0.0
      relationship: runtime
    - chora.bench.c00000
"""


def write_corpus(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = MANIFEST.format(
            i=i, type="Service" if i % 3 else "Pattern", version="1.0.0", dep=max(0, i - 1)
        )
        (root / f"c{i:05}.yaml").write_text(text)


def wipe(store: Store) -> None:
    store._kv.DeleteRange(etcdrpc.DeleteRangeRequest(key=b"\0", range_end=b"\0"), 30)


# -- the naive baseline -------------------------------------------------------------------


def naive_sync(root: Path, client: etcd3.Etcd3Client) -> None:
    for path in sorted(root.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        md = doc["metadata"]
        ns = md["dc_identifier"]
        deps = []
        for kind, items in (doc.get("dc_relation") or {}).items():
            for item in items:
                if isinstance(item, str):
                    deps.append({"capability": item, "version": "*", "relationship": kind})
                else:
                    deps.append(
                        {
                            "capability": item["capability"],
                            "version": item.get("version", "*"),
                            "relationship": item.get("relationship", kind),
                        }
                    )
        client.put(keys.capability(ns, "metadata"), json.dumps(md, default=str))
        client.put(keys.capability(ns, "type"), md["dc_type"].lower())
        client.put(keys.capability(ns, "version"), str(md.get("dc_hasVersion")))
        client.put(keys.capability(ns, "dependencies"), json.dumps(deps))


# -- measurements -------------------------------------------------------------------------


def initial_sync(cluster: LocalCluster, corpus: Path, store: Store) -> dict[str, float]:
    wipe(store)
    start = time.perf_counter()
    rec = Reconciler(corpus, store)
    outcome = rec.full()
    ours = time.perf_counter() - start
    assert not outcome.errors and outcome.applied > 0
    rec.close()
    wipe(store)
    host, port = cluster.endpoints[0].split(":")
    client = etcd3.client(host=host, port=int(port), timeout=10)
    start = time.perf_counter()
    naive_sync(corpus, client)
    naive = time.perf_counter() - start
    client.close()
    return {"ours": ours, "naive": naive}


def unchanged_resync(cluster: LocalCluster, corpus: Path, store: Store) -> dict[str, int]:
    wipe(store)
    rec = Reconciler(corpus, store)
    rec.full()
    rec.close()
    before = store.revision()
    rec = Reconciler(corpus, store)  # a restarted daemon: nothing cached in memory
    rec.full()
    rec.close()
    ours = store.revision() - before
    host, port = cluster.endpoints[0].split(":")
    client = etcd3.client(host=host, port=int(port), timeout=10)
    before = store.revision()
    naive_sync(corpus, client)
    client.close()
    return {"ours": ours, "naive": store.revision() - before}


def propagation(corpus: Path, store: Store, edits: int) -> list[float]:
    """File saved → the new version seen by an etcd watch, one edit at a time."""
    wipe(store)
    rec = Reconciler(corpus, store)
    stop = threading.Event()
    health = Liveness()
    loop = threading.Thread(
        target=run, args=(rec, stop), kwargs={"interval": 3600, "liveness": health}, daemon=True
    )
    loop.start()
    deadline = time.monotonic() + 120
    while not health.last_success and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: dict[str, float] = {}
    cond = threading.Condition()
    watch = store.watch_prefix(keys.CAPABILITIES, store.revision() + 1)

    def watching() -> None:
        try:
            for events in watch:
                now = time.perf_counter()
                with cond:
                    for ev in events:
                        if ev.kv.key.endswith("/version"):
                            seen[f"{ev.kv.key}={ev.kv.value.decode()}"] = now
                    cond.notify_all()
        except Exception:
            return

    threading.Thread(target=watching, daemon=True).start()
    files = sorted(corpus.glob("*.yaml"))
    latencies = []
    for n in range(edits):
        path = files[(n * 7919) % len(files)]
        i = int(path.stem[1:])
        version = f"2.{n}.0"
        token = f"{keys.capability(f'chora.bench.c{i:05}', 'version')}={version}"
        text = MANIFEST.format(
            i=i, type="Service" if i % 3 else "Pattern", version=version, dep=max(0, i - 1)
        )
        start = time.perf_counter()
        path.write_text(text)
        with cond:
            if not cond.wait_for(lambda t=token: t in seen, timeout=10):
                raise RuntimeError(f"edit {n} never arrived")
        latencies.append(seen[token] - start)
    watch.cancel()
    stop.set()
    loop.join(10)
    rec.close()
    return latencies


def naive_propagation(
    corpus: Path, store: Store, cluster: LocalCluster, edits: int, poll: float
) -> list[float]:
    """The baseline's loop: sleep ``poll`` seconds, re-put everything."""
    host, port = cluster.endpoints[0].split(":")
    client = etcd3.client(host=host, port=int(port), timeout=10)
    files = sorted(corpus.glob("*.yaml"))
    latencies = []
    for n in range(edits):
        path = files[(n * 7919) % len(files)]
        i = int(path.stem[1:])
        start = time.perf_counter()
        path.write_text(MANIFEST.format(i=i, type="Pattern", version=f"3.{n}.0", dep=0))
        # The edit lands at a uniformly random point of the poll cycle.
        time.sleep(poll * ((n * 0.618) % 1.0))
        naive_sync(corpus, client)
        latencies.append(time.perf_counter() - start)
    client.close()
    return latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument(
        "--naive-edits",
        type=int,
        default=10,
        help="edits for the polling baseline (each costs a whole re-put)",
    )
    ap.add_argument(
        "--naive-poll",
        type=float,
        default=1.0,
        help="the baseline's poll interval; the seed's reference used 60 s",
    )
    args = ap.parse_args()
    logs.configure("warning", json=False)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster.ephemeral(Path(tmp) / "etcd").start()
        store = Store(cluster.endpoints, timeout=10)
        try:
            print(f"{'measure':44} {'ours':>12} {'naive':>12}")
            print("-" * 70)
            for n in sizes:
                corpus = Path(tmp) / f"corpus-{n}"
                write_corpus(corpus, n)
                t = initial_sync(cluster, corpus, store)
                print(
                    f"{f'initial sync, {n} manifests (s)':44} {t['ours']:12.2f} {t['naive']:12.2f}"
                )
                print(
                    f"{f'initial sync, {n} manifests (manifests/s)':44} "
                    f"{n / t['ours']:12.0f} {n / t['naive']:12.0f}"
                )
            corpus = Path(tmp) / f"corpus-{sizes[0]}"
            r = unchanged_resync(cluster, corpus, store)
            print(
                f"{f'unchanged re-sync, {sizes[0]} (revisions)':44} "
                f"{r['ours']:12d} {r['naive']:12d}"
            )
            lat = propagation(corpus, store, args.edits)
            naive = naive_propagation(corpus, store, cluster, args.naive_edits, args.naive_poll)
            for p in (50, 95, 99):
                print(
                    f"{f'propagation p{p}, file save → watch (ms)':44} "
                    f"{pct(lat, p) * 1000:12.0f} {pct(naive, p) * 1000:12.0f}"
                )
            print(
                f"\nours: {args.edits} edits; naive: {args.naive_edits} edits polling every "
                f"{args.naive_poll:g} s (the seed's reference polls every 60 s)"
            )
        finally:
            store.close()
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
