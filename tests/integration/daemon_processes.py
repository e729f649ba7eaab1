"""The two daemons as real subprocesses (``python -m ...``), the way compose runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CAPABILITIES = REPO / "capabilities"


def sync_command(endpoints: list[str], capabilities: Path = CAPABILITIES) -> list[str]:
    return [sys.executable, "-m", "services.gitops_sync", "--capabilities", str(capabilities),
            "--endpoints", ",".join(endpoints), "--reconcile-interval", "5",
            "--etcd-timeout", "1", "--log-level", "warning"]


def heartbeat_command(endpoints: list[str]) -> list[str]:
    """As compose and `make up` run it: the services are learned from etcd."""
    return [sys.executable, "-m", "services.heartbeat", "--endpoints", ",".join(endpoints),
            "--ttl", "3", "--interval", "1"]


@contextmanager
def running(*commands: list[str], log_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each command, yield the processes, then SIGTERM (SIGKILL after 10 s) them."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ETCD_ENDPOINTS", "CAPABILITIES_DIR", "METRICS_PORT")}
    procs = []
    try:
        for i, command in enumerate(commands):
            with open(log_dir / f"daemon-{i}.log", "ab") as log:
                procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log_dir.glob("*.log")))
