"""Run an etcd cluster as local processes: for ``make up`` and for the test fixtures.

Modelled on etcd's e2e harness: real binaries on 127.0.0.1, readiness by polling each
member's ``/health``, and per-member ``kill`` (SIGKILL), ``pause``/``resume``
(SIGSTOP/SIGCONT), ``stop`` and ``restart`` for fault tests.

Secure mode (``tls=Pki(...)``, or ``LocalCluster.secure(tmp)``): the members serve
clients and peers over TLS on the same ports and require certificates of the local CA,
and etcd's auth is turned on with the users and roles of ``roles.py``
(``bootstrap.py``); ``access("heartbeat")`` / ``client_flags("heartbeat")`` give a
program one identity, as a ``Store`` argument or as command-line flags.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from services.core import topology
from services.core.access import EtcdAccess
from services.core.etcdbin import (  # re-exported: where the scripts and tests look
    EtcdChoice,
    binary_version,
    choose_etcd,
    etcd_binary,
    etcd_version,
    report_header,
    version_warning,
)

if TYPE_CHECKING:
    from services.core.pki import Pki

# In a cluster's data directory: it was created in secure mode (``make up SECURE=1``). A
# member keeps the peer URLs it was created with, so a cluster cannot change mode.
SECURE_MARK = "secure-cluster"

__all__ = ["SECURE_MARK", "EtcdChoice", "LocalCluster", "LocalMember", "binary_version",
           "choose_etcd", "etcd_binary", "etcd_version", "free_ports", "report_header",
           "version_warning"]


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
    def url(self) -> str:
        return f"{self.cluster.scheme}://{self.endpoint}"

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
            scheme=self.cluster.scheme,
        )
        if self.cluster.tls is not None:
            flags += topology.tls_flags(*map(str, self.cluster.tls.paths(self.name)))
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
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout,
                                        context=self.cluster.ssl_context()) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


class LocalCluster:
    """``LocalCluster(data_dir)`` uses the topology's fixed ports (``make up``);
    ``LocalCluster.ephemeral(tmp)`` picks free random ports (tests).

    ``extra_flags`` (``{"quota-backend-bytes": "1048576"}``, names without ``--``) go on
    every member's command line, replacing the topology's value of the same flag: for
    tests that need a cluster unlike production (a tiny quota to raise NOSPACE).

    ``tls``: the secure mode (module docstring); the PKI's missing certificates are made
    at ``start``, and auth is turned on once the members are healthy."""

    def __init__(
        self,
        data_dir: Path,
        members: tuple[topology.Member, ...] = topology.MEMBERS,
        extra_flags: Mapping[str, str] | None = None,
        tls: Pki | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.members_spec = members
        self.extra_flags = dict(extra_flags or {})
        self.tls = tls
        self.members = [LocalMember(m, self) for m in members]
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def ephemeral(
        cls, data_dir: Path, size: int = 3, extra_flags: Mapping[str, str] | None = None,
        tls: Pki | None = None,
    ) -> LocalCluster:
        ports = free_ports(2 * size)
        members = tuple(
            topology.Member(f"etcd{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(size)
        )
        return cls(data_dir, members, extra_flags, tls)

    @classmethod
    def secure(cls, data_dir: Path, size: int = 3,
               extra_flags: Mapping[str, str] | None = None) -> LocalCluster:
        """An ephemeral cluster in secure mode, its CA and certificates in
        ``data_dir/pki``: ``LocalCluster.secure(tmp).start()``, then
        ``Store(c.endpoints, access=c.access("gitops-sync"))`` or a program with
        ``c.client_flags("gitops-sync")``."""
        from services.core.pki import Pki

        return cls.ephemeral(data_dir, size, extra_flags, tls=Pki(Path(data_dir) / "pki"))

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def access(self, identity: str = "root") -> EtcdAccess:
        """How ``identity`` connects (plaintext when the cluster is not secure)."""
        if self.tls is None:
            return EtcdAccess()
        return EtcdAccess.from_files(*self.tls.paths(identity))

    def client_flags(self, identity: str = "root") -> list[str]:
        """``identity``'s etcdctl-style flags (``--cacert=...``, ``--cert``, ``--key``),
        for a program's command line or etcdctl's; none when the cluster is not secure."""
        if self.tls is None:
            return []
        ca, cert, key = self.tls.paths(identity)
        return [f"--cacert={ca}", f"--cert={cert}", f"--key={key}"]

    def ssl_context(self, identity: str = "reader") -> ssl.SSLContext | None:
        """For the members' HTTP endpoints (/health, /metrics): None when plaintext."""
        if self.tls is None:
            return None
        if self._ssl is None:
            ca, cert, key = self.tls.paths(identity)
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
            self._ssl = context
        return self._ssl

    def member(self, name: str) -> LocalMember:
        return next(m for m in self.members if m.name == name)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        if self.tls is not None:
            from services.core.roles import IDENTITIES

            self.tls.ensure(members=[m.name for m in self.members_spec], clients=IDENTITIES)
        for m in self.members:
            m.start()
        self.wait_healthy(timeout)
        if self.tls is not None:
            from services.core.bootstrap import enable_auth

            enable_auth(self.endpoints, self.client_flags("root"))
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
                        *self.client_flags("reader"),
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
