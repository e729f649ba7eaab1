"""The heartbeat's loop: one thread beats every service, none waits for another.

Every ``TICK`` (0.1 s) the loop applies the latest service set discovery handed over,
hands finished probes' results to their sessions and starts the probes that are due
(``probing.py``), sends the revokes that are queued, and takes the beats that are due
into one round (``rounds.py``: refresh over batched keep-alive streams, grant, batched
write). A fixed tick, not "sleep until the next due beat": beats due within one tick
share a round, which is what makes 10,000 services cheap, at the cost of at most one
tick of lag. New services' beats are spread evenly over the interval, so 10,000
services make a steady stream of small rounds. Adopted leases (a restart) are
refreshed at once, whatever time they have left, then scattered over the interval.

A round that fails (etcd unreachable) is retried with capped backoff; with nothing to
beat, a ping proves etcd reachable once per interval, for ``liveness`` (/healthz).
``finish`` leaves every lease for a successor (refreshed one last time) or revokes
them (``--revoke-on-exit``), and stores the exact counts.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from services.core import keys
from services.core.backoff import Backoff
from services.core.errors import StoreError
from services.core.kv import MAX_TXN_OPS, Put
from services.heartbeat.catalog import Adoption, delta
from services.heartbeat.checks import Check
from services.heartbeat.metrics import Metrics
from services.heartbeat.probing import Probes
from services.heartbeat.revoking import Revokes
from services.heartbeat.rounds import KEEPALIVE_CHUNK, STREAMS, Beat, LeaseStore, Round
from services.heartbeat.schedule import Schedule, next_beat
from services.heartbeat.sessions import Session
from services.heartbeat.settings import Settings
from services.heartbeat.states import DOWN, HEALTHY

TICK = 0.1  # seconds between two rounds
DETAILED_LOG_LIMIT = 20  # more services joining or leaving at once: one summary line


class LoopStore(LeaseStore, Protocol):
    """What the loop needs of etcd beyond the round's calls."""

    def revision(self) -> int:
        """The cluster's revision by a linearizable read: proves a quorum answers."""
        ...


class Heartbeat:
    """The loop of one daemon: ``update`` and ``liveness`` may be called from any thread,
    everything else from the thread that runs ``run`` (or a test calling ``step``)."""

    def __init__(
        self,
        store: LoopStore,
        settings: Settings,
        metrics: Metrics,
        log: FilteringBoundLogger,
        *,
        clock: Callable[[], float] = time.monotonic,
        may_revoke: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.schedule = Schedule()
        self._lock = threading.Lock()
        self._pending: dict[str, Check] | None = None
        self._hints: dict[str, Adoption] = {}
        self._floors: dict[str, int] = {}  # counts of services without a session (left, hinted)
        self._lease_pool = ThreadPoolExecutor(settings.lease_workers, "lease")
        self._io_pool = ThreadPoolExecutor(STREAMS, "etcd-io")
        # A revoke is not a transaction, so the store's fence cannot guard it: asked
        # before each batch (a leader frozen and replaced must not revoke a lease its
        # successor adopted).
        self.revokes = Revokes(store, self._lease_pool, metrics, clock, may_revoke)
        self.probes = Probes(interval=settings.interval, workers=settings.probe_workers,
                             metrics=metrics, clock=clock)
        self.round = Round(store, settings, metrics, log, io=self._io_pool,
                           leases=self._lease_pool, clock=clock)
        self._backoff = Backoff(initial=0.2, cap=max(0.5, min(5.0, settings.interval / 2)))
        self._late: dict[str, float] = {}  # first scheduled time of beats being retried
        self._last_attempt = float("-inf")  # last round or ping that tried to reach etcd
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.applied = threading.Event()  # the first service set has been applied
        # Taking over from another leader (or from this process's own lost term): every
        # service is due at once, those without a lease to adopt too. Their health keys
        # may be gone (a quorum loss, a frozen etcd leader revoking what it thinks
        # expired), and a consumer reads a missing key as "down".
        self.catch_up = False

    # -- called from other threads -------------------------------------------------------

    def update(self, desired: Mapping[str, Check], hints: Mapping[str, Adoption]) -> None:
        """The whole desired service set (and adoption hints for services it may add)."""
        with self._lock:
            self._pending = dict(desired)
            self._hints.update(hints)

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """For /healthz: did the last round (or ping) reach etcd, recently enough?"""
        now = self.clock()
        fresh = self.settings.interval * 2 + self.settings.etcd_timeout
        age = None if self.last_ok is None else round(now - self.last_ok, 3)
        ok = self.last_error is None and age is not None and age <= fresh
        return ok, {
            "services": len(self.sessions),
            "seconds_since_etcd_reached": age,
            "error": self.last_error,
        }

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; ``finish`` is the caller's next step."""
        while not stop.is_set():
            now = self.clock()
            self.step(now)
            stop.wait(max(0.0, TICK - (self.clock() - now)))

    def step(self, now: float) -> None:
        """One tick: apply the service set, tend the probes, revoke, beat what is due.
        Separate from ``run`` so tests can drive the loop with a clock of their own."""
        self._apply_pending(now)
        self.probes.collect(self.sessions)
        self.probes.start_due(now, self.sessions)
        self.revokes.submit(now)
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
        c = delta({ns: s.check for ns, s in self.sessions.items()}, desired)
        self._remove(c.removed, now)
        for ns, check in c.changed.items():
            self.sessions[ns].change_check(check)
            self.probes.plan(ns, check, now)
            self.log.info("health check changed", namespace=ns, check=check.kind,
                          target=check.target)
        for ns, hint in hints.items():
            if ns not in self.sessions and ns not in c.added:
                self._floors[ns] = max(self._floors.get(ns, 0), hint.count, hint.reserved)
        self._add(c.added, hints, now)
        self.metrics.services.set(len(self.sessions))
        self.applied.set()
        if c.removed:
            self.revokes.submit(now)

    def _remove(self, removed: list[str], now: float) -> None:
        """Revoke the leases of services that left, and store their exact counts (and
        remember them) so a rejoin continues the count instead of restarting it."""
        left: list[Session] = []
        for ns in removed:
            s = self.sessions.pop(ns)
            left.append(s)
            self.schedule.remove(ns)
            self._late.pop(ns, None)
            self.probes.forget(ns)
            self._floors[ns] = s.count
            if s.lease:
                self.revokes.add(s.lease, now + self.settings.ttl)
            if s.retiring is not None:
                self.revokes.add(s.retiring[0], now + s.retiring[1])
            if len(removed) <= DETAILED_LOG_LIMIT:
                self.log.info("service left the set; revoking its lease", namespace=ns)
        if len(removed) > DETAILED_LOG_LIMIT:
            self.log.info("services left the set; revoking their leases", count=len(removed))
        if left:
            self._save_counts(left, now + self.settings.etcd_timeout + 1.0)

    def _add(self, added: Mapping[str, Check], hints: Mapping[str, Adoption], now: float) -> None:
        """Start a session per new service. An adopted lease may have little time left
        (its daemon crashed up to an interval after its last refresh, and the restart
        took a while), so every adopted lease is due at once: the first round refreshes
        them all over the batched keep-alive streams. New services are spread evenly over
        one interval, so a thousand added at once make a steady stream of small rounds,
        except when catching up after a takeover: then they are due at once too."""
        fresh: list[str] = []
        for ns, check in added.items():
            adoption = self._adoption(ns, hints.get(ns))
            s = Session.start(ns, check, keys.capability(ns, keys.HEALTH), adoption)
            self.sessions[ns] = s
            self.probes.plan(ns, check, now)
            if s.adopted:
                self.metrics.leases_adopted.inc()
                self.schedule.at(ns, now)
            elif self.catch_up:
                s.respread = True
                self.schedule.at(ns, now)
            else:
                fresh.append(ns)
            if len(added) <= DETAILED_LOG_LIMIT:
                self.log.info("service joined the set", namespace=ns, check=check.kind,
                              adopted_lease=s.adopted, heartbeat_count=s.count)
        self.schedule.spread(fresh, now, self.settings.interval)
        if len(added) > DETAILED_LOG_LIMIT:
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

    # -- beats ---------------------------------------------------------------------------

    def _beat(self, due: list[tuple[str, float]]) -> None:
        """The due sessions whose probe history says renew go into one round; the others
        are down: their lease is no longer refreshed and their key expires."""
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
        outcome = self.round.run(beats)
        self._written(outcome.written, outcome.done)
        if outcome.failed:
            self._failed(outcome.failed, outcome.error or StoreError("round failed"))
        else:
            self._backoff.reset()
            self.last_ok, self.last_error = outcome.done, None

    def _written(self, written: list[Beat], done: float) -> None:
        """Schedule each written beat's next one, revoke a retired lease now that the key
        is off it, log status changes, measure the lag."""
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
                self.revokes.add(lease, done + ttl)
            if a.status != s.status:
                if s.status is not None or a.status != HEALTHY:
                    self.log.info("status changed", namespace=s.namespace, status=a.status,
                                  previous=s.status, reason=a.reason or None)
                s.status = a.status
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

    def abandon(self) -> None:
        """This loop's term as leader ended without a stop (its session was lost, or a
        write was fenced): write nothing more, leave every lease to the next leader."""
        self.probes.close()
        self._lease_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        self.log.info("no longer leading: leases left to the next leader",
                      services=len(self.sessions))

    def finish(self) -> None:
        """Leave the leases for a successor (refreshed one last time), or revoke them all;
        then store the exact counts. Bounded: ``shutdown_timeout`` plus at most one etcd
        deadline (a call in flight when the time is up)."""
        deadline = self.clock() + self.settings.shutdown_timeout
        self.probes.close()
        leases = [s.lease for s in self.sessions.values() if s.lease]
        leases += [s.retiring[0] for s in self.sessions.values() if s.retiring is not None]
        if self.settings.revoke_on_exit:
            leases += self.revokes.leases()
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
