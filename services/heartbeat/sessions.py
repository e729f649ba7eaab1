"""One service's heartbeat session: its lease, its count, its probe history.

Like etcd's ``concurrency.Session``, minus the goroutine: the scheduler drives every
session from one loop. ``lease == 0`` means "no lease yet": the next beat grants one
just in time. A session may start from an ``Adoption`` (the lease and count a previous
daemon left on the health key), which is how a restart keeps every key present.

``heartbeat_count`` must never repeat, also when the health key is gone (expired before
a restart, or the service left and rejoins). A beat reserves counts ahead, ``COUNT_BLOCK``
at a time, in the counts key (``/chora/heartbeat/counts/{ns}``, no lease), in the same
txn as its health record: a write per ``COUNT_BLOCK`` beats, not per beat. Every count
ever written is at most the stored reservation, so a successor starts above it; after a
crash the count jumps by at most ``COUNT_BLOCK``. A clean stop (and a service leaving)
stores the exact count instead, so the next start continues without a jump.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from services.heartbeat.catalog import Adoption
from services.heartbeat.checks import Check, ProbeResult
from services.heartbeat.states import HEALTHY, UNKNOWN, Assessment, assess

COUNT_BLOCK = 100  # heartbeat_counts reserved per write of the counts key


@dataclass(eq=False)
class Session:
    namespace: str
    check: Check
    key: str
    lease: int = 0
    count: int = 0
    ceiling: int = 0  # the counts key covers counts up to here (it may hold more)
    adopted: bool = False
    respread: bool = False  # beats at once (adopted), then at a random point of an interval
    retiring: tuple[int, int] | None = None  # (lease, its TTL): revoke once the key moved off
    status: str | None = None  # the status last written (or left by the previous daemon)
    last: ProbeResult | None = None
    failing_since: float | None = None
    probe: Future[tuple[bool, str]] | None = field(default=None, repr=False)
    probe_started: float = 0.0
    lease_lost: bool = False  # logged once per loss, cleared by the next good write

    @classmethod
    def start(cls, namespace: str, check: Check, key: str, adoption: Adoption | None) -> Session:
        if adoption is None:
            return cls(namespace, check, key)
        adopted = adoption.lease != 0
        return cls(
            namespace, check, key, lease=adoption.lease,
            count=max(adoption.count, adoption.reserved), ceiling=adoption.reserved,
            adopted=adopted, respread=adopted, status=adoption.status,
        )

    def next_count(self, block: int = COUNT_BLOCK) -> int:
        """Advance the count for a beat. Returns the ceiling to reserve in the same txn
        as this beat's record when the counts key does not cover the new count yet, else
        0. Also advanced for a write that fails: counts may skip, never repeat."""
        self.count += 1
        return self.count + block if self.count > self.ceiling else 0

    def reserved(self, ceiling: int) -> None:
        """The txn holding a reservation succeeded: counts up to ``ceiling`` are covered."""
        self.ceiling = max(self.ceiling, ceiling)

    def record_probe(self, result: ProbeResult) -> None:
        self.last = result
        if result.ok:
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = result.at

    def change_check(self, check: Check) -> None:
        self.check = check
        self.last = None
        self.failing_since = None
        self.probe = None

    def assess(self, now: float, ttl: float) -> Assessment:
        a = assess(self.check.kind, self.last, self.failing_since, now, ttl)
        if a.status == UNKNOWN and self.status == HEALTHY and self.adopted:
            # Just restarted: keep saying what the previous daemon said until our own
            # first probe finishes, rather than blinking to "unknown".
            return Assessment(HEALTHY, True)
        return a
