"""The capabilities directory as the sync sees it: each manifest file's latest result.

An ``Index`` re-parses a file only when its (mtime, size, inode) changed, so a periodic
full reconcile of 10,000 unchanged files costs a directory listing and stats, and an
event for one file costs parsing one file.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.core import manifests
from services.core.manifests import Capability, ManifestError
from services.gitops_sync.projection import Desired, project

Signature = tuple[int, int, int]

# Parsing is CPU-bound Python; past this many files to parse, a pool of processes
# (spawned, so no gRPC channel is ever forked) does it on every core.
PARALLEL_THRESHOLD = 256


@dataclass(frozen=True)
class Entry:
    signature: Signature
    result: Capability | ManifestError
    desired: Desired | None = None  # the projection, computed once per file version


@dataclass(frozen=True)
class Resolved:
    """The directory reduced to what the planner needs."""

    desired: dict[str, Desired]  # namespace → its keys, duplicates removed
    errors: list[ManifestError]  # sorted by file
    keep: set[str]  # namespaces whose last good state must stay untouched
    broken_sources: set[str]  # names of files that failed to load


class DirectoryMissing(Exception):
    """The directory is gone (unmounted volume?): nothing may be pruned because of it."""


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Index:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.entries: dict[str, Entry] = {}

    def _load(self, name: str, sig: Signature) -> Entry:
        return _load(self.root, name, sig)

    def _load_all(self, todo: dict[str, Signature]) -> dict[str, Entry]:
        workers = min(os.cpu_count() or 1, 8)
        if len(todo) < PARALLEL_THRESHOLD or workers < 2:
            return {name: self._load(name, sig) for name, sig in todo.items()}
        items = list(todo.items())
        chunks = [items[i::workers * 4] for i in range(workers * 4)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = pool.map(_load_chunk, [self.root] * len(chunks), chunks)
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
                desired[ns] = claimants[0].desired
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


def _load(root: Path, name: str, sig: Signature) -> Entry:
    path = root / name
    try:
        cap = manifests.load(path, root)
        return Entry(sig, cap, project(cap))
    except ManifestError as exc:
        return Entry(sig, exc)
    except OSError as exc:
        return Entry(sig, ManifestError(path, f"cannot read: {exc.strerror or exc}"))


def _load_chunk(root: Path, items: list[tuple[str, Signature]]) -> list[tuple[str, Entry]]:
    return [(name, _load(root, name, sig)) for name, sig in items]


def _namespace(result: Capability | ManifestError) -> str | None:
    return result.namespace


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
