"""File events → debounced batches of file names to reconcile.

watchdog has no debounce, reports an editor's temp-file-and-rename save as a move and
silently drops inotify overflows. So events only name *which* files to look at; the
reconciler reads each file's current state once the burst has gone quiet, and the
periodic full reconcile heals whatever was missed.

watchdog is imported when a watch starts: ``--once`` never starts one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING

import chora_manifests as manifests

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent

RESCAN = "*"  # a batch holding this asks for a full reconcile (a directory changed)


class Debouncer:
    """Collects names (file names, ``RESCAN``, or other hashable marks such as a drifted
    namespace); ``take()`` returns them once no new one arrived for ``quiet`` seconds
    (or ``max_delay`` after the first, so a steady stream still flushes)."""

    def __init__(self, quiet: float = 0.05, max_delay: float = 1.0) -> None:
        self.quiet, self.max_delay = quiet, max_delay
        self._names: set[Hashable] = set()
        self._first = self._last = 0.0
        self._cond = threading.Condition()

    def add(self, *names: Hashable) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._names:
                self._first = now
            self._names.update(names)
            self._last = now
            self._cond.notify()

    def take(self, timeout: float) -> set[Hashable]:
        """Wait up to ``timeout`` seconds for names, then until they are quiet."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._names:
                    ready = min(self._last + self.quiet, self._first + self.max_delay)
                    if now >= ready:
                        names, self._names = self._names, set()
                        return names
                    self._cond.wait(ready - now)
                elif now >= deadline:
                    return set()
                else:
                    self._cond.wait(deadline - now)


class _Handler:
    """What watchdog's observer calls with each event (all it asks for is ``dispatch``)."""

    def __init__(self, root: Path, sink: Debouncer) -> None:
        self.root, self.sink = root, sink

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory:
            if Path(str(event.src_path)) != self.root:
                self.sink.add(RESCAN)
            return
        names = []
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = Path(str(raw))
            if path.parent == self.root and manifests.is_manifest_name(path.name):
                names.append(path.name)
        if names:
            self.sink.add(*names)


class Watcher:
    """inotify watches a directory's inode, not its path: once the directory is deleted
    or replaced (a volume re-mounted, a checkout swapped in by rename) no event arrives
    ever again. ``stale()`` tells the loop to watch the new directory instead."""

    def __init__(self, root: Path, sink: Debouncer) -> None:
        from watchdog.observers import Observer

        self._observer = Observer()
        self._observer.daemon = True
        self._path = Path(root)  # as given: a symlink swapped to a new target is a new dir
        self._identity = _identity(self._path)
        resolved = self._path.resolve()
        self._observer.schedule(_Handler(resolved, sink), str(resolved), recursive=False)

    def stale(self) -> bool:
        return _identity(self._path) != self._identity

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
