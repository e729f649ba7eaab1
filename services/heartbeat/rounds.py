"""One beat round: the leases of the beats due in one tick refreshed, replaced where
etcd lost them, and the health records written, against a small ``LeaseStore``.

This is where etcd fails in interesting ways, so it stands apart from the loop (when to
beat) and from the probes (what to write), written against a Protocol instead of the
gRPC adapter: every failure path is unit-tested through an in-memory fake
(``tests/unit/test_rounds.py``); the loop passes the real ``Store``.

1. **Refresh** every lease over batched keep-alive streams (``refresh_leases``, up to
   ``STREAMS`` in parallel, at most ``KEEPALIVE_CHUNK`` leases each). etcd cannot be
   reached: the whole round fails and the loop retries it with backoff.
2. **Lost leases**: a keep-alive on a lease etcd no longer knows answers TTL 0 (it does
   not raise). The session drops it; logged once per loss, one line per round.
3. **TTL mismatch**: a keep-alive answers with the granted TTL, so an adopted lease
   granted with another ``--ttl`` shows at no extra cost. It is retired: a new lease is
   granted in this round and the record written on it (the key moves without a gap);
   the loop revokes the old lease once the key is off it.
4. **Grant** a lease, in parallel, for every session without one. A session whose grant
   failed is not written; the rest of the round goes on.
5. **Write** the records in txns of at most ``MAX_TXN_OPS`` puts, each put on its own
   service's lease, a count reservation in the same txn as its record (``pack``).
6. **Fallback**: a txn failing with ``LeaseNotFound`` (a lease expired between the
   refresh and the write) is retried beat by beat; the culprit gets a fresh lease.
   Any other failure leaves that txn's beats for the loop to retry.

Counts may skip, never repeat: ``Session.next_count`` advances also for a write that
fails, and a reservation counts only once its txn succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from services.core import keys
from services.core.errors import LeaseNotFound, StoreError
from services.core.kv import MAX_TXN_OPS, Op, Put, Unchanged
from services.heartbeat.metrics import Metrics
from services.heartbeat.sessions import Session
from services.heartbeat.settings import Settings
from services.heartbeat.states import Assessment, iso_utc, record

KEEPALIVE_CHUNK = 1000  # lease ids per keep-alive stream
STREAMS = 4  # parallel keep-alive streams (and txns) per round
MIN_STREAM = 50  # fewer leases than this share one stream
Beat = tuple[Session, float, Assessment]  # session, scheduled time, what to write
Item = tuple[Beat, list[Put], int]  # a beat, its puts (record, count reservation), reserved


class LeaseStore(Protocol):
    """What a round needs of etcd (``services.core.store.Store`` has it all). Every call
    raises a ``StoreError``: ``Unavailable`` when etcd cannot be reached in time,
    ``LeaseNotFound`` when a put names a lease etcd no longer knows."""

    def refresh_leases(self, lease_ids: Iterable[int]) -> dict[int, int]:
        """One keep-alive per lease: {lease id: granted TTL}, 0 for an unknown lease."""
        ...

    def grant(self, ttl: int) -> int:
        """A new lease with ``ttl`` seconds: its id."""
        ...

    def revoke(self, lease_id: int) -> None:
        """Revoke; an unknown lease counts as revoked."""
        ...

    def txn(self, guards: Iterable[Unchanged], ops: Iterable[Op]) -> tuple[bool, int]:
        """Apply ``ops`` atomically: (succeeded, revision)."""
        ...


def pack(items: list[Item], limit: int = MAX_TXN_OPS) -> list[list[Item]]:
    """Items in order, in batches of at most ``limit`` puts, never splitting an item: a
    record and the count reservation it needs land in the same txn, or neither does."""
    batches: list[list[Item]] = []
    batch: list[Item] = []
    ops = 0
    for item in items:
        if batch and ops + len(item[1]) > limit:
            batches.append(batch)
            batch, ops = [], 0
        batch.append(item)
        ops += len(item[1])
    if batch:
        batches.append(batch)
    return batches


@dataclass
class Outcome:
    """What one round did: ``written`` beats are in etcd; ``failed`` ones are not (etcd
    unreachable, a grant or a txn failed) and ``error`` says why (the last error seen)."""

    written: list[Beat] = field(default_factory=list)
    failed: list[Beat] = field(default_factory=list)
    error: StoreError | None = None
    done: float = 0.0  # the loop's clock once the writes were acknowledged


class Round:
    """The round's machinery, reused by every tick of one loop. The executors belong to
    the loop: ``io`` runs the keep-alive streams and txns of one round in parallel,
    ``leases`` the grants."""

    def __init__(
        self,
        store: LeaseStore,
        settings: Settings,
        metrics: Metrics,
        log: FilteringBoundLogger,
        *,
        io: Executor,
        leases: Executor,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.wall = wall
        self._io = io
        self._leases = leases

    def run(self, beats: list[Beat]) -> Outcome:
        """Refresh, replace, grant and write for ``beats`` (sessions whose probe history
        says renew). Never raises a ``StoreError``: it ends up in the outcome."""
        try:
            self._refresh([s for s, _, _ in beats])
        except StoreError as exc:
            return Outcome(failed=list(beats), error=exc, done=self.clock())
        failed: list[Beat] = []
        error: StoreError | None = None
        if any(not s.lease for s, _, _ in beats):
            error = self._grant([s for s, _, _ in beats if not s.lease])
            failed = [b for b in beats if not b[0].lease]
            beats = [b for b in beats if b[0].lease]
        written, not_written, write_error = self._write(beats)
        done = self.clock()
        for s, _, _ in written:
            s.lease_lost = False  # a new loss gets logged again
        failed += not_written
        error = write_error or error
        if failed and error is None:
            error = StoreError("lease grant failed")
        return Outcome(written, failed, error, done)

    # -- 1-3: refresh, lost leases, TTL mismatch ------------------------------------------

    def _refresh(self, sessions: list[Session]) -> None:
        """One keep-alive per lease over a few parallel streams (etcd answers the messages
        of one stream one by one, forwarding each to the leader); unknown leases → 0."""
        leased = [s for s in sessions if s.lease]
        if not leased:
            return
        size = min(KEEPALIVE_CHUNK, max(MIN_STREAM, -(-len(leased) // STREAMS)))
        chunks = [[s.lease for s in leased[i:i + size]] for i in range(0, len(leased), size)]
        ttls: dict[int, int] = {}
        if len(chunks) == 1:
            ttls = self.store.refresh_leases(chunks[0])
        else:
            for fut in [self._io.submit(self.store.refresh_leases, c) for c in chunks]:
                ttls.update(fut.result())  # re-raises the first StoreError
        lost: list[Session] = []
        other_ttl: list[tuple[Session, int]] = []
        for s in leased:
            granted = ttls.get(s.lease, 0)  # a keep-alive answers with the granted TTL
            if granted <= 0:
                lost.append(s)
            elif s.adopted and granted != self.settings.ttl:
                other_ttl.append((s, granted))
        self._lost(lost)
        self._retire(other_ttl)

    def _retire(self, found: list[tuple[Session, int]]) -> None:
        """Adopted leases granted with a TTL other than --ttl (the previous daemon ran with
        another one): a new lease is granted in this same round and the record written on
        it, which moves the key without a gap (the old lease was just refreshed and holds
        it until then); the loop revokes the old lease once the key is off it."""
        if not found:
            return
        for s, granted in found:
            s.retiring = (s.lease, granted)
            s.lease = 0
        self.log.info(
            "adopted leases have a TTL other than --ttl; granting new ones",
            count=len(found), adopted_ttls=sorted({g for _, g in found}), ttl=self.settings.ttl,
            namespaces=[s.namespace for s, _ in found[:10]],
        )

    def _lost(self, sessions: list[Session]) -> None:
        """Leases etcd no longer knows: dropped, to be granted anew just in time; each
        loss counted and logged once (``lease_lost`` holds until a good write)."""
        fresh = [s for s in sessions if not s.lease_lost]
        for s in sessions:
            s.lease = 0
            s.lease_lost = True
        if not fresh:
            return
        self.metrics.lease_losses.inc(len(fresh))
        adopted = sum(1 for s in fresh if s.adopted and s.count and s.status is not None)
        self.log.warning(
            "etcd no longer knows these leases (expired, revoked or restored); granting "
            "new ones and rewriting the keys", count=len(fresh), adopted=adopted,
            namespaces=[s.namespace for s in fresh[:10]],
        )

    # -- 4: grant -------------------------------------------------------------------------

    def _grant(self, sessions: list[Session]) -> StoreError | None:
        """A new lease for each session, in parallel; the last error, if any failed."""
        futures = {self._leases.submit(self.store.grant, self.settings.ttl): s
                   for s in sessions}
        done, _ = wait(futures, timeout=self.settings.etcd_timeout * 2 + 1)
        error: StoreError | None = None
        for fut, s in futures.items():
            if fut in done and fut.exception() is None:
                s.lease = fut.result()
                s.adopted = False
                self.metrics.leases_granted.inc()
            else:
                exc = fut.exception() if fut in done else None
                error = exc if isinstance(exc, StoreError) else StoreError(repr(exc))
        return error

    # -- 5-6: write, and the one-by-one fallback ------------------------------------------

    def _items(self, beats: list[Beat]) -> list[Item]:
        """Each beat's puts: its record on its lease, and a count reservation when the
        counts key no longer covers the new count (once per ``COUNT_BLOCK`` beats)."""
        now, wall = self.clock(), self.wall()
        stamp = iso_utc(wall)
        items: list[Item] = []
        for b in beats:
            s, _, a = b
            reserve = s.next_count()
            since = None
            if s.failing_since is not None:
                since = iso_utc(wall - (now - s.failing_since))
            value = record(
                namespace=s.namespace, count=s.count, assessment=a, check_kind=s.check.kind,
                timestamp=stamp, ttl=self.settings.ttl, interval=self.settings.interval,
                failing_since=since,
            )
            puts = [Put(s.key, value, s.lease)]
            if reserve:  # no revision of its own: same txn as the record
                puts.append(Put(keys.heartbeat_count(s.namespace), str(reserve).encode()))
            items.append((b, puts, reserve))
        return items

    def _write(self, beats: list[Beat]) -> tuple[list[Beat], list[Beat], StoreError | None]:
        written: list[Beat] = []
        failed: list[Beat] = []
        error: StoreError | None = None
        batches = pack(self._items(beats))
        outcomes: list[BaseException | None]
        if len(batches) == 1:
            outcomes = [self._try_txn(batches[0])]
        else:
            outcomes = [f.result() for f in
                        [self._io.submit(self._try_txn, batch) for batch in batches]]
        for batch, outcome in zip(batches, outcomes, strict=True):
            if outcome is None:
                for b, _, reserve in batch:
                    b[0].reserved(reserve)
                    written.append(b)
            elif isinstance(outcome, LeaseNotFound):
                w, f, e = self._write_each(batch)
                written += w
                failed += f
                error = e or error
            else:
                failed += [b for b, _, _ in batch]
                error = outcome if isinstance(outcome, StoreError) else StoreError(repr(outcome))
        return written, failed, error

    def _try_txn(self, batch: list[Item]) -> BaseException | None:
        try:
            self.store.txn([], [p for _, puts, _ in batch for p in puts])
        except StoreError as exc:
            return exc
        return None

    def _write_each(self, batch: list[Item]) -> tuple[list[Beat], list[Beat], StoreError | None]:
        """A batch failed on a lease etcd just forgot: find it, replace it, write each."""
        written: list[Beat] = []
        failed: list[Beat] = []
        error: StoreError | None = None
        for b, puts, reserve in batch:
            s = b[0]
            try:
                try:
                    self.store.txn([], puts)
                except LeaseNotFound:
                    self._lost([s])
                    s.lease = self.store.grant(self.settings.ttl)
                    s.adopted = False
                    self.metrics.leases_granted.inc()
                    record_put = puts[0]
                    self.store.txn([], [Put(record_put.key, record_put.value, s.lease),
                                        *puts[1:]])
                s.reserved(reserve)
                written.append(b)
            except StoreError as exc:
                failed.append(b)
                error = exc
        return written, failed, error
