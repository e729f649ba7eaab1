"""The cost of TLS on the registry's reads: ``GET /v1/services/{name}``, plaintext vs
secure, side by side in one run, the same generator and load.

    .venv/bin/python scripts/bench_registry_tls.py [--open 30] [--saturation 20]

- plaintext: a plain 3-member cluster, ``python -m services.registry`` on http;
- secure: a secure cluster (TLS, client certificates, etcd auth; the registry as user
  ``registry``) and the API on https (``--tls-cert/--tls-key``, a certificate of the
  cluster's local CA), with ``--tokens`` and ``--require-read-token``, so every read
  also carries and checks a bearer token.

Each: 10 instances of one name registered, then the open loop (``hey``, ``--rate``
req/s) and the closed loop at saturation (``wrk`` when installed, else ``hey``), and
the registry's own CPU time per request in the closed loop: on 2 cores shared with the
generator, which pays for TLS too, the rate alone mixes the generator's cost into the
server's. ``--rounds`` alternates the three setups that many times; the table gives
medians. Both generators accept the local CA's certificate without verifying it (hey
skips verification; wrk does not verify). hey is given ``-host localhost``: it names
the server in TLS by its Host header, and "127.0.0.1:PORT" (a port in a server name) is
refused by the registry's TLS stack (rustls, as RFC 6066 asks). Not a pass/fail test:
the table says whether the cost stays within 15 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_registry import HOST, cpu_seconds, registration, run_hey, run_wrk  # noqa: E402

from services.core.localcluster import LocalCluster, free_ports  # noqa: E402
from services.registry import tokens  # noqa: E402


@contextlib.contextmanager
def registry(cluster: LocalCluster, secure: bool, work: Path, *, read_token: bool = False
             ) -> Iterator[tuple[str, dict, int]]:
    """A registry process; yields (base URL, headers a reader sends, its pid).
    ``read_token``: reads need a token too (``--require-read-token``; by default only
    writes do)."""
    port = free_ports(1)[0]
    cmd = [sys.executable, "-m", "services.registry", "--host", HOST, "--port", str(port),
           "--endpoints", ",".join(cluster.endpoints), "--log-level", "warning"]
    headers: dict[str, str] = {}
    scheme = "http"
    if secure:
        assert cluster.tls is not None
        cluster.tls.issue("registry-https", hosts=[HOST, "localhost"], server=True)
        _, crt, key = cluster.tls.paths("registry-https")
        token = tokens.mint()
        (work / "tokens.yaml").write_text(tokens.entry_line("bench", token, ["admin"]) + "\n")
        cmd += [*cluster.client_flags("registry"), "--tls-cert", str(crt), "--tls-key",
                str(key), "--tokens", str(work / "tokens.yaml")]
        if read_token:
            cmd.append("--require-read-token")
        headers["Authorization"] = f"Bearer {token}"
        scheme = "https"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=(work / f"registry-{scheme}.log").open("wb"))
    url = f"{scheme}://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if call(cluster, url + "/v1/health", headers)[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry did not come up: see {work}")
            time.sleep(0.2)
        yield url, headers, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def call(cluster: LocalCluster, url: str, headers: dict, body: bytes | None = None
         ) -> tuple[int, Any]:
    context = None
    if url.startswith("https") and cluster.tls is not None:
        context = ssl.create_default_context(cafile=str(cluster.tls.ca_cert))
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                 headers={**headers, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def reads(cluster: LocalCluster, secure: bool, args: argparse.Namespace, work: Path,
          read_token: bool = False) -> dict[str, dict[str, Any]]:
    with registry(cluster, secure, work, read_token=read_token) as (url, headers, pid):
        for i in range(10):
            status, _ = call(cluster, url + "/v1/services", headers, registration("tls", i))
            assert status == 201, status
        target = url + "/v1/services/tls"
        per_worker = args.rate / args.open_workers
        hey_headers = {**headers, "Host": "localhost"} if secure else headers
        open_loop = run_hey(target, args.open, args.open_workers, per_worker,
                            args.open + 60, hey_headers)[1]
        cpu = cpu_seconds(pid)
        if shutil.which("wrk"):
            closed = run_wrk(target, args.saturation, args.connections, args.saturation + 60,
                             headers)[1]
        else:
            closed = run_hey(target, args.saturation, args.connections, None,
                             args.saturation + 60, hey_headers)[1]
        closed["cpu"] = (cpu_seconds(pid) - cpu) / max(1, closed["requests"])
        for phase in (open_loop, closed):
            if phase["errors"] or phase["non_2xx"]:
                raise RuntimeError(f"{url}: {phase['errors']} errors, "
                                   f"{phase['non_2xx']} answers not 2xx")
        return {"open": open_loop, "closed": closed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--open", type=float, default=30.0)
    # 10 workers: 50 added hey's own scheduling to every latency
    ap.add_argument("--open-workers", type=int, default=10)
    ap.add_argument("--saturation", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("hey") is None:
        print("needs hey: apt-get install -y hey (make bench-registry installs it)",
              file=sys.stderr)
        return 2
    rounds: dict[str, list[dict[str, dict[str, Any]]]] = {
        "plaintext": [], "secure": [], "read token": []}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        plain_cluster = LocalCluster.ephemeral(work / "etcd-plain").start()
        secure_cluster = LocalCluster.secure(work / "etcd-secure").start()
        try:
            for _ in range(args.rounds):
                rounds["plaintext"].append(reads(plain_cluster, False, args, work))
                rounds["secure"].append(reads(secure_cluster, True, args, work))
                rounds["read token"].append(
                    reads(secure_cluster, True, args, work, read_token=True))
        finally:
            plain_cluster.destroy()
            secure_cluster.destroy()
    results = {setup: {phase: {key: statistics.median(r[phase][key] for r in runs)
                               for key in runs[0][phase]} for phase in ("open", "closed")}
               for setup, runs in rounds.items()}
    plain = results["plaintext"]

    def cost(a: float, b: float, key: str) -> str:
        pct = (b - a) / a * 100 if key != "rate" else (a - b) / a * 100
        return f"{pct:+.0f} %" + (" (within 15 %)" if pct <= 15 else " (beyond 15 %)")

    print("| measure | plaintext (http) | secure stack (https; tokens for writes) | cost "
          "| + --require-read-token | cost |")
    print("|---|---:|---:|---|---:|---|")
    for phase, label in (("open", f"open loop {args.rate:g} req/s"),
                         ("closed", "closed loop at saturation")):
        measures = [("rate", "req/s"), ("p50", "ms"), ("p99", "ms")]
        if phase == "closed":
            measures.append(("cpu", "µs"))
        for key, unit in measures:
            scale = {"ms": 1e3, "µs": 1e6}.get(unit, 1)
            a = plain[phase][key]
            b, c = results["secure"][phase][key], results["read token"][phase][key]
            name = "registry CPU per request" if key == "cpu" else key
            print(f"| {label}: {name} | {a * scale:,.1f} {unit} | {b * scale:,.1f} {unit} | "
                  f"{cost(a, b, key)} | {c * scale:,.1f} {unit} | {cost(a, c, key)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
