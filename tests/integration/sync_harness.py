"""A sync daemon running in a thread, and helpers to read what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from services.core import keys
from services.core.store import Store
from services.gitops_sync.plan import Policy
from services.gitops_sync.reconciling import Reconciler
from services.gitops_sync.running import Health, run


class SyncDaemon:
    def __init__(
        self,
        root: Path,
        endpoints: list[str],
        *,
        interval: float = 3600.0,
        policy: Policy = Policy(),  # noqa: B008
    ) -> None:
        self.store = Store(endpoints, timeout=1.0)
        self.reconciler = Reconciler(root, self.store, policy=policy)
        self.health = Health()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=run,
            args=(self.reconciler, self.stop_event),
            kwargs={"interval": interval, "debounce": 0.05, "health": self.health},
            daemon=True,
        )

    def start(self) -> SyncDaemon:
        self.thread.start()
        return self

    @property
    def synced_once(self) -> bool:
        return self.health.last_success > 0

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "sync loop did not stop"
        self.reconciler.close()
        self.store.close()


def value(store: Store, namespace: str, name: str) -> str | None:
    kv = store.get(keys.capability(namespace, name))
    return kv.value.decode() if kv else None


def namespaces(store: Store) -> set[str]:
    kvs, _ = store.get_prefix(keys.CAPABILITIES, keys_only=True)
    return {split[0] for k in kvs if (split := keys.split(k)) and split[1] == keys.TYPE}


def status(store: Store) -> dict:
    kv = store.get(keys.SYNC_STATUS)
    return json.loads(kv.value) if kv else {}


def errors_by_file(store: Store) -> dict[str, str]:
    return {Path(e["file"]).name: e["reason"] for e in status(store).get("errors", [])}


def run_once(root: Path, endpoints: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.gitops_sync",
            "--capabilities",
            str(root),
            "--endpoints",
            ",".join(endpoints),
            "--etcd-timeout",
            "1",
            "--once",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
