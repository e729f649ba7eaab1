"""What a reconcile reads from etcd, and what it may skip reading and parsing.

A full reconcile begins with one read of the sync's own prefix at a revision R (every
inventory entry, the status, the checkpoint: 10,000 small values) and the checkpoint's
two questions (``checkpoint.py``), while the directory is read and hashed beside it.
Then:

- files whose bytes are those their inventory entry says were projected are *recalled*:
  not parsed, parsing would only give back what etcd was given;
- capabilities the checkpoint proves untouched since are *settled*: not read back;
- the rest is read back, one range per capability when few, else all at once, and a
  recalled file's capability whose keys still hash to its inventory entry's ``keys``
  takes etcd's values as its own (still no parsing); only a mismatch parses the file.

And the git commit the directory is at, for the status.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from services.core import keys
from services.core.kv import KeyValue
from services.core.scanning import Entry, Resolved
from services.core.store import Store
from services.gitops_sync.checkpoint import Checkpoint, Verdict, examine
from services.gitops_sync.projection import Record

# Capabilities read back one range each; past this many, one read of the whole prefix.
READ_BACK_LIMIT = 256


@dataclass
class Observed:
    """The sync's prefix at ``revision`` and what the checkpoint proves there."""

    revision: int
    inventory: dict[str, KeyValue]  # /chora/sync/owned/{ns} → its entry
    records: dict[str, Record]  # namespace → its inventory entry, parsed
    checkpoint: KeyValue | None  # as read: its mod revision guards the next write
    verdict: Verdict
    capability_keys: int  # keys under /chora/capabilities/ at ``revision``; -1: not counted
    _known: dict[tuple[str, str], str] | None = field(default=None, repr=False)

    def recall(self, digests: Mapping[str, str]) -> dict[str, str]:
        """Of these files (name → sha256 of their bytes), those whose bytes are what their
        inventory entry says the sync projected: name → namespace."""
        if self._known is None:
            self._known = {(r.source, r.sha256): ns
                           for ns, r in self.records.items() if r.sha256 and r.keys}
        return {name: ns for name, digest in digests.items()
                if (ns := self._known.get((name, digest))) is not None}

    def settled(self, resolved: Resolved, entries: Mapping[str, Entry]) -> set[str]:
        """Capabilities the checkpoint proves to hold what their file projects: the file
        is the one their entry names, with the bytes it hashed, and neither their keys
        nor their entry changed since the checkpoint's revision."""
        if not self.verdict.usable:
            return set()
        out = set()
        for ns, file in resolved.files.items():
            record = self.records.get(ns)
            if (record is not None and record.keys and ns not in self.verdict.dirty
                    and record.source == file and record.sha256 == entries[file].digest):
                out.add(ns)
        return out


def observe(store: Store) -> Observed:
    """Read the sync's own prefix and ask the checkpoint's questions, all at one revision:
    what a full reconcile needs before it knows which files to parse and which
    capabilities to read back. It runs beside the reading of the files."""
    # ~200 bytes an entry: 10,000 in one answer rather than five round trips.
    kvs, revision = store.get_prefix(keys.SYNC, page=20_000)
    inventory = {k: kv for k, kv in kvs.items() if k.startswith(keys.SYNC_OWNED)}
    records = {k[len(keys.SYNC_OWNED):]: Record.parse(kv.value) for k, kv in inventory.items()}
    held = kvs.get(keys.SYNC_CHECKPOINT)
    checkpoint = Checkpoint.decode(held.value) if held is not None else None
    count, modified = -1, {}
    if checkpoint is not None and held is not None:
        if revision == held.mod_revision == checkpoint.revision + 1:
            # Nothing was written anywhere since the checkpoint but the checkpoint itself:
            # the answers are known without asking (etcd would walk every key for them).
            count = checkpoint.capability_keys
        elif checkpoint.revision <= revision:
            count, _ = store.count(keys.CAPABILITIES, revision=revision)
            modified, _ = store.get_prefix(keys.CAPABILITIES, keys_only=True,
                                           revision=revision,
                                           min_mod_revision=checkpoint.revision + 1)
    verdict = examine(checkpoint, revision, inventory, count, modified.values())
    return Observed(revision, inventory, records, held, verdict, count)


def present(kvs: Iterable[str]) -> set[str]:
    """Namespaces with at least one sync-owned key (a lone health key is the heartbeat's,
    on its way out after a prune)."""
    names = set(keys.SYNC_KEYS)
    return {split[0] for key in kvs if (split := keys.split(key)) and split[1] in names}


def read_namespaces(
    store: Store,
    namespaces: Iterable[str],
    pool: Executor,
    *,
    revision: int = 0,
    inventory: Mapping[str, KeyValue] | None = None,
) -> tuple[list[KeyValue], set[str]]:
    """The keys of these capabilities (one range each, in parallel; at ``revision``, or
    now) and their inventory entries (from ``inventory`` when it was read already), and
    which of them hold sync keys."""

    def one(ns: str) -> tuple[list[KeyValue], set[str]]:
        found, _ = store.get_prefix(keys.capability(ns, ""), revision=revision)
        kvs = list(found.values())
        key = keys.owned(ns)
        entry = store.get(key) if inventory is None else inventory.get(key)
        if entry is not None:
            kvs.append(entry)
        return kvs, present(found)

    kvs: list[KeyValue] = []
    holding: set[str] = set()
    for found, ns_present in pool.map(one, sorted(namespaces)):
        kvs += found
        holding |= ns_present
    return kvs, holding


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
