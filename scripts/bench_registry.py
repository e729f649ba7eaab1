#!/usr/bin/env python3
"""Benchmark the registry service against a naive baseline, on one local 3-member etcd.

    .venv/bin/python scripts/bench_registry.py             # the full run (~10 minutes)
    .venv/bin/python scripts/bench_registry.py --quick     # a smoke run (~2 minutes)

Both servers run in turn as subprocesses on 127.0.0.1, against the same ephemeral
cluster, with the same 1,000 instances (``--names`` services x ``--instances`` / names
each), the same heartbeat load and the same load generator:

- ``ours``: ``python -m services.registry`` (reads from memory fed by one watch, one
  lease per instance, a heartbeat is one lease keep-alive);
- ``naive``: the seed's Phase 6 ``EtcdStorage`` behind the seed's routes, written into
  this script (``--naive-server``): plain Starlette on uvicorn (uvloop + httptools, as
  ours), the project's ``Store``; every GET is one etcd range, a register grants a lease
  and puts the record, a heartbeat gets the record, grants a NEW lease and puts it again
  (the seed's ``RegistryCore.heartbeat``). Its etcd calls run in Starlette's thread pool
  (the seed's called the blocking client on the event loop, which is slower still).

Per server, in this order:

1. register the instances (``--write-concurrency`` at a time): register latency;
2. start beating every instance every ``--beat-interval`` s (spread evenly, open loop)
   and keep beating to the end; for ``--steady`` s measure heartbeat latency, the etcd
   revisions consumed (a linearizable read of the revision before and after) and false
   ``unhealthy`` (``status_changed`` events on a ``/v1/watch`` subscriber open from the
   start, and ``GET /v1/services?status=unhealthy``);
3. reads, ``GET /v1/services/{name}`` of one name: open loop at ``--rate`` req/s for
   ``--open`` s (``hey -c W -q rate/W``), then closed loop at saturation for
   ``--saturation`` s (``wrk -t1 -c C`` when installed, else ``hey -c C``);
4. register → seen on ``/v1/watch``: ``--watch-samples`` registrations one at a time.

Client-side latencies come from this script (writes: one keep-alive ``http.client``
connection per thread) or from the load generator (reads); the server's CPU is read
from ``/proc``. Needs ``hey`` (Debian: ``apt-get install -y hey``; ``make bench``
installs it when it can). Not a pass/fail test: the table says which goals were met.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core import keys  # noqa: E402
from services.core.kv import Delete, Put  # noqa: E402
from services.core.localcluster import LocalCluster, etcd_binary, free_ports  # noqa: E402
from services.core.store import Store  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEARTBEAT_TIMEOUT, REMOVAL_TIMEOUT = 30, 60  # both servers: make up's and compose's


# -- the naive baseline: the seed's Phase 6 EtcdStorage behind the seed's routes --------


def naive_app(endpoints: list[str]) -> Any:
    """The seed's registry on etcd, as its guide wrote it: no cache, no watch. Each GET
    is a range of ``/chora/services/{name}/``; each heartbeat reads the record, grants a
    new lease and puts the record on it (the old lease is left to expire)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    store = Store(endpoints, timeout=10)

    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    def put(record: dict[str, Any]) -> None:  # EtcdStorage.put: a lease, then the put
        lease = store.grant(REMOVAL_TIMEOUT)
        key = keys.service(record["name"], record["id"])
        store.txn([], [Put(key, json.dumps(record).encode(), lease)])

    def listing(prefix: str) -> list[dict[str, Any]]:  # EtcdStorage.list
        kvs, _ = store.get_prefix(prefix)
        return [json.loads(kv.value) for kv in kvs.values()]

    async def register(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return JSONResponse({"detail": "name is required"}, 422)
        meta = body.get("metadata") or {}
        stamp = now()
        record = {
            "name": body["name"], "id": f"{body['name']}-{secrets.token_hex(4)}",
            "version": body.get("version", ""), "interfaces": body.get("interfaces", {}),
            "metadata": {"description": meta.get("description"),
                         "dependencies": meta.get("dependencies", []),
                         "tags": meta.get("tags", []),
                         "environment": meta.get("environment")},
            "status": "up", "last_heartbeat": stamp, "registered_at": stamp,
        }
        await run_in_threadpool(put, record)
        return JSONResponse({k: record[k] for k in ("id", "name", "version", "status",
                                                    "registered_at")}
                            | {"heartbeat_interval": 10, "heartbeat_timeout": 30}, 201)

    async def heartbeat(request: Request) -> Response:  # RegistryCore.heartbeat
        p = request.path_params
        kv = await run_in_threadpool(store.get, keys.service(p["name"], p["id"]))
        if kv is None:
            return JSONResponse({"detail": f"Service {p['name']}/{p['id']} not found"}, 404)
        record = json.loads(kv.value)
        record["last_heartbeat"], record["status"] = now(), "up"
        await run_in_threadpool(put, record)
        return Response(status_code=204)

    async def deregister(request: Request) -> Response:
        p = request.path_params
        await run_in_threadpool(store.txn, [], [Delete(keys.service(p["name"], p["id"]))])
        return Response(status_code=204)

    async def get_service(request: Request) -> Response:
        name = request.path_params["name"]
        found = await run_in_threadpool(listing, f"{keys.SERVICES}{name}/")
        if not found:
            return JSONResponse({"detail": f"Service '{name}' not found"}, 404)
        return JSONResponse(found[0] if len(found) == 1 else found)

    async def list_services(request: Request) -> Response:
        found = await run_in_threadpool(listing, keys.SERVICES)
        status = request.query_params.get("status")
        return JSONResponse([r for r in found if not status or r.get("status") == status])

    async def health(_: Request) -> Response:
        found = await run_in_threadpool(listing, keys.SERVICES)
        return JSONResponse({"status": "healthy", "version": "1.0.0",
                             "services_registered": len(found)})

    return Starlette(routes=[
        Route("/v1/services", register, methods=["POST"]),
        Route("/v1/services", list_services, methods=["GET"]),
        Route("/v1/services/{name}/{id}/heartbeat", heartbeat, methods=["PUT"]),
        Route("/v1/services/{name}/{id}", deregister, methods=["DELETE"]),
        Route("/v1/services/{name}", get_service, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
    ])


def serve_naive(port: int, endpoints: str) -> int:
    import uvicorn

    uvicorn.run(naive_app(endpoints.split(",")), host=HOST, port=port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False)
    return 0


# -- small tools ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Http:
    """One keep-alive connection per thread."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port, self.timeout = port, timeout
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None
                ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(
                    HOST, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def registration(name: str, i: int) -> bytes:
    return json.dumps({
        "name": name, "version": "1.0.0",
        "interfaces": {"REST": f"http://10.0.{i // 250}.{i % 250}:9000", "CLI": name},
        "metadata": {"description": f"benchmark instance {i}", "dependencies": ["manifest"],
                     "tags": ["bench", f"shard-{i % 4}"], "environment": "bench"},
    }).encode()


class Events:
    """A ``/v1/watch`` subscriber in a thread: when each instance id was first seen
    registered, and every status change to ``unhealthy``."""

    def __init__(self, port: int) -> None:
        self.registered: dict[str, float] = {}
        self.unhealthy: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.conn = http.client.HTTPConnection(HOST, port, timeout=3600)
        self.conn.request("GET", "/v1/watch", headers={"Accept": "text/event-stream"})
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET /v1/watch answered {resp.status}")
        self.resp = resp
        self.thread = threading.Thread(target=self._read, name="watch", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        kind, data = "", ""
        # Any exception ends the reader: close() pulls the socket from under it.
        with contextlib.suppress(Exception):
            while True:
                line = self.resp.readline()
                if not line:
                    return
                text = line.decode().rstrip("\r\n")
                if text.startswith("event:"):
                    kind = text[6:].strip()
                elif text.startswith("data:"):
                    data += text[5:].strip()
                elif text == "":
                    if kind and data:
                        self._dispatch(kind, json.loads(data), time.perf_counter())
                    kind, data = "", ""

    def _dispatch(self, kind: str, payload: dict[str, Any], seen: float) -> None:
        with self.cond:
            if kind == "registered":
                self.registered.setdefault(str(payload.get("id")), seen)
            elif kind == "status_changed" and payload.get("status") == "unhealthy":
                self.unhealthy.append((seen, str(payload.get("id"))))
            self.cond.notify_all()

    def wait_registered(self, instance_id: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: instance_id in self.registered, timeout)
            return self.registered.get(instance_id)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.conn.sock is not None:
                self.conn.sock.shutdown(2)
        self.conn.close()
        self.thread.join(5)


@dataclass
class Beat:
    scheduled: float
    latency: float
    lag: float  # scheduled -> answered
    status: int


@dataclass
class Beater:
    """Every instance beats every ``interval`` s, offsets spread evenly; each beat is
    sent at its time by a pool of threads (open loop: a slow answer does not delay the
    next instance's beat, only that thread's)."""

    http: Http
    instances: list[tuple[str, str]]
    interval: float
    workers: int = 16
    beats: list[Beat] = field(default_factory=list)
    errors: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="beat")
        self.thread = threading.Thread(target=self._schedule, name="beater", daemon=True)
        self.thread.start()

    def _schedule(self) -> None:
        n, start = len(self.instances), time.perf_counter()
        k = 0
        while not self.stopping.is_set():
            due = start + k * self.interval / n
            wait = due - time.perf_counter()
            if wait > 0 and self.stopping.wait(wait):
                return
            name, instance_id = self.instances[k % n]
            self.pool.submit(self._beat, due, name, instance_id)
            k += 1

    def _beat(self, due: float, name: str, instance_id: str) -> None:
        sent = time.perf_counter()
        try:
            status, _ = self.http.request("PUT", f"/v1/services/{name}/{instance_id}/heartbeat")
        except (OSError, http.client.HTTPException):
            self.errors += 1
            return
        done = time.perf_counter()
        self.beats.append(Beat(due, done - sent, done - due, status))

    def window(self, since: float, until: float) -> list[Beat]:
        return [b for b in self.beats if since <= b.scheduled < until]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.pool.shutdown(wait=True, cancel_futures=True)


# -- the load generators -------------------------------------------------------------------

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class Load:
    tool: str
    rate: float  # answered requests per second
    p50: float  # seconds
    p99: float
    requests: int
    non_2xx: int
    errors: int
    generator_cpu: float  # % of one core
    server_cpu: float
    etcd_cpu: float


def run_hey(url: str, seconds: float, workers: int, rate_per_worker: float | None,
            timeout: float, headers: dict[str, str] | None = None
            ) -> tuple[str, dict[str, Any]]:
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-t", "10",
           "-disable-compression"]
    for name, value in (headers or {}).items():  # hey takes the Host header as a flag
        cmd += ["-host", value] if name.lower() == "host" else ["-H", f"{name}: {value}"]
    if rate_per_worker:
        cmd += ["-q", f"{rate_per_worker:g}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=timeout,
                         check=True).stdout
    found: dict[str, Any] = {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    for p in ("50", "99"):
        m = re.search(rf"\s{p}%+ in ([\d.]+) secs", out)
        found[f"p{p}"] = float(m[1]) if m else float("nan")
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    found["requests"] = sum(codes.values())
    found["non_2xx"] = sum(n for c, n in codes.items() if not 200 <= c < 300)
    errors = re.search(r"Error distribution:(.*)", out, re.S)
    found["errors"] = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors[1])) if errors else 0
    return out, found


def run_wrk(url: str, seconds: float, connections: int, timeout: float,
            headers: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
           "--timeout", "10s"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         check=True).stdout
    found: dict[str, Any] = {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    for p in ("50", "99"):
        m = re.search(rf"\s{p}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\b", out)
        found[f"p{p}"] = float(m[1]) * UNITS[m[2]] if m else float("nan")
    m = re.search(r"(\d+) requests in", out)
    found["requests"] = int(m[1]) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found["non_2xx"] = int(m[1]) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    found["errors"] = sum(map(int, m.groups())) if m else 0
    return out, found


def measure_load(run: Callable[[], tuple[str, dict[str, Any]]], tool: str, server: int,
                 members: list[int], log: Path) -> Load:
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = cpu_seconds(server)
    etcd0 = sum(cpu_seconds(p) for p in members)
    t0 = time.perf_counter()
    out, found = run()
    wall = time.perf_counter() - t0
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen = (after_children.ru_utime + after_children.ru_stime
           - before_children.ru_utime - before_children.ru_stime)
    with log.open("a") as f:
        f.write(out + "\n")
    return Load(tool, found["rate"], found["p50"], found["p99"], found["requests"],
                found["non_2xx"], found["errors"], 100 * gen / wall,
                100 * (cpu_seconds(server) - cpu0) / wall,
                100 * (sum(cpu_seconds(p) for p in members) - etcd0) / wall)


# -- one server's run ----------------------------------------------------------------------


@dataclass
class Result:
    register: list[float] = field(default_factory=list)
    register_alone: list[float] = field(default_factory=list)
    heartbeat: list[float] = field(default_factory=list)
    beat_lag: list[float] = field(default_factory=list)
    beats_lost: int = 0  # 404 or no answer during the steady window
    revisions_per_minute: float = float("nan")
    false_unhealthy: int = 0  # during the steady window
    unhealthy_whole_run: int = 0  # from the first beat to the end, reads included
    unhealthy_listed: int = 0  # GET /v1/services?status=unhealthy at the end
    leases: int = 0
    loads: list[str] = field(default_factory=list)  # 1-minute load average at each phase
    steady_cpu: float = float("nan")
    open_loop: Load | None = None
    closed_loop: Load | None = None
    watch: list[float] = field(default_factory=list)
    watch_missed: int = 0
    # ours only: the server's own request-duration histogram over each phase
    server: dict[str, dict[str, dict[float, float]]] = field(default_factory=dict)


def wipe_services(store: Store) -> None:
    """Revoke every instance's lease (the keys go with them), then delete what is left."""
    kvs, _ = store.get_prefix(keys.SERVICES)
    leases = {kv.lease for kv in kvs.values() if kv.lease}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(store.revoke, leases))
    kvs, _ = store.get_prefix(keys.SERVICES, keys_only=True)
    names = list(kvs)
    for i in range(0, len(names), 128):
        store.txn([], [Delete(k) for k in names[i:i + 128]])


def live_leases(endpoints: list[str]) -> int:
    out = subprocess.run([etcd_binary("etcdctl"), f"--endpoints={','.join(endpoints)}",
                          "lease", "list"], capture_output=True, text=True, timeout=60,
                         check=False).stdout
    m = re.search(r"found (\d+) leases", out)
    return int(m[1]) if m else -1


def member_pids(cluster: LocalCluster) -> list[int]:
    return [m.proc.pid for m in cluster.members if getattr(m, "proc", None) is not None]


def histogram(port: int) -> dict[str, dict[float, float]]:
    """The registry's request-duration histogram by route: {route: {le: count}}."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except (OSError, http.client.HTTPException):
        return {}
    out: dict[str, dict[float, float]] = {}
    pattern = (r'^chora_registry_request_duration_seconds_bucket\{le="([^"]+)",'
               r'route="([^"]+)"\} ([\d.e+]+)$')
    for le, route, count in re.findall(pattern, text, re.M):
        out.setdefault(route, {})[float(le)] = float(count)
    if not out:  # label order differs
        pattern = (r'^chora_registry_request_duration_seconds_bucket\{route="([^"]+)",'
                   r'le="([^"]+)"\} ([\d.e+]+)$')
        for route, le, count in re.findall(pattern, text, re.M):
            out.setdefault(route, {})[float(le)] = float(count)
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (Prometheus-style, no
    interpolation: a bound, not an estimate)."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0
    for le, count in ordered:
        if total and count >= q * total:
            return le
    return float("nan")


def histogram_delta(before: dict[str, dict[float, float]],
                    after: dict[str, dict[float, float]]) -> dict[str, dict[float, float]]:
    return {route: {le: n - before.get(route, {}).get(le, 0) for le, n in b.items()}
            for route, b in after.items()}


def phase(res: Result, name: str, before: dict[str, dict[float, float]], port: int
          ) -> dict[str, dict[float, float]]:
    """Record the server's histogram over a phase (empty for the naive server, which
    has no /metrics); return the new starting point."""
    now = histogram(port)
    if now:
        res.server[name] = histogram_delta(before, now)
    return now


def etcd_writes(store: Store, count: int, concurrency: int) -> list[float]:
    """etcd alone, from this process: a lease grant and a put on it, as a register
    does, ``concurrency`` at a time; the leases are revoked afterwards."""
    took: list[float] = []
    leases: list[int] = []

    def one(i: int) -> None:
        t0 = time.perf_counter()
        lease = store.grant(REMOVAL_TIMEOUT)
        store.txn([], [Put(f"{keys.SERVICES}bench-etcd/{i}", b"x" * 400, lease)])
        took.append(time.perf_counter() - t0)
        leases.append(lease)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(store.revoke, leases))
    return took


@contextlib.contextmanager
def server(kind: str, cluster: LocalCluster, port: int, workdir: Path) -> Iterator[int]:
    """Start one server as a subprocess, yield its pid once /v1/health answers; stop it
    (SIGTERM, then SIGKILL after 15 s)."""
    endpoints = ",".join(cluster.endpoints)
    if kind == "ours":
        cmd = [sys.executable, "-m", "services.registry", "--host", HOST, "--port", str(port),
               "--endpoints", endpoints, "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
               "--removal-timeout", str(REMOVAL_TIMEOUT), "--log-level", "warning"]
    else:
        cmd = [sys.executable, __file__, "--naive-server", "--port", str(port),
               "--endpoints", endpoints]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REGISTRY_", "ETCD_ENDPOINTS"))}
    log = (workdir / f"{kind}.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Http(port, timeout=2)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited with {proc.returncode}: "
                                   f"see {workdir / (kind + '.log')}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if client.request("GET", "/v1/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} server did not answer /v1/health within 60 s")
            time.sleep(0.2)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_average()}] {text}", file=sys.stderr,
          flush=True)


def run_server(kind: str, cluster: LocalCluster, store: Store, args: argparse.Namespace,
               workdir: Path) -> Result:
    res = Result()
    res.loads.append(load_average().split()[0])
    wipe_services(store)
    port = free_ports(1)[0]
    with server(kind, cluster, port, workdir) as pid:
        members = member_pids(cluster)
        http_ = Http(port)
        events = Events(port) if kind == "ours" else None
        beater: Beater | None = None
        try:
            # 1. register
            say(f"{kind}: registering {args.instances} instances over {args.names} names")
            plan = [(f"bench-svc-{i % args.names:03d}", i) for i in range(args.instances)]
            instances: list[tuple[str, str]] = []
            lock = threading.Lock()

            def register(item: tuple[str, int]) -> None:
                name, i = item
                t0 = time.perf_counter()
                status, body = http_.request("POST", "/v1/services", registration(name, i))
                took = time.perf_counter() - t0
                if status != 201:
                    raise RuntimeError(f"register answered {status}: {body[:200]!r}")
                with lock:
                    res.register.append(took)
                    instances.append((name, json.loads(body)["id"]))

            hist = histogram(port)
            with ThreadPoolExecutor(args.write_concurrency) as pool:
                list(pool.map(register, plan))
            instances.sort()
            hist = phase(res, "register", hist, port)

            res.loads.append(load_average().split()[0])
            # 2. steady heartbeats
            beater = Beater(http_, instances, args.beat_interval)
            beater.start()
            # One whole interval first, so every instance has beaten once.
            say(f"{kind}: heartbeats every {args.beat_interval:g} s; warm-up "
                f"{args.beat_interval:g} s, then {args.steady:g} s measured")
            time.sleep(args.beat_interval)
            unhealthy0 = len(events.unhealthy) if events else 0
            hist = histogram(port)
            rev0, t0, cpu0 = store.revision(), time.perf_counter(), cpu_seconds(pid)
            time.sleep(args.steady)
            rev1, t1, cpu1 = store.revision(), time.perf_counter(), cpu_seconds(pid)
            res.revisions_per_minute = (rev1 - rev0) * 60 / (t1 - t0)
            res.steady_cpu = 100 * (cpu1 - cpu0) / (t1 - t0)
            window = beater.window(t0, t1 - 1.0)  # beats due by then have been answered
            res.heartbeat = [b.latency for b in window if b.status == 204]
            res.beat_lag = [b.lag for b in window]
            res.beats_lost = sum(1 for b in window if b.status != 204)
            res.false_unhealthy = len(events.unhealthy) - unhealthy0 if events else 0
            hist = phase(res, "steady", hist, port)

            res.loads.append(load_average().split()[0])
            # 3. reads
            name = plan[len(plan) // 2][0]
            url = f"http://{HOST}:{port}/v1/services/{name}"
            status, body = http_.request("GET", f"/v1/services/{name}")
            count = len(json.loads(body)) if status == 200 else 0
            if status != 200 or count != args.instances // args.names:
                raise RuntimeError(f"GET {url} answered {status} with {count} records")
            per_worker = args.rate / args.open_workers
            say(f"{kind}: open loop, {args.rate:g} req/s for {args.open:g} s "
                f"(hey -c {args.open_workers} -q {per_worker:g})")
            res.open_loop = measure_load(
                lambda: run_hey(url, args.open, args.open_workers, per_worker,
                                args.open + 60),
                "hey", pid, members, workdir / f"{kind}-reads.txt")
            hist = phase(res, "open loop", hist, port)
            res.loads.append(load_average().split()[0])
            tool = args.generator
            say(f"{kind}: closed loop at saturation, {args.saturation:g} s "
                f"({tool}, {args.connections} connections)")
            if tool == "wrk":
                run = lambda: run_wrk(url, args.saturation, args.connections,  # noqa: E731
                                      args.saturation + 60)
            else:
                run = lambda: run_hey(url, args.saturation, args.connections, None,  # noqa: E731
                                      args.saturation + 60)
            res.closed_loop = measure_load(run, tool, pid, members,
                                           workdir / f"{kind}-reads.txt")
            hist = phase(res, "closed loop", hist, port)

            res.loads.append(load_average().split()[0])
            # 4. one registration at a time: its latency, and when /v1/watch shows it
            say(f"{kind}: {args.watch_samples} registrations one at a time"
                + (", each awaited on /v1/watch" if events else ""))
            for i in range(args.watch_samples):
                t0 = time.perf_counter()
                status, body = http_.request("POST", "/v1/services",
                                             registration("bench-watch", i))
                res.register_alone.append(time.perf_counter() - t0)
                if status != 201:
                    raise RuntimeError(f"register answered {status}: {body[:200]!r}")
                if events is not None:
                    seen = events.wait_registered(json.loads(body)["id"], 5.0)
                    if seen is None:
                        res.watch_missed += 1
                    else:
                        res.watch.append(seen - t0)
                time.sleep(0.02)
            hist = phase(res, "one at a time", hist, port)

            if events is not None:
                res.unhealthy_whole_run = len(events.unhealthy)
            status, body = http_.request("GET", "/v1/services?status=unhealthy")
            res.unhealthy_listed = len(json.loads(body)) if status == 200 else -1
            res.leases = live_leases(cluster.endpoints)
            res.loads.append(load_average().split()[0])
        finally:
            if beater is not None:
                beater.stop()
            if events is not None:
                events.close()
    wipe_services(store)
    return res


# -- the report ----------------------------------------------------------------------------


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.1f} ms"


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def report(results: dict[str, Result], args: argparse.Namespace, loads: tuple[str, str],
           etcd_alone: list[float]) -> str:
    ours, naive = results.get("ours"), results.get("naive")
    rows: list[tuple[str, str, str, str]] = []

    def row(measure: str, get: Callable[[Result], str], goal: str = "") -> None:
        rows.append((measure, get(ours) if ours else "-", get(naive) if naive else "-", goal))

    def goal(text: str, ok: bool | None) -> str:
        return text if ok is None else f"{text}: {verdict(ok)}"

    def ol(r: Result) -> Load:
        assert r.open_loop is not None
        return r.open_loop

    def cl(r: Result) -> Load:
        assert r.closed_loop is not None
        return r.closed_loop

    n = args.instances
    row(f"register p50 ({n:,}, {args.write_concurrency} at a time)",
        lambda r: ms(pct(r.register, 50)))
    # The goal is the seed's pilot figure, taken one registration at a time (below); at
    # several in flight it is a stress figure, judged against the same bound for reference.
    row("register p99 (stress: several in flight)", lambda r: ms(pct(r.register, 99)),
        goal("20 ms for reference", ours and pct(ours.register, 99) <= 0.020))
    row(f"register p50, one at a time ({args.watch_samples}, heartbeats running)",
        lambda r: ms(pct(r.register_alone, 50)))
    row("register p99, one at a time", lambda r: ms(pct(r.register_alone, 99)),
        goal("≤ 20 ms", ours and pct(ours.register_alone, 99) <= 0.020))
    row(f"heartbeat p50 ({n:,} beating every {args.beat_interval:g} s)",
        lambda r: ms(pct(r.heartbeat, 50)))
    row("heartbeat p99", lambda r: ms(pct(r.heartbeat, 99)),
        goal("≤ 10 ms", ours and pct(ours.heartbeat, 99) <= 0.010))
    row(f"GET open loop at {args.rate:g} req/s, {args.open:g} s: answered",
        lambda r: rate(ol(r).rate))
    row("GET open loop p50", lambda r: ms(ol(r).p50))
    row("GET open loop p99", lambda r: ms(ol(r).p99),
        goal("≤ 5 ms", ours and ol(ours).p99 <= 0.005))
    row("GET open loop non-2xx / errors", lambda r: f"{ol(r).non_2xx} / {ol(r).errors}")
    sat_ok = None
    if ours and naive:
        sat_ok = cl(ours).rate >= 5000 and cl(ours).rate >= 10 * cl(naive).rate
    elif ours:
        sat_ok = cl(ours).rate >= 5000
    row(f"GET closed loop ({cl(ours or naive).tool}, {args.connections} conns, "  # type: ignore[arg-type]
        f"{args.saturation:g} s): throughput",
        lambda r: rate(cl(r).rate), goal("≥ 5,000/s and ≥ 10x naive", sat_ok))
    if ours and naive:
        rows.append(("  ours / naive", f"{cl(ours).rate / cl(naive).rate:.1f}x", "", ""))
    row("GET closed loop p50", lambda r: ms(cl(r).p50))
    row("GET closed loop p99", lambda r: ms(cl(r).p99))
    row("GET closed loop non-2xx / errors", lambda r: f"{cl(r).non_2xx} / {cl(r).errors}")
    row("CPU at saturation: server / 3 etcd / generator (% of a core)",
        lambda r: f"{cl(r).server_cpu:.0f} / {cl(r).etcd_cpu:.0f} / {cl(r).generator_cpu:.0f}")
    row("register → seen on /v1/watch p50",
        lambda r: ms(pct(r.watch, 50)) if r.watch else "n/a (no watch)")
    row("register → seen on /v1/watch p95",
        lambda r: ms(pct(r.watch, 95)) if r.watch else "n/a (no watch)",
        goal("≤ 50 ms", ours and bool(ours.watch) and pct(ours.watch, 95) <= 0.050
             and ours.watch_missed == 0))
    row("register → seen on /v1/watch p99",
        lambda r: ms(pct(r.watch, 99)) if r.watch else "n/a (no watch)")
    row(f"steady {args.steady:g} s: false `unhealthy`",
        lambda r: str(r.false_unhealthy) if r is ours else "n/a (no such state)",
        goal("0", ours and ours.false_unhealthy == 0))
    row(f"steady {args.steady:g} s: etcd revisions per minute",
        lambda r: f"{r.revisions_per_minute:,.0f}",
        goal("0", ours and ours.revisions_per_minute == 0))
    row("steady: heartbeats lost (404 / no answer)", lambda r: str(r.beats_lost))
    row("steady: beat lag p99 (due → answered)", lambda r: ms(pct(r.beat_lag, 99)))
    row("steady: server CPU (% of a core)", lambda r: f"{r.steady_cpu:.1f} %")
    row("whole run: `unhealthy` seen / listed at the end",
        lambda r: (f"{r.unhealthy_whole_run} / {r.unhealthy_listed}" if r is ours
                   else f"n/a / {r.unhealthy_listed}"))
    row("live etcd leases at the end", lambda r: f"{r.leases:,}")
    row("1-min load average at each phase's start, and the end",
        lambda r: " → ".join(r.loads))

    width = [max(len(r[i]) for r in [*rows, ("measure", "ours", "naive", "goal")])
             for i in range(4)]
    lines = [f"| {'measure':<{width[0]}} | {'ours':>{width[1]}} | {'naive':>{width[2]}} | "
             f"{'goal':<{width[3]}} |",
             f"|{'-' * (width[0] + 2)}|{'-' * (width[1] + 1)}:|{'-' * (width[2] + 1)}:|"
             f"{'-' * (width[3] + 2)}|"]
    lines += [f"| {a:<{width[0]}} | {b:>{width[1]}} | {c:>{width[2]}} | {d:<{width[3]}} |"
              for a, b, c, d in rows]
    lines.append("")
    lines.append(f"load average before: {loads[0]}; after: {loads[1]} "
                 f"({os.cpu_count()} CPUs); {n:,} instances over {args.names} names, "
                 f"GET of one name ({n // args.names} records)")
    if etcd_alone:
        lines.append(f"etcd alone from this script, lease grant + put ({len(etcd_alone)}, "
                     f"{args.write_concurrency} at a time): p50 {ms(pct(etcd_alone, 50))}, "
                     f"p99 {ms(pct(etcd_alone, 99))}")
    if ours and ours.server:
        parts = []
        for name, route in (("register", "/v1/services"),
                            ("one at a time", "/v1/services"),
                            ("steady", "/v1/services/{name}/{id}/heartbeat"),
                            ("open loop", "/v1/services/{name}"),
                            ("closed loop", "/v1/services/{name}")):
            buckets = ours.server.get(name, {}).get(route, {})
            total = max(buckets.values(), default=0)
            if total:
                parts.append(f"{name} {route} p50 ≤ "
                             f"{histogram_quantile(buckets, 0.5) * 1000:g} ms, p99 ≤ "
                             f"{histogram_quantile(buckets, 0.99) * 1000:g} ms")
        if parts:
            lines.append("ours, server-side (its /metrics histogram, bucket bounds): "
                         + "; ".join(parts))
    if ours and ours.watch_missed:
        lines.append(f"ours: {ours.watch_missed} registrations never seen on /v1/watch "
                     "within 5 s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--endpoints", help=argparse.SUPPRESS)
    ap.add_argument("--servers", default="ours,naive",
                    help="which to run, in order (default %(default)s)")
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--names", type=int, default=100,
                    help="service names the instances are spread over (default %(default)s)")
    ap.add_argument("--write-concurrency", type=int, default=4,
                    help="registrations in flight at once (default %(default)s)")
    ap.add_argument("--beat-interval", type=float, default=10.0)
    ap.add_argument("--steady", type=float, default=120.0,
                    help="seconds of heartbeats measured (default %(default)s)")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="open-loop reads per second (default %(default)s)")
    ap.add_argument("--open", type=float, default=60.0,
                    help="seconds of open-loop reads (default %(default)s)")
    ap.add_argument("--open-workers", type=int, default=50,
                    help="hey workers sharing --rate (default %(default)s)")
    ap.add_argument("--saturation", type=float, default=30.0,
                    help="seconds of closed-loop reads (default %(default)s)")
    ap.add_argument("--connections", type=int, default=64,
                    help="closed-loop connections (default %(default)s)")
    ap.add_argument("--generator", choices=("auto", "wrk", "hey"), default="auto",
                    help="closed-loop load generator: auto = wrk when installed, else hey")
    ap.add_argument("--watch-samples", type=int, default=200)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 30 s steady, 10 s open loop, 5 s saturation, "
                         "30 watch samples")
    args = ap.parse_args(argv)
    if args.naive_server:
        return serve_naive(args.port, args.endpoints)
    if args.quick:
        args.steady, args.open, args.saturation, args.watch_samples = 30.0, 10.0, 5.0, 30
    if shutil.which("hey") is None:
        print("bench_registry.py needs the load generator hey: apt-get install -y hey "
              "(or run make bench, which installs it when it can)", file=sys.stderr)
        return 2
    if args.generator == "auto":
        args.generator = "wrk" if shutil.which("wrk") else "hey"
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or set(servers) - {"ours", "naive"}:
        ap.error("--servers takes ours, naive or both")
    loads = [load_average(), ""]
    results: dict[str, Result] = {}
    etcd_alone: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        workdir = Path(tmp)
        cluster = LocalCluster.ephemeral(workdir / "etcd").start()
        store = Store(cluster.endpoints, timeout=10)
        try:
            say(f"cluster: {','.join(cluster.endpoints)}; load average {loads[0]}")
            etcd_alone = etcd_writes(store, 200, args.write_concurrency)
            for kind in servers:
                results[kind] = run_server(kind, cluster, store, args, workdir)
        finally:
            store.close()
            cluster.destroy()
    loads[1] = load_average()
    print(report(results, args, (loads[0], loads[1]), etcd_alone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
