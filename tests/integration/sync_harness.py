"""A sync daemon running in a thread, and helpers to read what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from services.core import keys
from services.core.store import Store
from services.gitops_sync.daemon import Daemon
from services.gitops_sync.plan import Policy
from services.gitops_sync.settings import Settings


class SyncDaemon:
    """The real daemon (``Daemon.run``) in a thread of the test process."""

    def __init__(
        self,
        root: Path,
        endpoints: list[str],
        *,
        interval: float = 3600.0,
        policy: Policy = Policy(),  # noqa: B008
    ) -> None:
        settings = Settings(
            endpoints=tuple(endpoints), capabilities=root, etcd_timeout=1.0,
            reconcile_interval=interval, max_prune_ratio=policy.max_prune_ratio,
            allow_mass_prune=policy.allow_mass_prune, prune_window=policy.prune_window,
        )
        self.daemon = Daemon(settings)
        self.store, self.reconciler = self.daemon.store, self.daemon.reconciler
        self.liveness, self.metrics = self.daemon.liveness, self.daemon.metrics
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def start(self) -> SyncDaemon:
        self.thread.start()
        return self

    @property
    def synced_once(self) -> bool:
        return self.liveness.last_success > 0

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "sync loop did not stop"


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
