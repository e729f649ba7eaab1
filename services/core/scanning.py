"""A directory of manifests as the programs see it: each file's latest result.

One scanner for every program that reads ``capabilities/`` (the sync; the heartbeat's
``--capabilities DIR`` mode), so the same files are valid, the same duplicates refused
and the same errors reported everywhere. An ``Index`` re-parses a file only when its
(mtime, size, inode) changed, so a periodic full scan of 10,000 unchanged files costs a
directory listing and stats, and an event for one file costs parsing one file. What a
program derives from a manifest (the sync's keys, the heartbeat's probe) is computed once
per file version, by ``derive``, in the parsing process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chora_manifests as manifests
from chora_manifests import Capability, ManifestError

Derive = Callable[[Capability], Any]  # module-level, so the parsing pool can pickle it

Signature = tuple[int, int, int]

# Parsing is CPU-bound Python; past this many files to parse, a pool of processes
# (spawned, so no gRPC channel is ever forked) does it on every core.
PARALLEL_THRESHOLD = 256


@dataclass(frozen=True)
class Entry:
    signature: Signature
    result: Capability | ManifestError
    derived: Any = None  # derive(result), computed once per file version


@dataclass(frozen=True)
class Resolved:
    """The directory reduced to what the planner needs."""

    desired: dict[str, Any]  # namespace → what derive made of it, duplicates removed
    errors: list[ManifestError]  # sorted by file
    keep: set[str]  # namespaces whose last good state must stay untouched
    broken_sources: set[str]  # names of files that failed to load


class DirectoryMissing(Exception):
    """The directory is gone (unmounted volume?): nothing may be pruned because of it."""


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Index:
    def __init__(self, root: Path, derive: Derive | None = None) -> None:
        self.root = Path(root)
        self.derive = derive
        self.entries: dict[str, Entry] = {}

    def _load(self, name: str, sig: Signature) -> Entry:
        return _load(self.root, name, sig, self.derive)

    def _load_all(self, todo: dict[str, Signature]) -> dict[str, Entry]:
        workers = min(os.cpu_count() or 1, 8)
        if len(todo) < PARALLEL_THRESHOLD or workers < 2:
            return {name: self._load(name, sig) for name, sig in todo.items()}
        items = list(todo.items())
        chunks = [items[i::workers * 4] for i in range(workers * 4)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = pool.map(
                _load_chunk, [self.root] * len(chunks), chunks, [self.derive] * len(chunks)
            )
            return {name: entry for chunk in results for name, entry in chunk}

    def scan(self) -> set[str]:
        """Bring every entry up to date; returns the names whose entry changed."""
        if not self.root.is_dir():
            raise DirectoryMissing(f"capabilities directory {self.root} does not exist")
        seen: dict[str, Signature] = {}
        with os.scandir(self.root) as it:
            for de in it:
                # A directory, FIFO or socket named like a manifest is listed too: loading
                # it reports an error for that name instead of ignoring it silently.
                if manifests.is_manifest_name(de.name):
                    try:
                        seen[de.name] = _signature(de.stat())
                    except OSError:  # dangling symlink, or deleted since listing
                        seen[de.name] = (0, -1, 0)
        changed = {n for n in self.entries if n not in seen}
        for name in changed:
            del self.entries[name]
        todo = {
            name: sig for name, sig in seen.items()
            if (entry := self.entries.get(name)) is None or entry.signature != sig
        }
        self.entries.update(self._load_all(todo))
        return changed | set(todo)

    def refresh(self, names: Iterable[str]) -> dict[str, str | None]:
        """Re-read just these files; returns name → namespace it held before (or None)."""
        before: dict[str, str | None] = {}
        for name in names:
            old = self.entries.get(name)
            before[name] = _namespace(old.result) if old else None
            path = self.root / name
            try:
                st = path.stat()
            except OSError:
                if path.is_symlink():  # dangling link: report it rather than forget it
                    self.entries[name] = self._load(name, (0, -1, 0))
                else:
                    self.entries.pop(name, None)
                continue
            if old is None or old.signature != _signature(st):
                self.entries[name] = self._load(name, _signature(st))
        return before

    def namespaces_of(self, names: Iterable[str]) -> set[str]:
        out = set()
        for name in names:
            entry = self.entries.get(name)
            if entry and (ns := _namespace(entry.result)):
                out.add(ns)
        return out

    def resolve(self) -> Resolved:
        claims: dict[str, list[Entry]] = defaultdict(list)
        errors: list[ManifestError] = []
        keep: set[str] = set()
        for name in sorted(self.entries):
            result = self.entries[name].result
            if isinstance(result, ManifestError):
                errors.append(result)
                if result.namespace:
                    keep.add(result.namespace)
            else:
                claims[result.namespace].append(self.entries[name])
        desired = {}
        for ns, claimants in claims.items():
            if len(claimants) == 1:
                desired[ns] = claimants[0].derived
                continue
            keep.add(ns)
            files = [e.result.source for e in claimants]  # type: ignore[union-attr]
            for source in files:
                others = ", ".join(f for f in files if f != source)
                errors.append(
                    ManifestError(
                        source, f"namespace {ns} is also claimed by {others}; kept as it was", ns
                    )
                )
        errors.sort(key=lambda e: e.path)
        desired = {ns: d for ns, d in desired.items() if ns not in keep}
        broken = {Path(e.path).name for e in errors if e.namespace is None}
        return Resolved(desired, errors, keep, broken)  # type: ignore[arg-type]


def _load(root: Path, name: str, sig: Signature, derive: Derive | None) -> Entry:
    path = root / name
    try:
        cap = manifests.load(path, root)
        return Entry(sig, cap, derive(cap) if derive else None)
    except ManifestError as exc:
        return Entry(sig, exc)
    except OSError as exc:
        return Entry(sig, ManifestError(path, f"cannot read: {exc.strerror or exc}"))


def _load_chunk(
    root: Path, items: list[tuple[str, Signature]], derive: Derive | None
) -> list[tuple[str, Entry]]:
    return [(name, _load(root, name, sig, derive)) for name, sig in items]


def _namespace(result: Capability | ManifestError) -> str | None:
    return result.namespace
