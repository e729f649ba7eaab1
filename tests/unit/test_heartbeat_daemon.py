"""The daemon's wiring and its shutdown, against an in-memory store: ``stop`` only asks,
``run`` returns 0 once every step of the shutdown is done, in order, each bounded."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator

from services.core import keys
from services.core.kv import Delete, KeyValue, Op, Unchanged
from services.heartbeat.daemon import Daemon
from services.heartbeat.settings import Settings
from tests.conftest import wait_for


class Watch:
    """A watch that delivers nothing until cancelled (discovery's resync is far off)."""

    def __init__(self, calls: list[str]) -> None:
        self._calls = calls
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        if not self._cancelled.is_set():
            self._calls.append("watch cancelled")
        self._cancelled.set()

    def __iter__(self) -> Iterator[list[object]]:
        self._cancelled.wait()
        return iter(())


class Etcd:
    """Just enough etcd for a daemon: capability keys to discover, leases, txns, and an
    election nobody else runs in; every call is recorded, in order, for the shutdown's
    sequence (the session's lease revoked at the end is recorded as "resign")."""

    def __init__(self, services: Iterable[str]) -> None:
        self.kv: dict[str, tuple[bytes, int]] = {
            keys.capability(ns, keys.TYPE): (b"service", 0) for ns in services}
        self.calls: list[str] = []
        self.closed = False
        self._lease = 100
        self._lock = threading.Lock()
        self._election_leases: set[int] = set()
        self.fence = None
        self.timeout = 1.0

    def fence_with(self, fence) -> None:  # type: ignore[no-untyped-def]
        self.fence = fence

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            value = self.kv.get(key)
            return None if value is None else KeyValue(key, value[0], 1, 1, value[1])

    def holds(self, guards: Iterable[Unchanged]) -> bool:
        return all(self.get(g.key) is not None for g in guards)

    def get_prefix(self, prefix: str) -> tuple[dict[str, KeyValue], int]:
        with self._lock:
            return {k: KeyValue(k, v, 1, 1, lease) for k, (v, lease) in self.kv.items()
                    if k.startswith(prefix)}, 1

    def watch_prefix(self, prefix: str, start_revision: int) -> Watch:
        return Watch(self.calls)

    def grant(self, ttl: int) -> int:
        with self._lock:
            self._lease += 1
            return self._lease

    def refresh_leases(self, lease_ids: Iterable[int]) -> dict[int, int]:
        self.calls.append("refresh")
        return {lease: 30 for lease in lease_ids}

    def revoke(self, lease_id: int) -> None:
        self.calls.append("resign" if lease_id in self._election_leases else "revoke")

    def txn(self, guards: Iterable[Unchanged], ops: Iterable[Op], *,
            fenced: bool = True) -> tuple[bool, int]:
        election = False
        with self._lock:
            for op in ops:
                election = election or op.key.startswith(keys.ELECTION)
                if isinstance(op, Delete):
                    self.kv.pop(op.key, None)
                    continue
                self.kv[op.key] = (op.value, op.lease)
                if op.key.startswith(keys.ELECTION):
                    self._election_leases.add(op.lease)
        self.calls.append("election" if election else "txn")
        return True, 2

    def revision(self) -> int:
        return 2

    def close(self) -> None:
        self.closed = True

    def count(self, ns: str) -> int:
        value = self.kv.get(keys.capability(ns, keys.HEALTH))
        return 0 if value is None else json.loads(value[0])["heartbeat_count"]


def start(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), name="daemon")
    thread.start()
    return thread, codes


def settings(**overrides: object) -> Settings:
    return Settings(("127.0.0.1:1",), **{"ttl": 3, "interval": 1.0, "etcd_timeout": 1.0,
                                         "metrics_port": 0, "metrics_host": "127.0.0.1",
                                         **overrides})


def test_the_daemon_serves_healthz_beats_and_stops_in_order_within_its_bounds():
    etcd = Etcd(["team.a", "team.b"])
    daemon = Daemon(settings(), store=etcd)  # type: ignore[arg-type]
    thread, codes = start(daemon)
    try:
        wait_for(lambda: etcd.count("team.a") >= 2 and etcd.count("team.b") >= 2, 10,
                 what="both services beating")
        url = f"http://127.0.0.1:{daemon.httpd.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and json.loads(resp.read())["services"] == 2
        assert "heartbeat_beats_written_total" in urllib.request.urlopen(
            url.replace("healthz", "metrics"), timeout=5).read().decode()
    finally:
        stopped = time.monotonic()
        daemon.stop()
        thread.join(10)
    assert not thread.is_alive() and codes == [0]
    assert time.monotonic() - stopped < daemon.settings.shutdown_timeout + 1
    # discovery first (no new set while leaving), then the last refresh, then the counts
    tail = etcd.calls[etcd.calls.index("watch cancelled"):]
    assert tail[:3] == ["watch cancelled", "refresh", "txn"]
    assert "revoke" not in etcd.calls, "leases are left for a successor"
    assert not etcd.closed, "a store passed in belongs to the caller"
    try:
        urllib.request.urlopen(url, timeout=1)
        raise AssertionError("/healthz still served after the daemon stopped")
    except (urllib.error.URLError, ConnectionError):
        pass


def test_revoke_on_exit_revokes_every_lease_instead_of_refreshing_it():
    etcd = Etcd(["team.a", "team.b"])
    daemon = Daemon(settings(revoke_on_exit=True, metrics_port=None), store=etcd)  # type: ignore[arg-type]
    thread, codes = start(daemon)
    wait_for(lambda: etcd.count("team.a") >= 1 and etcd.count("team.b") >= 1, 10,
             what="both services beating")
    daemon.stop()
    thread.join(10)
    assert codes == [0]
    tail = etcd.calls[etcd.calls.index("watch cancelled"):]
    assert tail.count("revoke") == 2 and "refresh" not in tail
