"""``make up``: three local etcd members on the seed's ports, both daemons and the
registry service.

Started in this order: the members, the daemons (gitops-sync, heartbeat), then the
registry (``python -m services.registry`` on 8500), which is waited for until its
``/v1/health`` answers. Data lives under ``.data/`` so a second run resumes the same
cluster. Ctrl-C (or SIGTERM) stops them in reverse order: the registry, the daemons, then
the members, each step bounded in time.

``--secure`` (``make up SECURE=1``): a local CA and certificates made once under
``.data/pki/`` (``services/core/pki.py``), members on TLS that require client
certificates, etcd's auth on with the users and roles of ``services/core/roles.py``,
and each program started with its own identity. A cluster keeps the mode it was created
in: ``.data/`` made plaintext is refused with ``--secure`` and the other way round.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
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
    SECURE_MARK,
    LocalCluster,
    choose_etcd,
    version_warning,
)
from services.core.pki import Pki  # noqa: E402
from services.core.roles import IDENTITIES  # noqa: E402

SYNC_METRICS, HEARTBEAT_METRICS = 9101, 9102
STANDBY_OFFSET = 10  # --ha: the second instance of each daemon serves on 9111 / 9112
REGISTRY_PORT = 8500  # the seed's port; the `manifest` CLI's default URL
REGISTRY_READY_WAIT = 30.0  # seconds for the registry's first read of etcd
STOP_WAIT = 15.0  # seconds each process gets after SIGTERM before SIGKILL
DATA = ROOT / ".data"


def registry_args(endpoints: str, security: list[str] | None = None) -> list[str]:
    """The registry's command line after the interpreter (compose's ``manifest`` service
    runs the same timings; tests/unit/test_infrastructure_static.py compares them).
    ``security``: its identity's ``--cacert/--cert/--key`` in the secure stack."""
    return ["-m", "services.registry", "--host", "127.0.0.1", "--port", str(REGISTRY_PORT),
            "--endpoints", endpoints, "--heartbeat-timeout", "30", "--removal-timeout", "60",
            *(security or [])]


def takes_access(program: str) -> bool:
    """Whether ``services.<program>`` connects with the etcd flags it parses: its
    settings carry ``etcd_access``. (Every program's ``--help`` lists ``--cacert``, the
    shared flags being in ``services/core/options.py``; a program whose settings do not
    carry them yet would ignore them and fail to reach a secure cluster.)"""
    settings = importlib.import_module(f"services.{program}.settings").Settings
    return any(f.name == "etcd_access" for f in dataclasses.fields(settings))


def mode_conflict(data: Path, secure: bool) -> str | None:
    """Why ``.data/`` cannot be resumed in this mode, or None. A member keeps the peer
    URLs (http or https) it was created with, so a cluster cannot change mode."""
    if not (data / "etcd1" / "member").exists():
        return None
    was_secure = (data / SECURE_MARK).exists()
    if was_secure == secure:
        return None
    made, asked = ("--secure", "plaintext") if was_secure else ("plaintext", "--secure")
    return (f"{data} holds a cluster created {made}; it cannot run {asked}. Run `make up"
            f"{' SECURE=1' if was_secure else ''}`, or `make clean` (or move {data} aside) "
            "to start afresh")


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


def security_flags(cluster: LocalCluster, program: str, identity: str) -> list[str]:
    """``identity``'s flags for ``program`` in the secure stack, if it takes them yet."""
    if cluster.tls is None:
        return []
    if not takes_access(program):
        print(f"WARNING: services.{program} does not connect with --cacert/--cert/--key yet "
              "(its settings have no etcd_access): started without its identity, it cannot "
              "reach the secure cluster", file=sys.stderr, flush=True)
        return []
    return cluster.client_flags(identity)


def etcdctl_line(cluster: LocalCluster, endpoints: str) -> str:
    flags = ""
    if cluster.tls is not None:
        ca, cert, key = (p.relative_to(ROOT) if p.is_relative_to(ROOT) else p
                         for p in cluster.tls.paths("reader"))
        flags = f" --cacert {ca} --cert {cert} --key {key}"
    return f"  etcdctl --endpoints {endpoints}{flags} get --prefix /chora/ --keys-only"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--secure", action="store_true",
                   help="TLS with client certificates and etcd auth, one identity per "
                        "program; certificates under .data/pki/ (make up SECURE=1)")
    p.add_argument("--ha", action="store_true",
                   help="two instances of each daemon (make up HA=1): one leads, the other "
                        "stands by and takes over when the leader stops or dies "
                        "(the second serves /healthz and /metrics on 9111 / 9112)")
    p.add_argument("--certs", action="store_true",
                   help="only make the CA and the certificates under .data/pki/ (what "
                        "docker-compose.secure.yml mounts) and exit (make certs)")
    return p


def make_certs(pki: Pki) -> None:
    made = pki.ensure(members=[m.name for m in topology.MEMBERS], clients=IDENTITIES)
    print(f"certificates in {pki.root}: "
          + (f"made {', '.join(made)}" if made else "all present and valid"), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.certs:
        make_certs(Pki(DATA / "pki"))
        return 0
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

    data = DATA
    conflict = mode_conflict(data, args.secure)
    if conflict:
        print(conflict, file=sys.stderr)
        return 1
    resumed = (data / "etcd1" / "member").exists()
    cluster = LocalCluster(data, tls=Pki(data / "pki") if args.secure else None)
    mode = "secure (TLS + auth) " if args.secure else ""
    print(f"{'resuming' if resumed else 'creating'} the {mode}local cluster in {data}",
          flush=True)
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    registry: subprocess.Popen[bytes] | None = None
    try:
        cluster.start(timeout=60)
        if args.secure:
            (data / SECURE_MARK).touch()
        endpoints = ",".join(cluster.endpoints)
        commands: dict[str, list[str]] = {}
        for i in range(2 if args.ha else 1):
            suffix = f" #{i + 1}" if args.ha else ""
            commands["gitops-sync" + suffix] = [
                "-m", "services.gitops_sync", "--capabilities", str(ROOT / "capabilities"),
                "--metrics-port", str(SYNC_METRICS + i * STANDBY_OFFSET),
                "--max-txn-ops", topology.TUNING["max-txn-ops"],
                *security_flags(cluster, "gitops_sync", "gitops-sync")]
            commands["heartbeat" + suffix] = [
                "-m", "services.heartbeat",
                "--metrics-port", str(HEARTBEAT_METRICS + i * STANDBY_OFFSET),
                *security_flags(cluster, "heartbeat", "heartbeat")]
        for name, command in commands.items():
            daemons[name] = subprocess.Popen(
                [sys.executable, *command, "--endpoints", endpoints], cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
            )
        # Last: it serves what the daemons write, and registers nothing itself.
        security = security_flags(cluster, "registry", "registry")
        registry = subprocess.Popen([sys.executable, *registry_args(endpoints, security)],
                                    cwd=ROOT, start_new_session=True)
        if not registry_ready(registry, REGISTRY_READY_WAIT, stop) and not stop.is_set():
            print(f"WARNING: the registry did not answer /v1/health within "
                  f"{REGISTRY_READY_WAIT:.0f} s (exit code {registry.poll()})",
                  file=sys.stderr, flush=True)
        print(f"\netcd endpoints: {endpoints}" + ("   (TLS + auth)" if args.secure else ""))
        print(etcdctl_line(cluster, endpoints))
        if cluster.tls is not None:
            print(f"  identities:  {cluster.tls.root}/{{root,gitops-sync,heartbeat,registry,"
                  "reader}.{crt,key}  (make status/e2e/backup SECURE=1)")
        for name, port in (("gitops-sync", SYNC_METRICS), ("heartbeat", HEARTBEAT_METRICS)):
            urls = "  ".join(f"http://127.0.0.1:{port + i * STANDBY_OFFSET}/healthz"
                             for i in range(2 if args.ha else 1))
            print(f"{name + ':':<15}{urls}  /metrics"
                  + ("   (one leads, one stands by: make status)" if args.ha else ""))
        print(f"registry:      http://127.0.0.1:{REGISTRY_PORT}/v1/health  /metrics  /docs"
              "   (.venv/bin/manifest list)")
        print(f"dashboard:     http://127.0.0.1:{REGISTRY_PORT}/ui/")
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
