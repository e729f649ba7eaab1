"""The daemons as real processes for the fault matrix: ``python -m services...`` in their
own process groups (so kill -9 and SIGSTOP reach exactly them), their /healthz and
/metrics, and a log pipe that can be left unread to stall a daemon for real."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Environment a developer's shell may carry that would point a daemon elsewhere.
_SCRUB = (
    "ETCD_ENDPOINTS", "CAPABILITIES_DIR", "METRICS_PORT", "LOG_LEVEL", "RECONCILE_INTERVAL",
    "PRUNE_WINDOW", "HEARTBEAT_TTL", "HEARTBEAT_INTERVAL", "HEARTBEAT_RESYNC", "ETCD_TIMEOUT",
    "HEARTBEAT_REVOKE_ON_EXIT", "METRICS_HOST",
)

class LogPipe:
    """A daemon's stderr through a pipe we drain into its log file, and can stop draining.

    A log consumer that stops reading (a stuck log shipper, a full journald) is a real
    way for a daemon's loop to stall while its HTTP thread keeps answering: the next log
    line blocks the thread that writes it. ``hold()`` fills the pipe so that the very next
    line the daemon writes blocks; ``release()`` drains again."""

    def __init__(self, log_path: Path) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._log_path = log_path
        self._lock = threading.Lock()
        self._held = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        """Copy the pipe into the log file, except while held. We keep a write end open
        ourselves (``hold`` needs it), so the pipe never reports EOF: ``close`` ends it."""
        with open(self._log_path, "ab") as out:
            while not self._closed.is_set():
                with self._lock:
                    chunk = None
                    if not self._held:
                        ready, _, _ = select.select([self.read_fd], [], [], 0.1)
                        chunk = os.read(self.read_fd, 65536) if ready else b""
                if chunk is None:
                    self._closed.wait(0.05)
                    continue
                out.write(chunk.replace(b"\0", b""))  # the filler is NULs: drop it
                out.flush()

    def hold(self) -> int:
        """Stop draining and fill the pipe to the brim; return the bytes added."""
        with self._lock:
            self._held = True
        # A new open file description of the same pipe: O_NONBLOCK set on a dup() would be
        # shared with the daemon's stderr, whose writes must keep blocking.
        fd = os.open(f"/proc/self/fd/{self.write_fd}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            added = 0
            while True:
                try:
                    added += os.write(fd, b"\0" * 4096)
                except BlockingIOError:
                    break
            while True:  # the last page may take less than 4096 bytes
                try:
                    added += os.write(fd, b"\0")
                except BlockingIOError:
                    return added
        finally:
            os.close(fd)

    def release(self) -> None:
        with self._lock:
            self._held = False

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Daemon:
    """One daemon process (``python -m services.<module> ...``) in its own process group,
    so that ``kill()`` is a kill -9 of the whole container-like unit (the sync's parser
    pool included) and cleanup never leaves an orphan behind."""

    name: str
    argv: list[str]
    log_path: Path
    metrics_port: int | None = None
    pipe_log: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_pipe: LogPipe | None = None
    starts: int = 0
    wanted: bool = False  # started by the scenario and not yet stopped by it

    def start(self) -> Daemon:
        assert not self.running, f"{self.name} already running"
        self.wanted = True
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            if self.pipe_log:
                self.log_pipe = LogPipe(self.log_path)
                stderr: int = self.log_pipe.write_fd
            else:
                stderr = subprocess.STDOUT
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=env, stdout=log, stderr=stderr,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9, the crash: no signal handler, no final refresh, no revoke."""
        self.wanted = False
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipe()

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; None when it did not exit in time (it is then killed)."""
        self.wanted = False
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        self._signal_group(signal.SIGKILL)  # the parser pool, or a hung daemon
        self.proc.wait(10)
        self._close_pipe()
        return rc

    def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _close_pipe(self) -> None:
        if self.log_pipe is not None:
            self.log_pipe.release()
            self.log_pipe.close()
            self.log_pipe = None

    # -- what an operator asks a daemon --------------------------------------------------

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        assert self.metrics_port is not None, f"{self.name} runs without --metrics-port"
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, urllib.error.URLError) as exc:
            return 0, str(exc).encode()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body); (0, {...}) when nothing answers."""
        code, body = self._get("/healthz")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"raw": body.decode(errors="replace")}
        return code, doc if isinstance(doc, dict) else {"raw": doc}

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled metric, None when absent or unreachable."""
        code, body = self._get("/metrics")
        if code != 200:
            return None
        for line in body.decode(errors="replace").splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{}"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (structlog writes JSON when stderr is not a terminal)."""
        out = []
        for line in self.log_text().splitlines():
            line = line.strip().strip("\0")
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


# -- the revision clock --------------------------------------------------------------------


