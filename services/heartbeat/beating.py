"""The scheduler: one loop beats every service, none waits for another.

Each tick takes the services whose beat is due, refreshes all their leases over ONE
keep-alive stream (``Store.keepalive``), grants a lease just in time where etcd no longer
knows one, and writes their health records in batched transactions (at most
``MAX_TXN_OPS`` puts each, every put on its own service's lease). Probes run on a thread
pool and only leave their latest result behind; a beat writes whatever result is
latest, so a slow or hanging probe never delays anybody's beat. New services' beats
are spread evenly over the interval, so 10,000 services make a steady stream of small
rounds. Adopted leases (a restart) are refreshed at once, whatever time they have left,
then scattered over the interval the same way.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait

from services.core import keys
from services.core.backoff import Backoff
from services.core.errors import LeaseNotFound, StoreError
from services.core.kv import MAX_TXN_OPS, Put
from services.core.store import Store
from services.heartbeat.catalog import Adoption, diff
from services.heartbeat.checks import NONE, Check, ProbeResult, run_probe
from services.heartbeat.instruments import Instruments
from services.heartbeat.schedule import Schedule, next_beat
from services.heartbeat.sessions import Session
from services.heartbeat.settings import Settings
from services.heartbeat.states import DOWN, HEALTHY, Assessment, iso_utc, record

KEEPALIVE_CHUNK = 1000  # lease ids per keep-alive stream
STREAMS = 4  # parallel keep-alive streams (and txns) per round
MIN_STREAM = 50  # fewer leases than this share one stream
TICK = 0.1  # seconds between two rounds
Beat = tuple[Session, float, Assessment]  # session, scheduled time, what to write
Item = tuple[Beat, list[Put], int]  # a beat, its puts (record, count reservation), reserved


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


class Heartbeat:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        instruments: Instruments,
        log: object,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = instruments
        self.log = log
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.schedule = Schedule()
        self.probe_schedule = Schedule()
        self._lock = threading.Lock()
        self._pending: dict[str, Check] | None = None
        self._hints: dict[str, Adoption] = {}
        self._floors: dict[str, int] = {}  # counts of services without a session (left, hinted)
        self._probe_results: deque[tuple[Session, Check, ProbeResult]] = deque()
        self._revokes: deque[tuple[int, float, float]] = deque()  # lease, give up at, not before
        self._probe_pool = ThreadPoolExecutor(settings.probe_workers, "probe")
        self._lease_pool = ThreadPoolExecutor(settings.lease_workers, "lease")
        self._io_pool = ThreadPoolExecutor(STREAMS, "etcd-io")
        self._backoff = Backoff(initial=0.2, cap=max(0.5, min(5.0, settings.interval / 2)))
        self._late: dict[str, float] = {}  # first scheduled time of beats being retried
        self._last_attempt = float("-inf")  # last round or ping that tried to reach etcd
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.applied = threading.Event()  # the first service set has been applied

    # -- called from other threads -------------------------------------------------------

    def update(self, desired: Mapping[str, Check], hints: Mapping[str, Adoption]) -> None:
        """The whole desired service set (and adoption hints for services it may add)."""
        with self._lock:
            self._pending = dict(desired)
            self._hints.update(hints)

    def health(self) -> tuple[bool, dict[str, object]]:
        """For /healthz: did the last round reach etcd, recently enough?"""
        now = self.clock()
        fresh = self.settings.interval * 2 + self.settings.timeout
        age = None if self.last_ok is None else round(now - self.last_ok, 3)
        ok = self.last_error is None and age is not None and age <= fresh
        return ok, {
            "services": len(self.sessions),
            "seconds_since_etcd_reached": age,
            "error": self.last_error,
        }

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            now = self.clock()
            self.step(now)
            # A fixed tick, not "sleep until the next due beat": beats due within one tick
            # share a round (one keep-alive stream, one txn per 128), which is what makes
            # 10,000 services cheap. It costs at most one tick of lag.
            stop.wait(max(0.0, TICK - (self.clock() - now)))

    def step(self, now: float) -> None:
        """One tick: apply the service set, tend the probes, revoke, beat what is due.
        Separate from ``run`` so tests can drive the scheduler with a clock of their own."""
        self._apply_pending(now)
        self._collect_probe_results()
        self._start_probes(now)
        self._submit_revokes(now)
        due = self.schedule.pop_due(now)
        if due:
            self._beat(due)
        elif self.applied.is_set():
            self._ping(now)  # no beat due: prove etcd is reachable once per interval

    # -- the service set -----------------------------------------------------------------

    def _apply_pending(self, now: float) -> None:
        with self._lock:
            desired, hints = self._pending, self._hints
            self._pending, self._hints = None, {}
        if desired is None:
            return
        d = diff({ns: s.check for ns, s in self.sessions.items()}, desired)
        self._remove(d.removed, now)
        for ns, check in d.changed.items():
            self.sessions[ns].change_check(check)
            self._plan_probe(ns, check, now)
            self.log.info("health check changed", namespace=ns, check=check.kind,
                          target=check.target)
        for ns, hint in hints.items():
            if ns not in self.sessions and ns not in d.added:
                self._floors[ns] = max(self._floors.get(ns, 0), hint.count, hint.reserved)
        self._add(d.added, hints, now)
        self.metrics.services.set(len(self.sessions))
        self.applied.set()
        if d.removed:
            self._submit_revokes(now)

    def _remove(self, removed: list[str], now: float) -> None:
        """Revoke the leases of services that left, and store their exact counts (and
        remember them) so a rejoin continues the count instead of restarting it."""
        left: list[Session] = []
        for ns in removed:
            s = self.sessions.pop(ns)
            left.append(s)
            self.schedule.remove(ns)
            self._late.pop(ns, None)
            self.probe_schedule.remove(ns)
            self._floors[ns] = s.count
            if s.lease:
                self._revokes.append((s.lease, now + self.settings.ttl, 0.0))
            if s.retiring is not None:
                self._revokes.append((s.retiring[0], now + s.retiring[1], 0.0))
            if len(removed) <= 20:
                self.log.info("service left the set; revoking its lease", namespace=ns)
        if len(removed) > 20:
            self.log.info("services left the set; revoking their leases", count=len(removed))
        if left:
            self._save_counts(left, now + self.settings.timeout + 1.0)

    def _add(self, added: Mapping[str, Check], hints: Mapping[str, Adoption], now: float) -> None:
        """Start a session per new service. An adopted lease may have little time left
        (its daemon crashed up to an interval after its last refresh, and the restart
        took a while), so every adopted lease is due at once: the first round refreshes
        them all over the batched keep-alive streams. New services are spread evenly over
        one interval, so a thousand added at once make a steady stream of small rounds."""
        fresh: list[str] = []
        for ns, check in added.items():
            adoption = self._adoption(ns, hints.get(ns))
            s = Session.start(ns, check, keys.capability(ns, keys.HEALTH), adoption)
            self.sessions[ns] = s
            self._plan_probe(ns, check, now)
            if s.adopted:
                self.metrics.leases_adopted.inc()
                self.schedule.at(ns, now)
            else:
                fresh.append(ns)
            if len(added) <= 20:
                self.log.info("service joined the set", namespace=ns, check=check.kind,
                              adopted_lease=s.adopted, heartbeat_count=s.count)
        self.schedule.spread(fresh, now, self.settings.interval)
        if len(added) > 20:
            self.log.info("services joined the set", count=len(added),
                          adopted_leases=len(added) - len(fresh))

    def _adoption(self, ns: str, hint: Adoption | None) -> Adoption | None:
        """The hint read from etcd, raised to the count this daemon remembers for ``ns``
        (it left the set, or was in a hint before it became a service). With such a
        count the first beat reserves anew (``reserved=0``): the counts key may have been
        lowered to the exact count since the hint was read."""
        floor = self._floors.pop(ns, None)
        if floor is None:
            return hint
        if hint is None:
            return Adoption(0, floor, None)
        return Adoption(hint.lease, max(floor, hint.count, hint.reserved), hint.status)

    def _save_counts(self, sessions: Iterable[Session], deadline: float) -> int:
        """Store each session's exact count in its counts key, so the next start or rejoin
        continues without a jump: batched, in parallel, best effort until ``deadline``.
        A failure costs nothing but that jump: the key keeps its reservation, which is at
        least every count written. Returns how many were stored."""
        puts = [Put(keys.heartbeat_count(s.namespace), str(s.count).encode())
                for s in sessions if s.count]
        batches = [puts[i:i + MAX_TXN_OPS] for i in range(0, len(puts), MAX_TXN_OPS)]
        futures = [self._io_pool.submit(self.store.txn, [], batch) for batch in batches]
        done, late = wait(futures, timeout=max(0.1, deadline - self.clock()))
        for fut in late:
            fut.cancel()  # not sent yet: a late exact count could undercut a new reservation
        saved = sum(len(b) for f, b in zip(futures, batches, strict=True)
                    if f in done and f.exception() is None)
        if saved < len(puts):
            self.log.warning("could not store the exact heartbeat counts; the next start "
                             "continues from the reserved ones", stored=saved, of=len(puts))
        return saved

    def _submit_revokes(self, now: float) -> None:
        for _ in range(len(self._revokes)):
            lease, give_up, not_before = self._revokes.popleft()
            if now > give_up:
                continue  # expired by now anyway
            if now < not_before:
                self._revokes.append((lease, give_up, not_before))
                continue
            fut = self._lease_pool.submit(self.store.revoke, lease)
            fut.add_done_callback(lambda f, lease=lease, g=give_up: self._revoked(f, lease, g))

    def _revoked(self, fut: Future[None], lease: int, give_up: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._revokes.append((lease, give_up, self.clock() + 1.0))
        else:
            self.metrics.leases_revoked.inc()

    # -- probes --------------------------------------------------------------------------

    def _plan_probe(self, ns: str, check: Check, now: float) -> None:
        if check.kind == NONE:
            self.probe_schedule.remove(ns)
        else:
            self.probe_schedule.at(ns, now)

    def _start_probes(self, now: float) -> None:
        interval = self.settings.interval
        for ns, when in self.probe_schedule.pop_due(now):
            s = self.sessions.get(ns)
            if s is None or s.check.kind == NONE:
                continue
            self.probe_schedule.at(ns, next_beat(when, now, interval))
            if s.probe is not None and not s.probe.done():
                running = now - s.probe_started
                if running > s.check.timeout + 1.0:
                    s.record_probe(ProbeResult(
                        False, f"probe still running after {running:.0f}s", now))
                continue
            check = s.check
            s.probe = self._probe_pool.submit(run_probe, check)
            s.probe_started = now
            s.probe.add_done_callback(lambda f, s=s, c=check: self._probe_done(s, c, f))

    def _probe_done(self, s: Session, check: Check, fut: Future[tuple[bool, str]]) -> None:
        if fut.cancelled():
            return
        try:
            ok, reason = fut.result()
        except Exception as exc:
            ok, reason = False, f"probe error: {exc!r}"
        self._probe_results.append((s, check, ProbeResult(ok, reason, self.clock())))

    def _collect_probe_results(self) -> None:
        while self._probe_results:
            s, check, result = self._probe_results.popleft()
            if self.sessions.get(s.namespace) is s and s.check == check:
                s.record_probe(result)
                self.metrics.probes.labels(check.kind, "ok" if result.ok else "fail").inc()

    # -- beats ---------------------------------------------------------------------------

    def _beat(self, due: list[tuple[str, float]]) -> None:
        now = self.clock()
        self._last_attempt = now
        ttl, interval = self.settings.ttl, self.settings.interval
        beats: list[Beat] = []
        for ns, scheduled in due:
            s = self.sessions.get(ns)
            if s is None:
                continue
            a = s.assess(now, ttl)
            if a.renew:
                beats.append((s, scheduled, a))
                continue
            if s.status != DOWN:
                self.log.warning(
                    "service down: probe failing for longer than the TTL; its lease is no "
                    "longer renewed and its health key expires", namespace=ns, reason=a.reason)
                s.status = DOWN
                s.lease = 0  # a recovery starts on a fresh lease
            self.schedule.at(ns, next_beat(scheduled, now, interval))
        if not beats:
            return
        try:
            self._refresh([s for s, _, _ in beats])
        except StoreError as exc:
            self._failed(beats, exc)
            return
        unleased = [s for s, _, _ in beats if not s.lease]
        failed: list[Beat] = []
        error: StoreError | None = None
        if unleased:
            error = self._grant(unleased)
            failed = [b for b in beats if not b[0].lease]
            beats = [b for b in beats if b[0].lease]
        written, not_written, write_error = self._write(beats)
        done = self.clock()
        self._written(written, done)
        failed += not_written
        error = write_error or error
        if failed:
            self._failed(failed, error or StoreError("lease grant failed"))
        else:
            self._backoff.reset()
            self.last_ok, self.last_error = done, None

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
            for fut in [self._io_pool.submit(self.store.refresh_leases, c) for c in chunks]:
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
        it until then); the old lease is revoked once the key is off it (``_written``)."""
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

    def _grant(self, sessions: list[Session]) -> StoreError | None:
        """A new lease for each session, in parallel; the last error, if any failed."""
        futures = {self._lease_pool.submit(self.store.grant, self.settings.ttl): s
                   for s in sessions}
        done, _ = wait(futures, timeout=self.settings.timeout * 2 + 1)
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

    def _write(self, beats: list[Beat]) -> tuple[list[Beat], list[Beat], StoreError | None]:
        now, wall = self.clock(), time.time()
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
            if reserve:  # once per COUNT_BLOCK beats: no revision of its own, same txn
                puts.append(Put(keys.heartbeat_count(s.namespace), str(reserve).encode()))
            items.append((b, puts, reserve))
        written: list[Beat] = []
        failed: list[Beat] = []
        error: StoreError | None = None
        batches = pack(items)
        outcomes: list[BaseException | None]
        if len(batches) == 1:
            outcomes = [self._try_txn(batches[0])]
        else:
            outcomes = [f.result() for f in
                        [self._io_pool.submit(self._try_txn, batch) for batch in batches]]
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

    def _written(self, written: list[Beat], done: float) -> None:
        if not written:
            return
        interval = self.settings.interval
        lags = []
        for s, scheduled, a in written:
            scheduled = self._late.pop(s.namespace, scheduled)
            lags.append(done - scheduled)
            if s.respread:
                # Adopted: it beat at once, with every other adopted lease. Its next beat
                # goes to a random point of the coming interval, or they would all beat
                # in lockstep forever (one huge round per interval).
                s.respread = False
                self.schedule.at(s.namespace, done + interval * random.random())
            else:
                self.schedule.at(s.namespace,
                                 next_beat(scheduled, done, interval, random.random()))
            if s.retiring is not None:  # the key is on the new lease now
                lease, ttl = s.retiring
                s.retiring = None
                self._revokes.append((lease, done + ttl, 0.0))
            if a.status != s.status:
                if s.status is not None or a.status != HEALTHY:
                    self.log.info("status changed", namespace=s.namespace, status=a.status,
                                  previous=s.status, reason=a.reason or None)
                s.status = a.status
            s.lease_lost = False
        self.metrics.beats.inc(len(written))
        self.metrics.observe_lags(lags)

    def _failed(self, beats: list[Beat], error: StoreError) -> None:
        """etcd was not reached: try these again soon, backing off (capped, no spin)."""
        delay = self._backoff.next()
        retry_at = self.clock() + delay
        for s, scheduled, _ in beats:
            # remember the first scheduled time: the lag measures how late it finally lands
            self._late.setdefault(s.namespace, scheduled)
            self.schedule.at(s.namespace, retry_at)
        self.metrics.rounds_failed.inc()
        first = self.last_error is None
        self.last_error = str(error) or type(error).__name__
        if first or self._backoff.failures % 20 == 0:
            self.log.warning("beat round failed; retrying with backoff", error=self.last_error,
                             services=len(beats), retry_in=round(delay, 2),
                             failures=self._backoff.failures)

    def _ping(self, now: float) -> None:
        """No round lately (no services, or all down): prove etcd is reachable (/healthz)."""
        if now - self._last_attempt < self.settings.interval:
            return
        self._last_attempt = now
        try:
            self.store.revision()
        except StoreError as exc:
            self.last_error = str(exc)
            return
        self.last_ok, self.last_error = self.clock(), None

    # -- exit ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Leave the leases for a successor (refreshed one last time), or revoke them all."""
        deadline = self.clock() + self.settings.shutdown_timeout
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        leases = [s.lease for s in self.sessions.values() if s.lease]
        leases += [s.retiring[0] for s in self.sessions.values() if s.retiring is not None]
        if self.settings.revoke_on_exit:
            leases += [lease for lease, _, _ in self._revokes]
            futures = [self._lease_pool.submit(self.store.revoke, lease) for lease in leases]
            done, _ = wait(futures, timeout=max(0.1, deadline - self.clock()))
            ok = sum(1 for f in done if f.exception() is None)
            self.metrics.leases_revoked.inc(ok)
            self.log.info("revoked leases on exit (--revoke-on-exit): health keys removed",
                          revoked=ok, of=len(leases))
        else:
            refreshed = 0
            try:
                for i in range(0, len(leases), KEEPALIVE_CHUNK):
                    if self.clock() > deadline:
                        break
                    refreshed += len(self.store.refresh_leases(leases[i:i + KEEPALIVE_CHUNK]))
            except StoreError as exc:
                self.log.warning("final lease refresh failed", error=str(exc))
            self.log.info(
                "leaving leases in place for a successor: health keys stay for one TTL",
                leases=len(leases), refreshed=refreshed, ttl=self.settings.ttl)
        saved = self._save_counts(self.sessions.values(), deadline)
        self.log.info("stored the exact heartbeat counts for the next start", stored=saved)
        self._lease_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=False, cancel_futures=True)
