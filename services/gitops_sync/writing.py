"""Writing a reconcile's changes, and the checkpoint after them.

Whole capabilities are packed into transactions within etcd's limits (``--max-txn-ops``
operations, one guard fewer for a leader's fence; ~1.4 MB), sent in parallel; a batch
whose guards fail is split, so one conflict does not hold back the rest. Every revision
that lands is remembered (``OwnWrites``), so the drift watch can tell our writes from
someone else's, and so a reconcile can tell whether anyone else wrote between its read
and its last write (``renew_checkpoint``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Executor

from services.core import keys, logs
from services.core.errors import TooLarge
from services.core.kv import MAX_REQUEST_BYTES, MAX_TXN_OPS, Delete, Put, Unchanged
from services.core.store import Store
from services.gitops_sync.checkpoint import Checkpoint, contiguous, nothing_else_changed
from services.gitops_sync.metrics import Metrics
from services.gitops_sync.plan import Actual, Change
from services.gitops_sync.projection import keys_digest
from services.gitops_sync.reading import Observed

log = logs.get("gitops_sync")


def _size(op: Put | Delete) -> int:
    """Upper bound of an operation's encoded size, without encoding it twice."""
    return len(op.key) + (len(op.value) if isinstance(op, Put) else 0) + 24


def batches(changes: Iterable[Change], max_ops: int = MAX_TXN_OPS) -> list[list[Change]]:
    """Whole capabilities packed into transactions within etcd's op and size limits
    (guards: one fewer, for the leader's fence)."""
    max_guards = max_ops - 1
    out: list[list[Change]] = []
    current: list[Change] = []
    ops = guards = size = 0
    for change in changes:
        c_ops, c_guards = len(change.ops), len(change.guards)
        c_size = sum(_size(op) for op in change.ops) + 32 * (c_guards + 1)
        if current and (ops + c_ops > max_ops or guards + c_guards > max_guards
                        or size + c_size > MAX_REQUEST_BYTES):
            out.append(current)
            current, ops, guards, size = [], 0, 0, 0
        current.append(change)
        ops += c_ops
        guards += c_guards
        size += c_size
    if current:
        out.append(current)
    return out


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


class Writer:
    """Sends changes for the reconciler, on its thread pool; one per reconciler."""

    def __init__(self, store: Store, pool: Executor, metrics: Metrics, own: OwnWrites) -> None:
        self.store, self.pool, self.metrics, self.own = store, pool, metrics, own

    def apply(
        self, changes: Iterable[Change], revisions: list[int], *, detailed: bool = True
    ) -> tuple[int, set[str]]:
        """Send the changes: (capabilities applied, namespaces whose guards failed);
        ``revisions`` gets those of the transactions that landed. ``detailed``: one log
        line per capability (everyday edits; a 10,000-manifest first sync is summed up
        by "reconcile finished" instead of flooding the log)."""
        groups = batches(changes, self.store.max_txn_ops)
        if not groups:
            return 0, set()
        results = list(self.pool.map(lambda b: self._send(b, detailed), groups))
        revisions += [r for result in results for r in result[2]]
        applied = sum(r[0] for r in results)
        conflicts = set().union(*(r[1] for r in results))
        return applied, conflicts

    def _send(self, batch: list[Change], detailed: bool) -> tuple[int, set[str], list[int]]:
        try:
            ok, revision = self.store.txn(
                [g for c in batch for g in c.guards], [op for c in batch for op in c.ops]
            )
        except TooLarge as exc:
            narrower = batches(batch, MAX_TXN_OPS)
            if len(narrower) == 1:  # within etcd's default: too large another way
                raise
            return self._narrower(narrower, detailed, str(exc))
        if ok:
            self.own.add(revision)
            self.metrics.txns.labels("ok").inc()
            for change in batch:
                self.metrics.changes.labels(change.kind).inc()
                if detailed:
                    log.info("capability synced", change=change.describe())
            return len(batch), set(), [revision]
        self.metrics.txns.labels("conflict").inc()
        if len(batch) == 1:
            return 0, {batch[0].namespace}, []
        return self._each(([change] for change in batch), detailed)

    def _narrower(self, groups: list[list[Change]], detailed: bool, error: str
                  ) -> tuple[int, set[str], list[int]]:
        """etcd refused a transaction as too wide: its --max-txn-ops is below ours. From
        now on, etcd's default; this batch again, in narrower transactions (``groups``)."""
        if self.store.max_txn_ops > MAX_TXN_OPS:
            log.warning("etcd accepts fewer operations per transaction than --max-txn-ops; "
                        "using etcd's default", max_txn_ops=self.store.max_txn_ops,
                        now=MAX_TXN_OPS, error=error)
            self.store.max_txn_ops = MAX_TXN_OPS
        return self._each(groups, detailed)

    def _each(self, groups: Iterable[list[Change]], detailed: bool
              ) -> tuple[int, set[str], list[int]]:
        applied, conflicts, revisions = 0, set(), []
        for group in groups:
            n, c, r = self._send(group, detailed)
            applied += n
            conflicts |= c
            revisions += r
        return applied, conflicts, revisions


def renew_checkpoint(
    store: Store,
    seen: Observed,
    actual: Actual,
    vouched: set[str],
    changes: Iterable[Change],
    revisions: list[int],
    counted: int,
    unowned: set[str],
) -> bool:
    """Record a checkpoint after a full reconcile that read at ``seen.revision``, applied
    ``changes`` in the transactions ``revisions`` without a conflict, and found
    ``unowned``; ``vouched``: capabilities known to hold what their inventory entry
    hashes without looking (settled, or just planned from their file); ``counted``: the
    keys under /chora/capabilities/ at the read. Written only when it says more than the
    one in etcd (an unchanged restart writes nothing) and when every capability owned can
    be vouched for. True when written."""
    changes = list(changes)
    old = Checkpoint.decode(seen.checkpoint.value) if seen.checkpoint is not None else None
    if (old is not None and seen.verdict.usable and not seen.verdict.dirty and not changes
            and set(old.unowned) == unowned):
        return False
    written = {c.namespace for c in changes}
    for ns in set(seen.records) - written - vouched:
        record = seen.records[ns]
        values = {k: kv.value for k, kv in actual.of(ns).items()}
        if not record.keys or keys_digest(values) != record.keys:
            log.debug("no checkpoint: a capability differs from its inventory entry",
                      namespace=ns)
            return False
    created, deleted = [0, 0], [0, 0]
    for change in changes:
        for op in change.ops:
            inventory = int(op.key.startswith(keys.SYNC_OWNED))
            if isinstance(op, Delete):
                deleted[inventory] += 1
            elif op.key not in actual.kvs:
                created[inventory] += 1
    before = (counted, len(seen.inventory))
    if contiguous(seen.revision, revisions):
        revision = seen.revision + len(revisions)
        now = (before[0] + created[0] - deleted[0], before[1] + created[1] - deleted[1])
    else:  # others wrote meanwhile (a heartbeat): ask etcd what changed since the read
        caps, revision = store.count(keys.CAPABILITIES)
        entries, _ = store.count(keys.SYNC_OWNED, revision=revision)
        modified = [kv for prefix in (keys.CAPABILITIES, keys.SYNC_OWNED) for kv in
                    store.get_prefix(prefix, keys_only=True, revision=revision,
                                     min_mod_revision=seen.revision + 1)[0].values()]
        now = (caps, entries)
        if not nothing_else_changed(seen.revision, before, now, modified, set(revisions),
                                    (deleted[0], deleted[1])):
            log.debug("no checkpoint: someone else changed capability keys meanwhile")
            return False
    checkpoint = Checkpoint(revision, now[0], now[1], tuple(sorted(unowned)))
    guard = Unchanged(keys.SYNC_CHECKPOINT,
                      seen.checkpoint.mod_revision if seen.checkpoint is not None else 0)
    ok, _ = store.txn([guard], [Put(keys.SYNC_CHECKPOINT, checkpoint.encode())])
    return ok
