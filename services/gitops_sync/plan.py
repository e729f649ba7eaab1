"""Desired vs actual → the changes to apply. Pure: no I/O, tested without etcd.

One ``Change`` per capability: all its key writes and deletes together, guarded by the
mod revisions read, so it lands in one transaction or not at all and a concurrent writer
is detected instead of overwritten. Nothing differs → no change → nothing written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.core import keys
from services.core.kv import Delete, KeyValue, Op, Put, Unchanged
from services.gitops_sync.projection import Desired, Record


@dataclass(frozen=True)
class Change:
    namespace: str
    kind: str  # "create" | "update" | "prune"
    ops: tuple[Op, ...]
    guards: tuple[Unchanged, ...]

    def describe(self) -> str:
        """``update a.b: put version,manifest`` (``inventory`` is our /chora/sync/owned key)."""

        def name(key: str) -> str:
            return "inventory" if key.startswith(keys.SYNC_OWNED) else key.rsplit("/", 1)[-1]

        puts = ",".join(name(op.key) for op in self.ops if isinstance(op, Put))
        dels = ",".join(name(op.key) for op in self.ops if isinstance(op, Delete))
        parts = [f"put {puts}" if puts else "", f"delete {dels}" if dels else ""]
        return f"{self.kind} {self.namespace}: " + "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    refused_prunes: tuple[str, ...] = ()  # namespaces kept because the prune was too large
    refusal: str = ""


@dataclass(frozen=True)
class Policy:
    max_prune_ratio: float = 0.5
    """Share of the capabilities we own that prunes may remove within ``prune_window``."""
    allow_mass_prune: bool = False
    prune_window: float = 600.0
    """Seconds over which prunes are added up: a directory emptied one file at a time
    (an unmounting volume, a slow rsync, a checkout in progress) is judged as a whole."""


class PruneWindow:
    """Prunes applied in the last ``seconds``, and the most capabilities owned meanwhile.

    Judging each reconcile alone let a directory emptied gradually (48 files moved out
    one every 150 ms) prune 47 of 48: every partial reconcile pruned one, measured
    against a total that shrank with each. Adding up the prunes of the window and
    measuring them against the largest total seen in it catches that. Pure: times are
    passed in."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._pruned: deque[tuple[float, int]] = deque()
        self._totals: deque[tuple[float, int]] = deque()

    def _trim(self, now: float) -> None:
        for q in (self._pruned, self._totals):
            while q and q[0][0] < now - self.seconds:
                q.popleft()

    def note_total(self, now: float, total: int) -> None:
        self._totals.append((now, total))
        self._trim(now)

    def note_pruned(self, now: float, count: int) -> None:
        if count:
            self._pruned.append((now, count))
        self._trim(now)

    def pruned(self, now: float) -> int:
        self._trim(now)
        return sum(n for _, n in self._pruned)

    def baseline(self, now: float, total: int) -> int:
        """The most capabilities owned at any point of the window (``total`` now)."""
        self._trim(now)
        return max([total, *(n for _, n in self._totals)])


@dataclass
class Actual:
    """What etcd holds for the namespaces in scope: sync-owned capability keys and our
    inventory. ``health`` and unknown key names are never loaded here, so never touched."""

    kvs: dict[str, KeyValue] = field(default_factory=dict)
    _owned: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _held: set[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_kvs(cls, kvs: Iterable[KeyValue], owned: Mapping[str, str] | None = None) -> Actual:
        """``owned``: ``owned_namespaces()`` of these kvs, when the caller has it already."""
        owned_names = set(keys.SYNC_KEYS)
        out = {}
        for kv in kvs:
            split = keys.split(kv.key)
            if (split and split[1] in owned_names) or kv.key.startswith(keys.SYNC_OWNED):
                out[kv.key] = kv
        return cls(out, None if owned is None else dict(owned))

    def owned_namespaces(self) -> dict[str, str]:
        """Namespaces in our inventory → the source file that wrote them (worked out once:
        10,000 entries are asked for several times in a reconcile)."""
        if self._owned is None:
            self._owned = {
                key[len(keys.SYNC_OWNED) :]: Record.parse(kv.value).source
                for key, kv in self.kvs.items()
                if key.startswith(keys.SYNC_OWNED)
            }
        return self._owned

    def capability_keys(self, namespace: str) -> list[str]:
        if namespace not in self._namespaces():  # all of them, on a first sync
            return []
        return [k for k in (keys.capability(namespace, n) for n in keys.SYNC_KEYS) if k in self.kvs]

    def _namespaces(self) -> set[str]:
        """Namespaces with a capability key here (worked out once)."""
        if self._held is None:
            self._held = {split[0] for key in self.kvs if (split := keys.split(key))}
        return self._held

    def of(self, namespace: str) -> dict[str, KeyValue]:
        """The capability's sync keys and inventory entry, as read."""
        wanted = [*self.capability_keys(namespace), keys.owned(namespace)]
        return {k: self.kvs[k] for k in wanted if k in self.kvs}


def unowned_namespaces(
    present: Iterable[str], owned: Iterable[str], desired: Iterable[str]
) -> set[str]:
    """Namespaces holding capability keys that no inventory entry owns and no file
    claims: written by someone else, or their inventory entry was deleted by hand. Such
    keys are never pruned (we cannot know we wrote them), only reported."""
    return set(present) - set(owned) - set(desired)


def _guard(actual: Actual, key: str) -> Unchanged:
    kv = actual.kvs.get(key)
    return Unchanged(key, kv.mod_revision if kv else 0)


def diff(namespace: str, desired: Desired, actual: Actual) -> Change | None:
    ops: list[Op] = [
        Put(k, v) for k, v in desired.items() if (kv := actual.kvs.get(k)) is None or kv.value != v
    ]
    stale = [k for k in actual.capability_keys(namespace) if k not in desired]
    ops += [Delete(k) for k in stale]
    if not ops:
        return None
    kind = "update" if keys.owned(namespace) in actual.kvs else "create"
    return Change(namespace, kind, tuple(ops), tuple(_guard(actual, op.key) for op in ops))


def prune(namespace: str, actual: Actual) -> Change:
    doomed = [*actual.capability_keys(namespace), keys.owned(namespace)]
    return Change(
        namespace,
        "prune",
        tuple(Delete(k) for k in doomed),
        tuple(_guard(actual, k) for k in doomed),
    )


def make_plan(
    desired: Mapping[str, Desired],
    actual: Actual,
    *,
    scope: Iterable[str] | None = None,
    keep: Iterable[str] = (),
    broken_sources: Iterable[str] = (),
    owned_total: int | None = None,
    recently_pruned: int = 0,
    policy: Policy = Policy(),
) -> Plan:
    """Plan for every namespace in ``scope`` (all known ones when None).

    ``keep``: namespaces whose manifest is currently broken or disputed: their last good
    state stays as it is. ``broken_sources``: files that failed to load; what they wrote
    before is kept too, even when their namespace can no longer be read from them.
    ``owned_total``: how many capabilities we own in all, for the prune ratio when the
    scope is partial (the most owned within the prune window). ``recently_pruned``:
    prunes already applied within the window; they count against the same ratio.
    """
    owned = actual.owned_namespaces()
    keep, broken = set(keep), set(broken_sources)
    names = set(scope) if scope is not None else set(desired) | set(owned)
    changes, prunes = [], []
    for ns in sorted(names):
        if ns in keep:
            continue
        if ns in desired:
            if change := diff(ns, desired[ns], actual):
                changes.append(change)
        elif ns in owned and owned[ns] not in broken:
            prunes.append(prune(ns, actual))
    total = owned_total if owned_total is not None else len(owned)
    doomed = len(prunes) + recently_pruned
    if prunes and not policy.allow_mass_prune and doomed > policy.max_prune_ratio * total:
        earlier = (
            f" ({recently_pruned} already pruned in the last {policy.prune_window:.0f} s)"
            if recently_pruned else ""
        )
        refusal = (
            f"refusing to prune {len(prunes)} of {total} capabilities{earlier}: "
            f"more than {policy.max_prune_ratio:.0%} within {policy.prune_window:.0f} s. "
            "Is the capabilities directory unmounting, being rsynced or checked out? "
            "These were kept; rerun with --allow-mass-prune if the deletion is intended"
        )
        return Plan(tuple(changes), tuple(c.namespace for c in prunes), refusal)
    return Plan(tuple(changes + prunes))
