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
from tests.faults.history import replay


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
        self.check = self.daemon.check  # what /healthz answers
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def start(self) -> SyncDaemon:
        self.thread.start()
        return self

    def etcd_failures(self) -> int:
        """Attempts that could not reach etcd: the loop's while it led, the election's
        after it stepped down (a leader without etcd for its TTL stands by)."""
        leadership = self.daemon.leadership
        return (int(self.metrics.etcd_failures._value.get())
                + (leadership.failures if leadership else 0))

    @property
    def synced_once(self) -> bool:
        return self.liveness.last_success > 0

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "sync loop did not stop"


def written_since(store: Store, revision: int) -> set[str]:
    """Keys written (put or deleted) after ``revision``, from etcd's history, the
    election's aside: a daemon's start puts its candidate key and its stop deletes it,
    which is what "a restart writes nothing" leaves out."""
    now = store.revision()
    if now == revision:
        return set()
    changes = replay(store, "/chora/", revision + 1, now, timeout=10)
    return {k for k in changes if not k.startswith(keys.ELECTION)}


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
