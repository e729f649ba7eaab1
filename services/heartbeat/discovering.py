"""Where the service set comes from: etcd (default) or a directory of manifests.

Etcd: read the prefix at revision R, watch from R + 1 so nothing falls between them,
re-create the watch with backoff when it fails, re-read when the revision was compacted,
and re-read everything every ``resync`` seconds anyway (a watch on a member cut off from
the majority reports nothing). Each change hands the whole desired set to the scheduler,
which applies the difference: reconcile, don't replay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from chora_manifests import Capability
from services.core import keys
from services.core.backoff import Backoff
from services.core.errors import Compacted, StoreError
from services.core.scanning import DirectoryMissing, Index
from services.core.store import Store
from services.heartbeat.catalog import Adoption, Mirror, adoptions, reserved_counts
from services.heartbeat.checks import Check, check_from_document

Update = Callable[[Mapping[str, Check], Mapping[str, Adoption]], None]


def read_health(store: Store) -> tuple[dict[str, bytes], dict[str, Adoption], int]:
    """Every capability key (value) at one revision, and the adoption hints: the health
    keys plus the reserved counts (one more prefix read, not one read per service).
    The revision is the capabilities' (the watch goes on from there)."""
    kvs, revision = store.get_prefix(keys.CAPABILITIES)
    counts, _ = store.get_prefix(keys.HEARTBEAT_COUNTS)
    values = {k: kv.value for k, kv in kvs.items()}
    reserved = reserved_counts((k, kv.value) for k, kv in counts.items())
    hints = adoptions(((k, kv.value, kv.lease) for k, kv in kvs.items()), reserved)
    return values, hints, revision


class EtcdDiscovery(threading.Thread):
    def __init__(self, store: Store, update: Update, log: object, *, resync: float) -> None:
        super().__init__(name="discovery", daemon=True)
        self.store, self.update, self.log, self.resync = store, update, log, resync
        self._halt = threading.Event()
        self._watch_lock = threading.Lock()
        self._watch: object | None = None

    def stop(self) -> None:
        self._halt.set()
        with self._watch_lock:
            if self._watch is not None:
                self._watch.cancel()  # type: ignore[attr-defined]

    def run(self) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        while not self._halt.is_set():
            try:
                values, hints, revision = read_health(self.store)
            except StoreError as exc:
                delay = backoff.next()
                self.log.warning("reading the capabilities failed; retrying", error=str(exc),
                                 retry_in=round(delay, 2))
                self._halt.wait(delay)
                continue
            mirror = Mirror.from_kvs(values)
            self.update(mirror.services(), hints)
            try:
                self._follow(mirror, revision + 1, backoff)
            except Compacted as exc:
                self.log.info("watch revision compacted; re-reading", revision=exc.revision)
            except StoreError as exc:
                delay = backoff.next()
                self.log.warning("capability watch failed; re-reading", error=str(exc),
                                 retry_in=round(delay, 2))
                self._halt.wait(delay)

    def _follow(self, mirror: Mirror, start: int, backoff: Backoff) -> None:
        """Apply watch events until the stream fails or the resync timer cancels it."""
        with self._watch_lock:
            if self._halt.is_set():
                return
            watch = self.store.watch_prefix(keys.CAPABILITIES, start)
            self._watch = watch
        timer = threading.Timer(self.resync, watch.cancel)
        timer.daemon = True
        timer.start()
        try:
            for events in watch:
                backoff.reset()
                changed = False
                for ev in events:
                    changed |= mirror.apply(ev.kv.key, ev.kv.value if ev.kind == "put" else None)
                if changed:
                    self.update(mirror.services(), {})
        finally:
            timer.cancel()
            watch.cancel()
            with self._watch_lock:
                self._watch = None


def service_check(cap: Capability, digest: str = "") -> Check | None:
    """What the heartbeat derives from a manifest: its probe, if it is a Service (the
    scanner passes the file's sha256 too; a probe does not depend on it)."""
    return check_from_document(cap.document) if cap.type == "service" else None


class DirectoryDiscovery(threading.Thread):
    """``--capabilities DIR``: the Service manifests in a directory, rescanned every
    ``period`` seconds with the same scanner as the sync (same validity rules, same
    duplicate refusal, files re-parsed only when they change); the health keys in etcd
    are read once, for adoption."""

    def __init__(
        self, store: Store, directory: Path, update: Update, log: object, *, period: float
    ) -> None:
        super().__init__(name="discovery", daemon=True)
        self.store, self.directory, self.update, self.log = store, directory, update, log
        self.period = period
        self.index = Index(directory, derive=service_check)
        self._halt = threading.Event()
        self._reported: dict[str, str] = {}

    def stop(self) -> None:
        self._halt.set()

    def scan(self) -> dict[str, Check] | None:
        """The services in the directory; None when the directory is missing (an
        unmounted volume must not make every service leave the set)."""
        try:
            self.index.scan()
        except DirectoryMissing as exc:
            if self._reported.get("") != str(exc):
                self.log.error("service set kept as it was", reason=str(exc))
            self._reported = {"": str(exc)}
            return None
        resolved = self.index.resolve()
        errors = {e.path: e.reason for e in resolved.errors}
        for path, reason in errors.items():
            if self._reported.get(path) != reason:
                self.log.error("manifest skipped", path=path, reason=reason)
        self._reported = errors
        return {ns: check for ns, check in resolved.desired.items() if check is not None}

    def run(self) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        hints: dict[str, Adoption] = {}
        while not self._halt.is_set():
            try:
                _, hints, _ = read_health(self.store)
                break
            except StoreError as exc:
                self._halt.wait(backoff.next())
                self.log.warning("reading existing health keys failed; retrying",
                                 error=str(exc))
        while not self._halt.is_set():
            found = self.scan()
            if found is not None:
                self.update(found, hints)
                hints = {}
            self._halt.wait(self.period)
