"""``make up``: three local etcd members on the seed's ports, and both daemons.

Data lives under ``.data/`` so a second run resumes the same cluster. Ctrl-C (or
SIGTERM) stops the daemons first, then the members, each bounded in time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
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


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
    busy = [p for m in topology.MEMBERS for p in (m.client_port, m.peer_port) if port_in_use(p)]
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
        print(f"\netcd endpoints: {endpoints}")
        print(f"  etcdctl --endpoints={endpoints} get /chora/ --prefix --keys-only")
        print(f"gitops-sync:   http://127.0.0.1:{SYNC_METRICS}/healthz  /metrics")
        if "heartbeat" in daemons:
            print(f"heartbeat:     http://127.0.0.1:{HEARTBEAT_METRICS}/healthz  /metrics")
        print("member logs:   .data/etcd*.log    stop: Ctrl-C\n", flush=True)
        while not stop.wait(0.5):
            for name, proc in daemons.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    stop.set()
    finally:
        print("\nstopping daemons ...", flush=True)
        for proc in daemons.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in daemons.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        print("stopping etcd members ...", flush=True)
        cluster.stop()
        print("stopped; data kept in .data/ (make clean removes it)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
