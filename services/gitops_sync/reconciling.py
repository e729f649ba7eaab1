"""One reconcile: read the directory, read etcd, plan, apply, report.

The only part of the sync that writes to etcd. Correctness never depends on events: a
full reconcile compares every file with what etcd holds now (read back, or proven
unchanged since the checkpoint), never with a cache, so a restart, a missed event or a
lost connection heals on the next one. What it may skip (``reading.py``): parsing a file
whose bytes are those its inventory entry recorded, and reading back a capability the
checkpoint (``checkpoint.py``) proves untouched. An unchanged restart parses nothing and
writes nothing.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chora_manifests.errors import ManifestError
from services.core import keys, logs
from services.core.kv import Put, Unchanged
from services.core.scanning import Index, Resolved
from services.core.store import Store
from services.gitops_sync.checkpoint import contiguous
from services.gitops_sync.metrics import Metrics
from services.gitops_sync.plan import (
    Actual,
    Plan,
    Policy,
    PruneWindow,
    make_plan,
    unowned_namespaces,
)
from services.gitops_sync.projection import project, still_projected
from services.gitops_sync.reading import (
    READ_BACK_LIMIT,
    observe,
    present,
    read_namespaces,
    source_revision,
)
from services.gitops_sync.writing import OwnWrites, Writer, batches, renew_checkpoint

__all__ = ["Outcome", "Reconciler", "batches"]

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
    parsed: int = 0  # files parsed by this reconcile
    files: int = 0  # manifest files in the directory
    revisions: list[int] = field(default_factory=list)  # of our transactions that landed
    conflicted: bool = False  # a guard failed at least once (even if a retry landed)


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
        self.revision = 0  # where a watch of etcd may start: see _full
        self.own_writes = OwnWrites()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sync-txn")
        self._writer = Writer(store, self._pool, self.metrics, self.own_writes)
        self._reported: dict[str, str] = {}  # file → reason already logged

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- entry points --------------------------------------------------------------------

    def full(self, *, dry_run: bool = False) -> Outcome:
        """Everything in the directory against everything we own in etcd.

        Python's cycle collector is paused meanwhile: a first sync of 10,000 manifests
        allocates millions of objects that die by reference counting, and each of the
        collections they triggered walked them all (~0.1 s of the whole, measured). The
        few cycles a reconcile leaves are collected after it."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._full(dry_run)
        finally:
            if collecting:
                gc.enable()

    def _full(self, dry_run: bool) -> Outcome:
        start, parsed = time.monotonic(), self.index.parsed
        # Two git subprocesses and the sync's own prefix, while the files are read.
        git = self._pool.submit(source_revision, self.root)
        observing = self._pool.submit(observe, self.store)
        self.index.scan(recall=lambda digests: observing.result().recall(digests))
        seen = observing.result()
        self.source, self.revision = git.result(), seen.revision
        resolved = self.index.resolve()
        settled = seen.settled(resolved, self.index.entries)
        wanted = {*resolved.desired, *seen.records, *resolved.keep, *seen.verdict.present}
        scope: set[str] | None = wanted - settled
        if seen.verdict.usable and len(scope) <= READ_BACK_LIMIT:
            kvs, holding = read_namespaces(self.store, scope, self._pool,
                                           revision=seen.revision, inventory=seen.inventory)
            found = (seen.verdict.present - scope) | holding
            counted = seen.capability_keys
        else:
            if not seen.verdict.usable:
                log.debug("reading every capability back", reason=seen.verdict.reason)
            caps, _ = self.store.get_prefix(keys.CAPABILITIES, revision=seen.revision)
            kvs, found, counted = list(caps.values()), present(caps), len(caps)
            scope, settled = None, set()
        sources = {ns: record.source for ns, record in seen.records.items()}
        actual = Actual.from_kvs([*kvs, *seen.inventory.values()], owned=sources)
        resolved = self._settle(resolved, scope, actual)
        owned = actual.owned_namespaces()
        self.owned_total = len(owned)
        self.prunes.note_total(start, self.owned_total)
        self._note_unowned(unowned_namespaces(found, owned, resolved.desired))
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
        if not dry_run:
            self.held = {}
        outcome = self._finish("full", plan, resolved, start, parsed, dry_run=dry_run)
        if not dry_run and not outcome.conflicted:
            renew_checkpoint(self.store, seen, actual, settled | set(resolved.desired),
                             plan.changes, outcome.revisions, counted, self.unowned)
        if outcome.revisions and contiguous(seen.revision, outcome.revisions):
            # Every revision since the read is one of ours: a watch may begin after them
            # instead of replaying them (a first sync of 10,000 is 70,000 events, which
            # held the first edit after it back ~1.7 s).
            self.revision = max(outcome.revisions)
        return outcome

    def partial(self, names: Iterable[str], drifted: Iterable[str] = ()) -> Outcome:
        """Only the files named (by events) and the namespaces they held or hold now,
        plus ``drifted``: namespaces whose keys a watch saw changed by someone else."""
        start, parsed = time.monotonic(), self.index.parsed
        names, drifted = set(names), set(drifted)
        before = self.index.refresh(names)
        by_files = {ns for ns in before.values() if ns} | self.index.namespaces_of(names)
        scope = by_files | drifted
        if len(scope) > PARTIAL_LIMIT:
            return self.full()
        kvs, found = read_namespaces(self.store, scope, self._pool)
        actual = Actual.from_kvs(kvs)
        resolved = self._settle(self.index.resolve(), scope, actual)
        owned = actual.owned_namespaces()
        found = unowned_namespaces(found, owned, resolved.desired)
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
        return self._finish("partial", plan, resolved, start, parsed)

    # -- recalled files ------------------------------------------------------------------

    def _settle(self, resolved: Resolved, scope: set[str] | None, actual: Actual) -> Resolved:
        """A recalled file (not parsed) whose capability is to be planned needs its
        desired keys: etcd's own when they still hash to what its inventory entry
        recorded, else whatever parsing the file gives (and the plan repairs)."""
        reparse, settled = [], 0
        for ns, file in resolved.files.items():
            if resolved.desired[ns] is not None or (scope is not None and ns not in scope):
                continue
            held = still_projected(ns, file, self.index.entries[file].digest or "",
                                   actual.of(ns))
            if held is None:
                reparse.append(file)
            else:
                self.index.settle(file, held)
                settled += 1
        if reparse:
            self.index.reparse(reparse)
        return self.index.resolve() if reparse or settled else resolved

    # -- applying ------------------------------------------------------------------------

    def _finish(
        self, kind: str, plan: Plan, resolved: Resolved, start: float, parsed: int,
        *, dry_run: bool = False,
    ) -> Outcome:
        outcome = Outcome(kind, plan, resolved.errors, parsed=self.index.parsed - parsed,
                          files=len(self.index.entries))
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
        detailed = len(plan.changes) <= DETAILED_LOG_LIMIT
        outcome.applied, outcome.conflicts = self._writer.apply(
            plan.changes, outcome.revisions, detailed=detailed)
        for attempt in range(CONFLICT_RETRIES):
            if not outcome.conflicts:
                break
            outcome.conflicted = True
            # Someone else wrote these keys since we read them: re-read and re-plan.
            log.warning(
                "write conflict, re-planning",
                namespaces=sorted(outcome.conflicts)[:20],
                attempt=attempt + 1,
            )
            kvs, _ = read_namespaces(self.store, outcome.conflicts, self._pool)
            retry = make_plan(
                resolved.desired,
                Actual.from_kvs(kvs),
                scope=outcome.conflicts,
                keep=resolved.keep,
                broken_sources=resolved.broken_sources,
                owned_total=self.owned_total,
                policy=self.policy,
            )
            applied, outcome.conflicts = self._writer.apply(
                retry.changes, outcome.revisions, detailed=detailed)
            outcome.applied += applied
        pruned = {c.namespace for c in plan.changes if c.kind == "prune"} - outcome.conflicts
        self.prunes.note_pruned(start, len(pruned))
        if (revision := self._write_status(resolved)) is not None:
            outcome.revisions.append(revision)
        outcome.seconds = time.monotonic() - start
        self._record(outcome, resolved)
        return outcome

    # -- reporting -----------------------------------------------------------------------

    def status_document(self, resolved: Resolved) -> dict[str, object]:
        """The machine-readable status under /chora/sync/status. No timestamps: it is
        rewritten only when something in it changes. Files are named relative to the
        capabilities directory, so the status reads the same on every machine."""
        return {
            **self.source,
            "capabilities": len(resolved.desired),
            "errors": [
                {"file": e.path, "namespace": e.namespace, "reason": e.reason,
                 **({"line": e.line, "column": e.column} if e.line is not None else {})}
                for e in resolved.errors
            ],
            "unowned": sorted(self.unowned),
            "prunes_held": sorted(self.held),
            "prune_refusal": next(iter(self.held.values()), ""),
        }

    def _write_status(self, resolved: Resolved) -> int | None:
        """The revision of the write, None when the status had not changed. A written
        status says when (``changed_at``, UTC): when this commit and these errors were
        first reported, which a restart that finds them unchanged does not move."""
        doc = self.status_document(resolved)
        current = self.store.get(keys.SYNC_STATUS)
        if current is not None and _without_time(current.value) == doc:
            return None
        changed_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        value = json.dumps({**doc, "changed_at": changed_at}, separators=(",", ":")).encode()
        guard = Unchanged(keys.SYNC_STATUS, current.mod_revision if current else 0)
        ok, revision = self.store.txn([guard], [Put(keys.SYNC_STATUS, value)])
        return revision if ok else None

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
        self.metrics.manifests_parsed.inc(outcome.parsed)
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


def _without_time(value: bytes) -> object:
    """A stored status without its ``changed_at``, to compare with a new document."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if isinstance(doc, dict):
        doc.pop("changed_at", None)
    return doc
