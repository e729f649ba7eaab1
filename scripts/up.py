"""``make up``: three local etcd members on the seed's ports, both daemons and the
registry service.

Started in this order: the members, the daemons (gitops-sync, heartbeat), then the
registry (``python -m services.registry`` on 8500), which is waited for until its
``/v1/health`` answers. Data lives under ``.data/`` so a second run resumes the same
cluster. Ctrl-C (or SIGTERM) stops them in reverse order: the registry, the daemons, then
the members, each step bounded in time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.core import topology  # noqa: E402
from services.core.localcluster import (  # noqa: E402
    LocalCluster,
    choose_etcd,
    version_warning,
)

SYNC_METRICS, HEARTBEAT_METRICS = 9101, 9102
REGISTRY_PORT = 8500  # the seed's port; the `manifest` CLI's default URL
REGISTRY_READY_WAIT = 30.0  # seconds for the registry's first read of etcd
STOP_WAIT = 15.0  # seconds each process gets after SIGTERM before SIGKILL


def registry_args(endpoints: str) -> list[str]:
    """The registry's command line after the interpreter (compose's ``manifest`` service
    runs the same timings; tests/unit/test_infrastructure_static.py compares them)."""
    return ["-m", "services.registry", "--host", "127.0.0.1", "--port", str(REGISTRY_PORT),
            "--endpoints", endpoints, "--heartbeat-timeout", "30", "--removal-timeout", "60"]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def registry_ready(proc: subprocess.Popen[bytes], timeout: float,
                   stop: threading.Event) -> bool:
    """Wait until the registry's ``/v1/health`` answers 200 (its first read of etcd is
    done: 503 until then), the process exits, Ctrl-C, or ``timeout`` passes."""
    url = f"http://127.0.0.1:{REGISTRY_PORT}/v1/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        stop.wait(0.2)
    return False


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each, then wait for each up to ``STOP_WAIT`` seconds, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def announce_etcd() -> bool:
    """Say which etcd binary runs and its version, first thing, so every run's output
    records it; warn when that version has a known data-loss bug. False: none found."""
    try:
        etcd = choose_etcd()
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return False
    print(f"etcd {etcd.version_text}: {etcd.path} (from {etcd.source}; "
          "ETCD_BIN or a newer etcd on PATH takes precedence)", flush=True)
    warning = version_warning(etcd.version)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return True


def main() -> int:
    if not announce_etcd():
        return 1
    ports = [p for m in topology.MEMBERS for p in (m.client_port, m.peer_port)]
    busy = [p for p in (*ports, REGISTRY_PORT) if port_in_use(p)]
    if busy:
        print(f"ports {busy} are already in use: is another `make up` running?", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    data = ROOT / ".data"
    resumed = (data / "etcd1" / "member").exists()
    cluster = LocalCluster(data)
    print(f"{'resuming' if resumed else 'creating'} the local cluster in {data}", flush=True)
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    registry: subprocess.Popen[bytes] | None = None
    try:
        cluster.start(timeout=60)
        endpoints = ",".join(cluster.endpoints)
        commands = {
            "gitops-sync": ["-m", "services.gitops_sync", "--capabilities",
                            str(ROOT / "capabilities"), "--metrics-port", str(SYNC_METRICS)],
        }
        if (ROOT / "services" / "heartbeat" / "__main__.py").exists():
            commands["heartbeat"] = ["-m", "services.heartbeat",
                                     "--metrics-port", str(HEARTBEAT_METRICS)]
        for name, args in commands.items():
            daemons[name] = subprocess.Popen(
                [sys.executable, *args, "--endpoints", endpoints], cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
            )
        # Last: it serves what the daemons write, and registers nothing itself.
        registry = subprocess.Popen([sys.executable, *registry_args(endpoints)], cwd=ROOT,
                                    start_new_session=True)
        if not registry_ready(registry, REGISTRY_READY_WAIT, stop) and not stop.is_set():
            print(f"WARNING: the registry did not answer /v1/health within "
                  f"{REGISTRY_READY_WAIT:.0f} s (exit code {registry.poll()})",
                  file=sys.stderr, flush=True)
        print(f"\netcd endpoints: {endpoints}")
        print(f"  etcdctl --endpoints={endpoints} get /chora/ --prefix --keys-only")
        print(f"gitops-sync:   http://127.0.0.1:{SYNC_METRICS}/healthz  /metrics")
        if "heartbeat" in daemons:
            print(f"heartbeat:     http://127.0.0.1:{HEARTBEAT_METRICS}/healthz  /metrics")
        print(f"registry:      http://127.0.0.1:{REGISTRY_PORT}/v1/health  /metrics  /docs"
              "   (.venv/bin/manifest list)")
        print("member logs:   .data/etcd*.log    stop: Ctrl-C\n", flush=True)
        watched = {**daemons, "registry": registry}
        while not stop.wait(0.5):
            for name, proc in watched.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    stop.set()
    finally:
        print("", flush=True)
        if registry is not None:
            print("stopping the registry ...", flush=True)
            stop_processes([registry])
        print("stopping daemons ...", flush=True)
        stop_processes(list(reversed(daemons.values())))
        print("stopping etcd members ...", flush=True)
        cluster.stop()
        print("stopped; data kept in .data/ (make clean removes it)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
