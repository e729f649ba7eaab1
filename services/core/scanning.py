"""A directory of manifests as the programs see it: each file's latest result.

One scanner for every program that reads ``capabilities/`` (the sync; the heartbeat's
``--capabilities DIR`` mode), so the same files are valid, the same duplicates refused
and the same errors reported everywhere.

Cheap when nothing changed, which is what restarts and periodic full scans mostly see:

- a file is read again only when its (mtime, size, inode) changed, and parsed again only
  when its bytes changed (the sha256 of its text): a touched or re-checked-out file costs
  a read, not a parse;
- a program that already knows what some bytes yield can ``recall`` them: the sync's
  inventory in etcd holds the sha256 of the bytes each capability was projected from, so
  a restart reads and hashes every file and parses none that did not change.

What a program derives from a manifest (the sync's keys, the heartbeat's probe) is
computed once per file version, by ``derive``, in the parsing process; 256 files or more
are parsed by a pool of spawned processes (no gRPC channel is ever forked).

Files are named relative to the directory (``a.yaml``) in errors and claims, so what the
sync reports reads the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chora_manifests as manifests
from chora_manifests.errors import ManifestError

if TYPE_CHECKING:
    from chora_manifests import Capability

# (capability, sha256 of the text it was parsed from) → what the program keeps of it.
# Module-level functions only, so the parsing pool can pickle them.
Derive = Callable[["Capability", str], Any]
# {file name: sha256} of files whose bytes are new to the index → {file name: namespace}
# for those the caller vouches for: they are not parsed.
Recall = Callable[[Mapping[str, str]], Mapping[str, str]]
Signature = tuple[int, int, int]
DANGLING: Signature = (0, -1, 0)  # a symlink to nothing: reported under its name

# Parsing is CPU-bound Python; past this many files to parse, a pool of processes
# does it on every core (starting one costs ~0.3 s of CPU per worker).
PARALLEL_THRESHOLD = 256
CHUNK = 200  # files per task sent to the pool: small enough to keep every worker busy


@dataclass(frozen=True)
class Claim:
    """A valid manifest as the index keeps it: the namespace its file claims. What the
    program needs of the rest is in ``Entry.derived``."""

    namespace: str
    source: str  # the file's name in the directory


@dataclass(frozen=True)
class Entry:
    signature: Signature
    result: Claim | ManifestError
    derived: Any = None  # derive(capability, digest), computed once per file version
    digest: str | None = None  # sha256 of the file's text; None when it could not be read
    recalled: bool = False  # not parsed: the caller vouched for the bytes, ``derived`` is
    # None until it ``settle``s the entry or the file is parsed


@dataclass(frozen=True)
class Resolved:
    """The directory reduced to what the planner needs."""

    desired: dict[str, Any]  # namespace → what derive made of it, duplicates removed
    errors: list[ManifestError]  # sorted by file
    keep: set[str]  # namespaces whose last good state must stay untouched
    broken_sources: set[str]  # names of files that failed to load
    files: dict[str, str]  # namespace in ``desired`` → the file claiming it


class DirectoryMissing(Exception):
    """The directory is gone (unmounted volume?): nothing may be pruned because of it."""


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Index:
    def __init__(self, root: Path, derive: Derive | None = None) -> None:
        self.root = Path(root)
        self.derive = derive
        self.entries: dict[str, Entry] = {}
        self.parsed = 0  # files parsed since the index was made (a counter, for metrics)

    def scan(self, recall: Recall | None = None) -> set[str]:
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
                        seen[de.name] = DANGLING
        gone = {n for n in self.entries if n not in seen}
        for name in gone:
            del self.entries[name]
        stale = {
            name: sig for name, sig in seen.items()
            if (entry := self.entries.get(name)) is None or entry.signature != sig
        }
        self._update(stale, recall)
        return gone | set(stale)

    def refresh(self, names: Iterable[str]) -> dict[str, str | None]:
        """Re-read just these files; returns name → namespace it held before (or None)."""
        before: dict[str, str | None] = {}
        stale: dict[str, Signature] = {}
        for name in names:
            old = self.entries.get(name)
            before[name] = old.result.namespace if old else None
            path = self.root / name
            try:
                st = path.stat()
            except OSError:
                if path.is_symlink():  # dangling link: report it rather than forget it
                    stale[name] = DANGLING
                else:
                    self.entries.pop(name, None)
                continue
            if old is None or old.signature != _signature(st):
                stale[name] = _signature(st)
        self._update(stale, None)
        return before

    def reparse(self, names: Iterable[str]) -> None:
        """Parse these files now, whatever was known of them: a recalled file whose keys
        in etcd turned out changed (only its manifest says what they should be)."""
        names = list(names)
        for name in names:
            self.entries.pop(name, None)
        self.refresh(names)

    def settle(self, name: str, derived: Any) -> None:
        """What a recalled file's bytes yield, found without parsing them (the sync: the
        keys etcd holds, proven to be their projection by the inventory's hashes)."""
        self.entries[name] = replace(self.entries[name], derived=derived, recalled=False)

    def namespaces_of(self, names: Iterable[str]) -> set[str]:
        out = set()
        for name in names:
            entry = self.entries.get(name)
            if entry and (ns := entry.result.namespace):
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
        desired, files = {}, {}
        for ns, claimants in claims.items():
            if len(claimants) == 1:
                desired[ns] = claimants[0].derived
                files[ns] = claimants[0].result.source  # type: ignore[union-attr]
                continue
            keep.add(ns)
            sources = [e.result.source for e in claimants]  # type: ignore[union-attr]
            for source in sources:
                others = ", ".join(f for f in sources if f != source)
                errors.append(
                    ManifestError(
                        source, f"namespace {ns} is also claimed by {others}; kept as it was", ns
                    )
                )
        errors.sort(key=lambda e: e.path)
        desired = {ns: d for ns, d in desired.items() if ns not in keep}
        files = {ns: f for ns, f in files.items() if ns not in keep}
        broken = {Path(e.path).name for e in errors if e.namespace is None}
        return Resolved(desired, errors, keep, broken, files)

    # -- reading and parsing -----------------------------------------------------------

    def _update(self, stale: dict[str, Signature], recall: Recall | None) -> None:
        """Read each stale file once, hash it, and parse only what nobody knows yet.
        Files go to the parser a batch at a time as they are read (``recall`` is asked
        about each batch), so a pool of parsers starts while the rest is still read."""
        parser = _Parser(self.derive)
        try:
            self._read_into(parser, stale, recall)
        except BaseException:
            parser.close()
            raise
        self.parsed += parser.count
        self.entries.update(parser.results())

    def _read_into(
        self, parser: _Parser, stale: dict[str, Signature], recall: Recall | None
    ) -> None:
        names = list(stale)
        for start in range(0, len(names), CHUNK):
            texts: dict[str, tuple[Signature, str, str]] = {}
            for name in names[start : start + CHUNK]:
                sig = stale[name]
                read = _read(self.root, name)
                if isinstance(read, ManifestError):
                    self.entries[name] = Entry(sig, read)
                    continue
                text, digest = read
                old = self.entries.get(name)
                if old is not None and old.digest == digest:  # same bytes, same result
                    self.entries[name] = replace(old, signature=sig)
                    continue
                texts[name] = (sig, text, digest)
            if recall is not None and texts:
                for name, namespace in recall({n: t[2] for n, t in texts.items()}).items():
                    sig, _, digest = texts.pop(name)
                    self.entries[name] = Entry(sig, Claim(namespace, name), None, digest, True)
            for name, (sig, text, digest) in texts.items():
                parser.add((name, sig, text, digest))


class _Parser:
    """Parses the files it is given: here while they are few, else in a pool of spawned
    processes, started as soon as ``PARALLEL_THRESHOLD`` files came and fed ``CHUNK`` at a
    time, so the workers' start-up (~0.3 s) overlaps reading the rest of the directory."""

    def __init__(self, derive: Derive | None) -> None:
        self.derive = derive
        self.count = 0
        self._items: list[tuple[str, Signature, str, str]] = []
        self._pool: Any = None
        self._futures: list[Any] = []
        self._workers = min(os.cpu_count() or 1, 8)

    def add(self, item: tuple[str, Signature, str, str]) -> None:
        self.count += 1
        self._items.append(item)
        if self._pool is None and self.count >= PARALLEL_THRESHOLD and self._workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._workers, mp_context=ctx)
        if self._pool is not None and len(self._items) >= CHUNK:
            self._submit()

    def _submit(self) -> None:
        self._futures.append(self._pool.submit(_parse_chunk, self._items, self.derive))
        self._items = []

    def results(self) -> dict[str, Entry]:
        if self._pool is None:
            return dict(_parse_chunk(self._items, self.derive))
        try:
            if self._items:
                self._submit()
            return {name: entry for f in self._futures for name, entry in f.result()}
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _read(root: Path, name: str) -> tuple[str, str] | ManifestError:
    """(text, sha256 of its bytes: what ``sha256sum`` prints for the file), or why it
    cannot be read. ``read_bytes`` is the only way a manifest is read (it refuses FIFOs,
    devices, symlinks leading out, files over 1 MiB)."""
    try:
        data = manifests.read_bytes(os.path.join(root, name), root, name=name)
        return manifests.decode(data, name), hashlib.sha256(data).hexdigest()
    except ManifestError as exc:
        return exc
    except OSError as exc:
        return ManifestError(name, f"cannot read: {exc.strerror or exc}")


def _parse_chunk(
    items: list[tuple[str, Signature, str, str]], derive: Derive | None
) -> list[tuple[str, Entry]]:
    out = []
    for name, sig, text, digest in items:
        try:
            cap = manifests.parse(text, name=name)
            entry = Entry(sig, Claim(cap.namespace, name),
                          derive(cap, digest) if derive else None, digest)
        except ManifestError as exc:
            entry = Entry(sig, exc, None, digest)
        out.append((name, entry))
    return out
