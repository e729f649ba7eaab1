"""The registry service as a real subprocess (``python -m services.registry``) on a free
127.0.0.1 port against the session's etcd cluster, for the client and CLI tests.

``RegistryProcess`` starts, stops and restarts it on the same port, and says what it
logged when it does not come up. Fixtures built on it live here too, so the client and
CLI test modules share one definition; the tests at the bottom check the harness itself.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from services.core import keys
from services.core.kv import Delete, Put
from services.core.localcluster import LocalCluster, free_ports
from services.core.store import Store

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_TIMEOUT = 3  # the registry then asks for a heartbeat every second
REMOVAL_TIMEOUT = 6  # whole seconds: the TTL of an etcd lease


class RegistryProcess:
    def __init__(self, endpoints: list[str], log_dir: Path, port: int | None = None, *,
                 heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
                 removal_timeout: int = REMOVAL_TIMEOUT, extra: Sequence[str] = (),
                 cacert: Path | None = None) -> None:
        """``extra``: more flags (``--tokens``, ``--tls-cert`` ...); with TLS flags,
        ``cacert`` is the CA the readiness probe trusts."""
        self.endpoints = endpoints
        self.port = port or free_ports(1)[0]
        self.heartbeat_timeout, self.removal_timeout = heartbeat_timeout, removal_timeout
        self.extra = list(extra)
        self.cacert = cacert
        self.log_path = log_dir / f"registry-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert" in self.extra else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "services.registry", "--host", "127.0.0.1",
                "--port", str(self.port), "--endpoints", ",".join(self.endpoints),
                "--heartbeat-timeout", str(self.heartbeat_timeout),
                "--removal-timeout", str(self.removal_timeout), *self.extra]

    def start(self, timeout: float = 30.0) -> RegistryProcess:
        env = {k: v for k, v in os.environ.items()
               if k not in ("ETCD_ENDPOINTS", "MANIFEST_URL") and not k.startswith("REGISTRY_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(self.cacert))
                                         if self.cacert is not None else True)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the registry exited with {self.proc.returncode}:\n"
                                     f"{self.logs()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1,
                             verify=verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the registry did not answer within {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def restart(self) -> RegistryProcess:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def server(etcd: LocalCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[RegistryProcess]:
    """One registry for a module's tests (they use names of their own, see ``unique``)."""
    process = RegistryProcess(etcd.endpoints, tmp_path_factory.mktemp("registry")).start()
    yield process
    process.stop()


@pytest.fixture
def unique() -> str:
    """A name no other test uses: tests share one registry and one etcd."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def etcd_store(etcd: LocalCluster) -> Iterator[Store]:
    """A store to write capabilities with, WITHOUT the wipe of conftest's ``store``
    (a wipe would delete the instances other tests of the module registered)."""
    s = Store(etcd.endpoints, timeout=3.0)
    yield s
    s.close()


def put_capability(store: Store, namespace: str, version: str | None,
                   dependencies: list[dict[str, str]] | None = None,
                   type_: str = "service") -> None:
    """A capability as the sync writes it (contract section 2), in one transaction."""
    ops = [Put(keys.capability(namespace, keys.TYPE), type_.encode()),
           Put(keys.capability(namespace, keys.DEPENDENCIES),
               json.dumps(dependencies or []).encode()),
           Put(keys.capability(namespace, keys.METADATA),
               json.dumps({"dc_identifier": namespace, "dc_title": namespace,
                           "type": type_}).encode())]
    if version is not None:
        ops.append(Put(keys.capability(namespace, keys.VERSION), version.encode()))
    store.txn([], ops)


def delete_capability(store: Store, namespace: str) -> None:
    store.txn([], [Delete(keys.capability(namespace, k))
                   for k in (keys.TYPE, keys.VERSION, keys.DEPENDENCIES, keys.METADATA)])


def test_the_harness_starts_a_registry_that_answers_health(server):
    answer = httpx.get(server.url + "/v1/health", timeout=5)
    assert answer.status_code == 200
    assert answer.json()["status"] in ("healthy", "degraded")
    assert int(answer.headers["X-Registry-Index"]) > 0
