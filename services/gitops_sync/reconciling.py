"""One reconcile: read the directory, read etcd, plan, apply, report.

The only part of the sync that talks to etcd. Correctness never depends on events: a
full reconcile compares every file with what etcd holds now (not with a cache), so a
restart, a missed event or a lost connection heals on the next one.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from chora_manifests import ManifestError
from services.core import keys, logs
from services.core.kv import MAX_REQUEST_BYTES, MAX_TXN_OPS, Delete, Put, Unchanged
from services.core.scanning import Index, Resolved
from services.core.store import Store
from services.gitops_sync.metrics import Metrics
from services.gitops_sync.plan import (
    Actual,
    Change,
    Plan,
    Policy,
    PruneWindow,
    make_plan,
    unowned_namespaces,
)
from services.gitops_sync.projection import project

log = logs.get("gitops_sync")

# A partial reconcile reads each namespace in scope with its own range; past this many,
# one full read is cheaper.
PARTIAL_LIMIT = 64
CONFLICT_RETRIES = 3
DETAILED_LOG_LIMIT = 20


@dataclass
class Outcome:
    kind: str
    plan: Plan
    errors: list[ManifestError]
    applied: int = 0
    conflicts: set[str] = field(default_factory=set)
    seconds: float = 0.0


def _size(op: Put | Delete) -> int:
    """Upper bound of an operation's encoded size, without encoding it twice."""
    return len(op.key) + (len(op.value) if isinstance(op, Put) else 0) + 24


def batches(changes: Iterable[Change]) -> list[list[Change]]:
    """Whole capabilities packed into transactions within etcd's op and size limits."""
    out: list[list[Change]] = []
    current: list[Change] = []
    ops = size = 0
    for change in changes:
        c_ops = len(change.ops)
        c_size = sum(_size(op) for op in change.ops) + 32 * len(change.guards)
        if current and (ops + c_ops > MAX_TXN_OPS or size + c_size > MAX_REQUEST_BYTES):
            out.append(current)
            current, ops, size = [], 0, 0
        current.append(change)
        ops += c_ops
        size += c_size
    if current:
        out.append(current)
    return out


class Reconciler:
    def __init__(
        self,
        root: Path,
        store: Store,
        *,
        policy: Policy = Policy(),  # noqa: B008 - frozen
        metrics: Metrics | None = None,
        workers: int = 8,
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.index = Index(self.root, derive=project)
        self.source: dict[str, object] = {"commit": None, "dirty": None}
        self.owned_total = 0
        self.prunes = PruneWindow(policy.prune_window)
        self.held: dict[str, str] = {}  # namespace → why its prune was refused
        self.unowned: set[str] = set()  # capabilities in etcd without an inventory entry
        self.revision = 0  # of the last full read: where a watch of etcd may start
        self.own_writes = OwnWrites()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sync-txn")
        self._reported: dict[str, str] = {}  # file → reason already logged
        self._detailed = True

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- entry points --------------------------------------------------------------------

    def full(self, *, dry_run: bool = False) -> Outcome:
        """Everything in the directory against everything we own in etcd."""
        start = time.monotonic()
        self.index.scan()
        resolved = self.index.resolve()
        # Two git subprocesses: once per full reconcile, not on every file event.
        self.source = source_revision(self.root)
        actual, present, self.revision = self._read_all()
        owned = actual.owned_namespaces()
        self.owned_total = len(owned)
        self.prunes.note_total(start, self.owned_total)
        self._note_unowned(unowned_namespaces(present, owned, resolved.desired))
        plan = make_plan(
            resolved.desired,
            actual,
            keep=resolved.keep,
            broken_sources=resolved.broken_sources,
            owned_total=self.prunes.baseline(start, self.owned_total),
            recently_pruned=self.prunes.pruned(start),
            policy=self.policy,
        )
        if not dry_run:
            self.held = {}
        return self._finish("full", plan, resolved, start, dry_run=dry_run)

    def partial(self, names: Iterable[str], drifted: Iterable[str] = ()) -> Outcome:
        """Only the files named (by events) and the namespaces they held or hold now,
        plus ``drifted``: namespaces whose keys a watch saw changed by someone else."""
        start = time.monotonic()
        names, drifted = set(names), set(drifted)
        before = self.index.refresh(names)
        by_files = {ns for ns in before.values() if ns} | self.index.namespaces_of(names)
        scope = by_files | drifted
        if len(scope) > PARTIAL_LIMIT:
            return self.full()
        resolved = self.index.resolve()
        actual, present = self._read_namespaces(scope)
        owned = actual.owned_namespaces()
        found = unowned_namespaces(present, owned, resolved.desired)
        self._note_unowned((self.unowned - scope) | found)
        plan = make_plan(
            resolved.desired,
            actual,
            scope=scope,
            keep=resolved.keep,
            broken_sources=resolved.broken_sources,
            owned_total=self.prunes.baseline(start, self.owned_total),
            recently_pruned=self.prunes.pruned(start),
            policy=self.policy,
        )
        for ns in scope:
            self.held.pop(ns, None)
        for change in plan.changes:
            if change.namespace in drifted - by_files:
                self.metrics.drift_repairs.inc()
                log.warning(
                    "capability keys changed outside the sync; repairing",
                    change=change.describe(),
                )
        return self._finish("partial", plan, resolved, start)

    # -- reading -------------------------------------------------------------------------

    def _read_all(self) -> tuple[Actual, set[str], int]:
        """What we own, the namespaces holding sync keys, and the revision read at."""
        caps, revision = self.store.get_prefix(keys.CAPABILITIES)
        owned, _ = self.store.get_prefix(keys.SYNC_OWNED)
        return Actual.from_kvs([*caps.values(), *owned.values()]), _present(caps), revision

    def _read_namespaces(self, namespaces: Iterable[str]) -> tuple[Actual, set[str]]:
        kvs = []
        present: set[str] = set()
        for ns in namespaces:
            found, _ = self.store.get_prefix(keys.capability(ns, ""))
            kvs += found.values()
            present |= _present(found)
            if (kv := self.store.get(keys.owned(ns))) is not None:
                kvs.append(kv)
        return Actual.from_kvs(kvs), present

    # -- applying ------------------------------------------------------------------------

    def _finish(
        self, kind: str, plan: Plan, resolved: Resolved, start: float, *, dry_run: bool = False
    ) -> Outcome:
        outcome = Outcome(kind, plan, resolved.errors)
        self._report_errors(resolved.errors)
        if plan.refusal:
            self.metrics.prunes_refused.inc()
            log.error("prune refused", reason=plan.refusal, kept=list(plan.refused_prunes)[:20],
                      count=len(plan.refused_prunes))
            if not dry_run:
                self.held.update(dict.fromkeys(plan.refused_prunes, plan.refusal))
        if dry_run:
            outcome.seconds = time.monotonic() - start
            return outcome
        self._detailed = len(plan.changes) <= DETAILED_LOG_LIMIT
        outcome.applied, outcome.conflicts = self._apply(plan.changes)
        for attempt in range(CONFLICT_RETRIES):
            if not outcome.conflicts:
                break
            # Someone else wrote these keys since we read them: re-read and re-plan.
            log.warning(
                "write conflict, re-planning",
                namespaces=sorted(outcome.conflicts)[:20],
                attempt=attempt + 1,
            )
            actual, _ = self._read_namespaces(outcome.conflicts)
            retry = make_plan(
                resolved.desired,
                actual,
                scope=outcome.conflicts,
                keep=resolved.keep,
                broken_sources=resolved.broken_sources,
                owned_total=self.owned_total,
                policy=self.policy,
            )
            applied, outcome.conflicts = self._apply(retry.changes)
            outcome.applied += applied
        pruned = {c.namespace for c in plan.changes if c.kind == "prune"} - outcome.conflicts
        self.prunes.note_pruned(start, len(pruned))
        self._write_status(resolved)
        outcome.seconds = time.monotonic() - start
        self._record(outcome, resolved)
        return outcome

    def _apply(self, changes: Iterable[Change]) -> tuple[int, set[str]]:
        """Send the changes, many capabilities per transaction and transactions in
        parallel; a batch whose guards fail is retried one capability at a time so one
        conflict does not hold back the rest."""
        groups = batches(changes)
        if not groups:
            return 0, set()
        results = list(self._pool.map(self._send_batch, groups))
        applied = sum(r[0] for r in results)
        conflicts = set().union(*(r[1] for r in results))
        return applied, conflicts

    def _send_batch(self, batch: list[Change]) -> tuple[int, set[str]]:
        ok, revision = self.store.txn(
            [g for c in batch for g in c.guards], [op for c in batch for op in c.ops]
        )
        if ok:
            self.own_writes.add(revision)
            self.metrics.txns.labels("ok").inc()
            self._log_changes(batch)
            return len(batch), set()
        self.metrics.txns.labels("conflict").inc()
        if len(batch) == 1:
            return 0, {batch[0].namespace}
        applied, conflicts = 0, set()
        for change in batch:
            n, c = self._send_batch([change])
            applied += n
            conflicts |= c
        return applied, conflicts

    def _log_changes(self, batch: list[Change]) -> None:
        for change in batch:
            self.metrics.changes.labels(change.kind).inc()
        # One line per capability for everyday edits; a 10,000-manifest first sync is
        # summed up by "reconcile finished" instead of flooding the log.
        if self._detailed:
            for change in batch:
                log.info("capability synced", change=change.describe())

    # -- reporting -----------------------------------------------------------------------

    def status_document(self, resolved: Resolved) -> dict[str, object]:
        """The machine-readable status under /chora/sync/status. No timestamps: it is
        rewritten only when something in it changes."""
        return {
            **self.source,
            "capabilities": len(resolved.desired),
            "errors": [
                {"file": e.path, "namespace": e.namespace, "reason": e.reason}
                for e in resolved.errors
            ],
            "unowned": sorted(self.unowned),
            "prunes_held": sorted(self.held),
            "prune_refusal": next(iter(self.held.values()), ""),
        }

    def _write_status(self, resolved: Resolved) -> None:
        value = json.dumps(self.status_document(resolved), separators=(",", ":")).encode()
        current = self.store.get(keys.SYNC_STATUS)
        if current is not None and current.value == value:
            return
        guard = Unchanged(keys.SYNC_STATUS, current.mod_revision if current else 0)
        self.store.txn([guard], [Put(keys.SYNC_STATUS, value)])

    def _report_errors(self, errors: list[ManifestError]) -> None:
        """Each broken file is logged once when it breaks and once when it is fixed."""
        now = {e.path: e.reason for e in errors}
        for path, reason in now.items():
            if self._reported.get(path) != reason:
                log.error("manifest rejected", file=path, reason=reason)
        for path in set(self._reported) - set(now):
            log.info("manifest error cleared", file=path)
        self._reported = now

    def _record(self, outcome: Outcome, resolved: Resolved) -> None:
        self.metrics.reconciles.labels(outcome.kind, "ok").inc()
        self.metrics.reconcile_seconds.labels(outcome.kind).observe(outcome.seconds)
        self.metrics.capabilities.set(len(resolved.desired))
        self.metrics.manifest_errors.set(len(resolved.errors))
        self.metrics.last_success.set(time.time())
        self.metrics.prunes_held.set(len(self.held))
        # Keeps the prune ratio of partial reconciles honest until the next full read.
        self.owned_total += sum(
            1 if c.kind == "create" else -1 if c.kind == "prune" else 0
            for c in outcome.plan.changes
        )
        self.prunes.note_total(time.monotonic(), self.owned_total)

    def _note_unowned(self, unowned: set[str]) -> None:
        """Capabilities someone else wrote, or whose inventory entry was deleted by hand:
        never pruned (we cannot know they are ours), so reported: status, gauge, and one
        log line whenever the set changes."""
        if unowned != self.unowned:
            if unowned:
                log.warning(
                    "capabilities in etcd without an inventory entry: not synced from a "
                    "file and never pruned; delete them by hand or add their manifests",
                    count=len(unowned), namespaces=sorted(unowned)[:20],
                )
            else:
                log.info("no capabilities without an inventory entry any more")
        self.unowned = unowned
        self.metrics.unowned.set(len(unowned))


def _present(kvs: Iterable[str]) -> set[str]:
    """Namespaces with at least one sync-owned key (a lone health key is the heartbeat's,
    on its way out after a prune)."""
    names = set(keys.SYNC_KEYS)
    return {split[0] for key in kvs if (split := keys.split(key)) and split[1] in names}


class OwnWrites:
    """Revisions of our recent transactions, so a watch can tell our writes from drift.
    Bounded: an event too old to be found here only costs a no-op partial reconcile."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._revisions: dict[int, None] = {}
        self._lock = threading.Lock()  # transactions land from several pool threads

    def add(self, revision: int) -> None:
        with self._lock:
            self._revisions[revision] = None
            while len(self._revisions) > self._limit:
                del self._revisions[next(iter(self._revisions))]

    def __contains__(self, revision: object) -> bool:
        return revision in self._revisions


def source_revision(root: Path) -> dict[str, object]:
    """The git commit the directory is at and whether it has uncommitted changes;
    nulls outside a git work tree."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    porcelain = git("status", "--porcelain", "--", ".")
    return {"commit": commit, "dirty": bool(porcelain) if porcelain is not None else None}
