"""The whole stack the dashboard shows, started for the browser tests: a fresh 3-member
cluster, the sync and heartbeat daemons as subprocesses (as compose runs them) over a
capabilities directory the tests may write to, and the registry in a thread with short
timeouts so that ``unhealthy`` and removal happen within seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.core import keys
from services.core.localcluster import LocalCluster
from services.core.store import Store
from tests.conftest import wait_for
from tests.integration.daemon_processes import (
    CAPABILITIES,
    heartbeat_command,
    logs,
    running,
    sync_command,
)
from tests.integration.registry_server import serving

HEARTBEAT_TIMEOUT = 2.0
REMOVAL_TIMEOUT = 4
RECONCILE_INTERVAL = "1"


@dataclass
class Stack:
    url: str
    capabilities: Path
    http: httpx.Client
    cluster: LocalCluster
    store: Store
    scratch: Path
    log_dir: Path

    def write_manifest(self, file: str, text: str) -> Path:
        """Write the file whole (rename into place): the sync must never read half of
        it, which would add a transient error the sync-page assertions would see."""
        staged = self.scratch / file
        staged.write_text(text)
        target = self.capabilities / file
        os.replace(staged, target)
        return target

    def remove_manifest(self, file: str) -> None:
        (self.capabilities / file).unlink(missing_ok=True)

    def capability_present(self, namespace: str) -> bool:
        return self.http.get(f"/v1/capabilities/{namespace}").status_code == 200

    def sync_errors(self) -> list[dict[str, object]]:
        """The errors as the sync wrote them to etcd: the truth the page must match,
        read without going through the routes under test."""
        kv = self.store.get(keys.SYNC_STATUS)
        return json.loads(kv.value)["errors"] if kv is not None else []

    def register(self, name: str, **fields: object) -> str:
        body = {"name": name, "version": "1.0.0",
                "interfaces": {"REST": "http://127.0.0.1:9000"}, **fields}
        r = self.http.post("/v1/services", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def deregister(self, name: str, instance_id: str) -> None:
        self.http.delete(f"/v1/services/{name}/{instance_id}")

    def logs(self) -> str:
        return logs(self.log_dir)


def manifest_like(template: str, namespace: str, *, requires: str = "") -> str:
    """A valid manifest in the shape of ``capabilities/<template>``, renamed to
    ``namespace``; ``requires`` (YAML list items) replaces its relations when given."""
    source = (CAPABILITIES / template).read_text()
    old = next(line.split(":", 1)[1].strip() for line in source.splitlines()
               if line.strip().startswith("dc_identifier:"))
    text = source.replace(old, namespace)
    if requires:
        text = text.split("dc_relation:")[0] + "dc_relation:\n  requires:\n" + requires
    return text


@contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    """Everything up and the eight real manifests projected before the first test."""
    capabilities = root / "capabilities"
    shutil.copytree(CAPABILITIES, capabilities)
    # A git checkout, as in production: the pages show the commit the sync applied.
    git = ["git", "-C", str(capabilities), "-c", "user.name=chora", "-c",
           "user.email=chora@127.0.0.1"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "capabilities"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=30)
    scratch = root / "scratch"
    scratch.mkdir()
    log_dir = root / "logs"
    log_dir.mkdir()
    cluster = LocalCluster.ephemeral(root / "etcd").start()
    try:
        endpoints = cluster.endpoints
        sync = sync_command(endpoints, capabilities)
        sync[sync.index("--reconcile-interval") + 1] = RECONCILE_INTERVAL
        with running(sync, heartbeat_command(endpoints), log_dir=log_dir), \
                Store(endpoints, timeout=3.0) as store, \
                serving(endpoints, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        removal_timeout=REMOVAL_TIMEOUT, cluster_check=0.5) as registry:
            stack = Stack(registry.url, capabilities, registry.http, cluster, store, scratch,
                          log_dir)
            expected = len(list(CAPABILITIES.glob("*.y*ml")))
            wait_for(lambda: len(registry.http.get("/v1/capabilities").json()) >= expected,
                     timeout=30, what=f"the sync projecting {expected} manifests:\n"
                                      f"{stack.logs()}")
            yield stack
    finally:
        cluster.destroy()


class Keepalive:
    """Heartbeats for the given instances every half second from a thread, for as long
    as a test needs them ``up`` (the registry's timeout here is 2 s). The period paces
    the heartbeats; nothing waits on it."""

    def __init__(self, stack: Stack, instances: list[tuple[str, str]]) -> None:
        self._stack = stack
        self._instances = instances
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="keepalive")

    def __enter__(self) -> Keepalive:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        with httpx.Client(base_url=self._stack.url, timeout=2) as http:
            while not self._stop.wait(0.5):
                for name, instance_id in self._instances:
                    try:
                        http.put(f"/v1/services/{name}/{instance_id}/heartbeat")
                    except httpx.HTTPError:
                        continue  # the next beat retries; the test's deadline decides
