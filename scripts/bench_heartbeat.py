#!/usr/bin/env python3
"""Benchmark the heartbeat daemon against a naive baseline on a local 3-member etcd.

For each size (number of Service capabilities) and each mode, on a fresh key space of an
ephemeral cluster this script starts:

- ``daemon``: ``python -m services.heartbeat`` as a subprocess (one scheduler loop, one
  keep-alive stream per round, batched txns);
- ``naive``: the seed's approach scaled out, also a subprocess of this script: one thread
  per service, each beat a unary ``etcd3`` ``refresh_lease`` (a new gRPC stream per
  refresh) and one put on its lease, via a plain single-endpoint ``etcd3.client``.

It waits until every health key exists (warm-up), then for ``--duration`` seconds counts
lease expiries (DELETE events of health keys, seen by ``etcdctl watch``) and the
process's CPU time (``/proc/PID/stat``, in % of one core), and the beat lag p99 from a
beat's scheduled time to its write being acknowledged, after warm-up: the worst of the
daemon's ``heartbeat_beat_lag_p99_seconds`` (a p99 over the last 60 s) sampled each
minute of the window; the naive worker measures its own beats after a SIGUSR1 mark.

    .venv/bin/python scripts/bench_heartbeat.py                      # 100..10,000, 120 s each
    .venv/bin/python scripts/bench_heartbeat.py --sizes 100,1000 --duration 60
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.core import keys  # noqa: E402
from services.core.kv import MAX_TXN_OPS, Delete, Put  # noqa: E402
from services.core.localcluster import LocalCluster, etcd_binary, free_ports  # noqa: E402
from services.core.store import Store  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def namespace(i: int) -> str:
    return f"bench.s{i:05d}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def wipe(store: Store) -> None:
    kvs, _ = store.get_prefix("/chora/", keys_only=True)
    names = list(kvs)
    for i in range(0, len(names), MAX_TXN_OPS):
        store.txn([], [Delete(k) for k in names[i:i + MAX_TXN_OPS]])


def publish(store: Store, size: int) -> None:
    puts = [Put(keys.capability(namespace(i), keys.TYPE), b"service") for i in range(size)]
    for i in range(0, len(puts), MAX_TXN_OPS):
        store.txn([], puts[i:i + MAX_TXN_OPS])


def health_keys(store: Store) -> int:
    kvs, _ = store.get_prefix(keys.CAPABILITIES, keys_only=True)
    return sum(1 for k in kvs if k.endswith("/" + keys.HEALTH))


class Expiries:
    """DELETE events of health keys, from ``etcdctl watch`` (Go, so the counting costs
    this script little CPU while thousands of puts stream by)."""

    def __init__(self, endpoints: list[str]) -> None:
        self.count = 0
        self.proc = subprocess.Popen(
            [etcd_binary("etcdctl"), f"--endpoints={','.join(endpoints)}", "watch", "--prefix",
             keys.CAPABILITIES],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        deleting = False
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if deleting and line.endswith("/" + keys.HEALTH):
                self.count += 1
            deleting = line == "DELETE"

    def stop(self) -> int:
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(5)
        return self.count


def metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def run_one(cluster: LocalCluster, store: Store, mode: str, size: int, args: argparse.Namespace,
            workdir: Path) -> dict[str, object]:
    wipe(store)
    publish(store, size)
    env = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "CAPABILITIES_DIR")}
    log = open(workdir / f"{mode}-{size}.log", "wb")  # noqa: SIM115 - closed below
    stats = workdir / f"{mode}-{size}.json"
    port = free_ports(1)[0]
    if mode == "daemon":
        cmd = [sys.executable, "-m", "services.heartbeat", "--endpoints",
               ",".join(cluster.endpoints), "--ttl", str(args.ttl), "--interval",
               str(args.interval), "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
               "--log-level", "warning", "--revoke-on-exit"]
    else:
        cmd = [sys.executable, __file__, "--naive-worker", "--endpoint", cluster.endpoints[0],
               "--count", str(size), "--ttl", str(args.ttl), "--interval", str(args.interval),
               "--stats", str(stats)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    warm_limit = max(60.0, 3 * args.interval + size / 200)
    present = 0
    while time.monotonic() - started < warm_limit and proc.poll() is None:
        present = health_keys(store)
        if present >= size:
            break
        time.sleep(1.0)
    warmup = time.monotonic() - started
    expiries = Expiries(cluster.endpoints)
    if mode == "naive":
        proc.send_signal(signal.SIGUSR1)  # lags count from here on
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    # The daemon's lag gauges cover the last 60 s: sample them once per minute of the
    # measured window (and at its end) and keep the worst.
    samples: list[tuple[float, float]] = []
    end = t0 + args.duration
    while True:
        next_sample = min(end, time.monotonic() + 60.0)
        time.sleep(max(0.0, next_sample - time.monotonic()))
        if mode == "daemon" and (time.monotonic() - t0 >= 60.0 or next_sample >= end):
            p99 = metric(port, "heartbeat_beat_lag_p99_seconds")
            peak = metric(port, "heartbeat_beat_lag_max_seconds")
            if p99 is not None and peak is not None:
                samples.append((p99, peak))
        if next_sample >= end:
            break
    cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    at_end = health_keys(store)
    expired = expiries.stop()
    lag_p99: float | None = max((s[0] for s in samples), default=None)
    lag_max: float | None = max((s[1] for s in samples), default=None)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log.close()
    errors = None
    if mode == "naive" and stats.exists():
        data = json.loads(stats.read_text())
        lag_p99, lag_max, errors = data["p99"], data["max"], data["errors"]
    tail = (workdir / f"{mode}-{size}.log").read_text(errors="replace")[-1500:]
    if tail.strip():
        print(f"--- {mode} {size} log tail ---\n{tail}", file=sys.stderr)
    return {
        "mode": mode, "size": size, "warmup_s": round(warmup, 1),
        "warm": f"{present}/{size}", "at_end": at_end, "expiries": expired,
        "lag_p99": lag_p99, "lag_max": lag_max,
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1), "naive_errors": errors,
    }


def table(rows: list[dict[str, object]]) -> str:
    head = ["services", "mode", "warm-up", "keys at warm-up", "keys at end", "expiries",
            "lag p99", "lag max", "CPU % (1 core)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def sec(v: object) -> str:
            return "n/a" if v is None else f"{v:.3f} s"
        lines.append("| " + " | ".join([
            f"{r['size']:,}", str(r["mode"]), f"{r['warmup_s']} s", str(r["warm"]),
            str(r["at_end"]), str(r["expiries"]), sec(r["lag_p99"]), sec(r["lag_max"]),
            str(r["cpu_pct"]),
        ]) + " |")
    return "\n".join(lines)


# -- the naive baseline (a subprocess) ---------------------------------------------------


def naive_worker(args: argparse.Namespace) -> int:
    import etcd3  # the baseline alone talks to etcd3 directly, as the seed did

    host, _, port = args.endpoint.rpartition(":")
    client = etcd3.client(host=host, port=int(port), timeout=5)
    stop = threading.Event()
    lags: list[float] = []
    mark = [0]  # lags before this index belong to the warm-up
    errors = [0]
    start = time.monotonic()
    interval, ttl = args.interval, args.ttl
    threading.stack_size(256 * 1024)

    def beat(i: int) -> None:
        key = keys.capability(namespace(i), keys.HEALTH)
        due = start + i * interval / args.count
        lease_id = 0
        count = 0
        while not stop.wait(max(0.0, due - time.monotonic())):
            try:
                if lease_id:
                    # as the seed did (Lease.refresh): one stream per refresh, read to its end
                    (resp, *_) = list(client.refresh_lease(lease_id))
                    if resp.TTL <= 0:
                        lease_id = 0
                if not lease_id:
                    lease_id = client.lease(ttl).id
                count += 1
                value = json.dumps({"status": "healthy", "namespace": namespace(i),
                                    "heartbeat_count": count})
                client.put(key, value, lease=lease_id)
                lags.append(time.monotonic() - due)
            except Exception:
                errors[0] += 1
            due += interval

    for i in range(args.count):
        threading.Thread(target=beat, args=(i,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: mark.__setitem__(0, len(lags)))
    while not stop.wait(0.5):
        pass
    data = sorted(lags[mark[0]:])
    p99 = data[min(len(data) - 1, int(0.99 * len(data)))] if data else None
    Path(args.stats).write_text(json.dumps({
        "beats": len(data), "errors": errors[0], "p99": p99, "max": data[-1] if data else None,
    }))
    os._exit(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,5000,10000")
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds per run")
    p.add_argument("--ttl", type=int, default=30)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--modes", default="daemon,naive")
    p.add_argument("--naive-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_worker:
        return naive_worker(args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-heartbeat-") as tmp:
        cluster = LocalCluster.ephemeral(Path(tmp) / "etcd").start()
        store = Store(cluster.endpoints, timeout=10)
        try:
            for size in sizes:
                for mode in modes:
                    row = run_one(cluster, store, mode, size, args, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            store.close()
            cluster.destroy()
    print(f"ttl {args.ttl} s, interval {args.interval} s, {args.duration:.0f} s measured per "
          f"run, {os.cpu_count()} CPUs; lag = scheduled time -> write acknowledged")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
