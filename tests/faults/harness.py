"""The fault matrix's harness: a fresh cluster, the daemons as real processes, and the
after-the-fact replay of etcd's revision history that every scenario is judged by.

Why replay: a live ``etcdctl watch`` (or any watch) dies with the quorum and reconnects
from "now", so it undercounts exactly the deletions a fault causes. etcd keeps every
revision until compaction, so a watch opened *after* the fault from the revision read
*before* it delivers the complete history, in order, however the cluster behaved
meanwhile. ``replay`` does that; ``History`` turns it into what an operator checks:
capability keys lost, health keys expired, and how long until things were right again.

Nothing here mocks etcd or the daemons: members are local etcd processes on free ports
(``LocalCluster.ephemeral``), daemons are ``python -m services...`` subprocesses in their
own process groups, talking to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core import keys
from services.core.errors import NoSpace, StoreError
from services.core.kv import KeyValue, Put
from services.core.localcluster import LocalCluster, etcd_binary, free_ports
from services.core.store import Store
from tests.faults.history import History, RevisionClock, replay
from tests.faults.processes import Daemon
from tests.manifests import manifest

MARKS = "/chora/faults/mark"  # the harness's own key: a revision known to carry an event

SERVICE_BLOCK = (
    "chora_service:\n"
    "  interfaces: [cli, rest]\n"
    "  health:\n"
    "    endpoint: /health\n"
    "    interval: 10\n"
    "    timeout: 5\n"
    "    heartbeat_ttl: 30\n"
)



def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``condition`` until truthy; return the seconds it took. A condition that
    raises (a read racing a member restart) counts as not yet. A daemon that exited
    unbidden fails the wait at once, with its log, instead of after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    last: object = None
    while True:
        try:
            last = condition()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return time.monotonic() - start
        for rig in list(_ACTIVE):
            rig.check_daemons()  # a daemon that died fails at once, with its log
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")
        time.sleep(interval)


# -- daemons as processes ------------------------------------------------------------------



# -- judging a scenario ---------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table. None: not measured, or not applicable."""

    scenario: str = ""
    keys_lost: int | None = None
    expiries: int | None = None
    recovery_s: float | None = None
    note: str = ""


_ACTIVE: weakref.WeakSet[Rig] = weakref.WeakSet()  # rigs whose daemons wait_until watches


# -- the rig -------------------------------------------------------------------------------


@dataclass(eq=False)
class Rig:
    """One scenario's world: a fresh cluster, a capabilities directory, the daemons, an
    observer client, and what the directory says etcd should hold; a revision clock for
    the scenarios that time what they replay (``start_clock``: it writes 10 times a
    second, which the others need not pay for)."""

    cluster: LocalCluster
    tmp: Path
    caps: Path = field(init=False)
    store: Store = field(init=False)
    clock: RevisionClock | None = None
    daemons: list[Daemon] = field(default_factory=list)
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)  # ns → (type, version)

    def __post_init__(self) -> None:
        self.caps = self.tmp / "capabilities"
        self.caps.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.cluster.endpoints, timeout=2.0)
        _ACTIVE.add(self)

    def check_daemons(self) -> None:
        for d in self.daemons:
            if d.wanted and d.proc is not None and d.proc.poll() is not None:
                d.wanted = False
                raise AssertionError(f"{d.name} exited with {d.proc.returncode}:\n"
                                     f"{d.log_text()[-2000:]}")

    def close(self) -> None:
        _ACTIVE.discard(self)
        for d in self.daemons:
            d.resume()
            d.terminate(timeout=10)
        if self.clock is not None:
            self.clock.close()
        self.store.close()

    def start_clock(self) -> RevisionClock:
        self.clock = RevisionClock(self.cluster.endpoints)
        return self.clock

    @property
    def endpoints(self) -> str:
        return ",".join(self.cluster.endpoints)

    # -- daemons ---------------------------------------------------------------------------

    def sync(
        self,
        *extra: str,
        reconcile_interval: float = 60.0,
        etcd_timeout: float = 3.0,
        log_level: str = "info",
        pipe_log: bool = False,
        start: bool = True,
    ) -> Daemon:
        """The sync as production runs it (reconcile every 60 s, 3 s deadline) unless the
        scenario says otherwise."""
        port = free_ports(1)[0]
        argv = [sys.executable, "-m", "services.gitops_sync", "--capabilities", str(self.caps),
                "--endpoints", self.endpoints, "--reconcile-interval", str(reconcile_interval),
                "--etcd-timeout", str(etcd_timeout), "--metrics-port", str(port),
                "--log-level", log_level, *extra]
        d = Daemon(f"sync{len(self.daemons)}", argv, self.tmp / f"sync{len(self.daemons)}.log",
                   port, pipe_log=pipe_log)
        self.daemons.append(d)
        return d.start() if start else d

    def heartbeat(
        self, *extra: str, ttl: int = 10, interval: float = 3.0, timeout: float = 3.0,
        start: bool = True,
    ) -> Daemon:
        """The heartbeat learning its services from etcd, as compose and `make up` run it.
        Default 10 s TTL / 3 s beat: production's ratio (TTL >= 3 x interval), shorter."""
        port = free_ports(1)[0]
        argv = [sys.executable, "-m", "services.heartbeat", "--endpoints", self.endpoints,
                "--ttl", str(ttl), "--interval", str(interval), "--timeout", str(timeout),
                "--metrics-port", str(port), "--metrics-host", "127.0.0.1", *extra]
        n = len(self.daemons)
        d = Daemon(f"heartbeat{n}", argv, self.tmp / f"heartbeat{n}.log", port)
        self.daemons.append(d)
        return d.start() if start else d

    def logs_tail(self, chars: int = 4000) -> str:
        parts = []
        for d in self.daemons:
            parts.append(f"--- {d.name} ({d.log_path}) ---\n{d.log_text()[-chars:]}")
        return "\n".join(parts)

    # -- manifests -------------------------------------------------------------------------

    def path_of(self, ns: str) -> Path:
        return self.caps / f"{ns}.yaml"

    def write(self, ns: str, *, version: str = "1.0.0", service: bool = True) -> None:
        """Write a manifest atomically (as git does on checkout) and expect it in etcd."""
        text = manifest(ns, type="Service" if service else "Pattern", version=version,
                        extra=SERVICE_BLOCK if service else "")
        path = self.path_of(ns)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        self.expected[ns] = ("service" if service else "pattern", version)

    def remove(self, ns: str) -> None:
        self.path_of(ns).unlink()
        self.expected.pop(ns, None)

    def populate(self, services: int, patterns: int, prefix: str = "fault") -> list[str]:
        names = [f"{prefix}.svc{i:04d}" for i in range(services)]
        names += [f"{prefix}.pat{i:04d}" for i in range(patterns)]
        for i, ns in enumerate(names):
            self.write(ns, service=i < services)
        return names

    @property
    def services(self) -> list[str]:
        return sorted(ns for ns, (t, _) in self.expected.items() if t == "service")

    # -- what etcd holds -------------------------------------------------------------------

    def mismatches(self, limit: int = 5) -> list[str]:
        """Where etcd differs from the directory (empty: converged)."""
        kvs, _ = self.store.get_prefix(keys.CAPABILITIES)
        owned, _ = self.store.get_prefix(keys.SYNC_OWNED, keys_only=True)
        out = []
        for ns, (type_, version) in self.expected.items():
            got = {n: kvs.get(keys.capability(ns, n)) for n in keys.SYNC_KEYS}
            missing = [n for n, kv in got.items() if kv is None]
            if missing:
                out.append(f"{ns}: missing {missing}")
            elif got[keys.TYPE].value.decode() != type_:  # type: ignore[union-attr]
                out.append(f"{ns}: type {got[keys.TYPE].value!r}")  # type: ignore[union-attr]
            elif got[keys.VERSION].value.decode() != version:  # type: ignore[union-attr]
                out.append(f"{ns}: version {got[keys.VERSION].value!r} != {version}")  # type: ignore[union-attr]
            elif keys.owned(ns) not in owned:
                out.append(f"{ns}: no inventory entry")
            if len(out) >= limit:
                return out
        present = {s[0] for k in kvs if (s := keys.split(k)) and s[1] == keys.TYPE}
        out += [f"{ns}: still present" for ns in sorted(present - set(self.expected))][:limit]
        return out

    def converged(self) -> bool:
        return not self.mismatches(limit=1)

    def wait_converged(self, timeout: float, what: str = "etcd matching the directory") -> float:
        return wait_until(self.converged, timeout, f"{what} ({self._mismatch_hint()})", 0.2)

    def _mismatch_hint(self) -> str:
        try:
            return "; ".join(self.mismatches()) or "converged"
        except StoreError as exc:
            return f"unreadable: {exc}"

    def health(self) -> dict[str, KeyValue]:
        kvs, _ = self.store.get_prefix(keys.CAPABILITIES)
        return {s[0]: kv for k, kv in kvs.items()
                if (s := keys.split(k)) and s[1] == keys.HEALTH}

    def counts(self) -> dict[str, int]:
        return {ns: json.loads(kv.value)["heartbeat_count"] for ns, kv in self.health().items()}

    def wait_beating(self, timeout: float, beyond: dict[str, int] | None = None) -> float:
        """Every expected service has a health key (with a count above ``beyond``)."""
        beyond = beyond or {}

        def ok() -> bool:
            counts = self.counts()
            return all(counts.get(ns, -1) > beyond.get(ns, 0) for ns in self.services)

        return wait_until(ok, timeout, f"every service beating beyond {beyond or 'nothing'}")

    def status(self) -> dict[str, Any]:
        kv = self.store.get(keys.SYNC_STATUS)
        return json.loads(kv.value) if kv else {}

    # -- history ---------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, bytes], int]:
        """Everything under /chora/ at one revision: the baseline a replay starts from."""
        kvs, rev = self.store.get_prefix("/chora/")
        return {k: kv.value for k, kv in kvs.items()}, rev

    def mark(self) -> int:
        """Write the harness's marker key and return its revision: a replay's end that is
        certain to carry an event."""
        _, rev = self.store.txn([], [Put(MARKS, str(time.time()).encode())])
        return rev

    def history(self, baseline: dict[str, bytes], start: int, timeout: float = 60.0) -> History:
        end = self.mark()
        changes = replay(self.store, "/chora/", start + 1, end, timeout)
        return History(start, end, baseline, changes)

    # -- etcd operations an operator does ------------------------------------------------

    def etcdctl(self, *args: str, endpoints: str | None = None, timeout: float = 60.0) -> str:
        out = subprocess.run(
            [etcd_binary("etcdctl"), f"--endpoints={endpoints or self.endpoints}",
             "--command-timeout=30s", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        if out.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout


def judge(
    rig: Rig,
    row: Row,
    baseline: dict[str, bytes],
    start: int,
    *,
    kept: Iterable[str],
    live: Iterable[str] | None,
    earlier: History | None = None,
) -> History:
    """Replay from ``start`` to now and fill the row: sync-owned keys of ``kept``
    capabilities (their manifest existed throughout) lost, and health keys of ``live``
    services (None: no heartbeat in this scenario) deleted. ``earlier``: the history
    replayed before a compaction, which this one continues."""
    if earlier is None:
        history = rig.history(baseline, start)
    else:
        history = earlier.then(rig.history(earlier.final(), earlier.end))
    row.keys_lost = len(history.capability_keys_lost(kept))
    row.expiries = None if live is None else len(history.health_expiries(live))
    return history


QUOTA = 8 * 1024 * 1024  # tiny on purpose: filled in a few seconds


def fill_until_nospace(rig: Rig) -> int:
    """Write 1 MiB values under ``junk/`` (outside "/", so replays skip them) until etcd
    raises its NOSPACE alarm; bounded in count. Returns the MiB written. The harness's
    marker key is written first: ``clear_nospace`` ends the history with its deletion."""
    rig.mark()
    blob = os.urandom(1024 * 1024)
    for i in range(4 * QUOTA // len(blob)):
        try:
            rig.store.txn([], [Put(f"junk/{i}", blob)])
        except NoSpace:
            return i
    raise AssertionError(f"no NOSPACE after {4 * QUOTA >> 20} MiB against a {QUOTA} byte quota")


def clear_nospace(rig: Rig, baseline: dict[str, bytes], start: int) -> History:
    """What an operator does (README): delete the junk, compact, defragment; the disarm is
    left to the caller, whose clock starts there. Compaction erases the history the
    scenario is judged by, so it is replayed first, up to the deletion of the marker
    (a DeleteRange, like the junk's: etcd accepts those over quota, not a Txn or Put),
    and compacted at exactly that revision: the replay after it continues seamlessly."""
    rig.etcdctl("del", "junk/", "--prefix")
    out = json.loads(rig.etcdctl("del", MARKS, "-w", "json"))
    end = int(out["header"]["revision"])
    history = History(start, end, baseline, replay(rig.store, "/chora/", start + 1, end))
    rig.etcdctl("compact", str(end), "--physical")
    rig.etcdctl("defrag")
    return history


def error_files(rig: Rig) -> set[str]:
    return {os.path.basename(e["file"]) for e in rig.status().get("errors", [])}


def poll_every(period: float, duration: float) -> Iterator[float]:
    """Yield the elapsed time every ``period`` seconds for ``duration`` seconds: the pace
    of a fault (move the leader every 4 s for a minute), not a synchronisation."""
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < duration:
        yield elapsed
        n += 1
        time.sleep(max(0.0, start + n * period - time.monotonic()))

