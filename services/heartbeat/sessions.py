"""One service's heartbeat session: its lease, its count, its probe history.

Like etcd's ``concurrency.Session``, minus the goroutine: the scheduler drives every
session from one loop. ``lease == 0`` means "no lease yet": the next beat grants one
just in time. A session may start from an ``Adoption`` (the lease and count a previous
daemon left on the health key), which is how a restart keeps every key present.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from services.heartbeat.catalog import Adoption
from services.heartbeat.checks import Check, ProbeResult
from services.heartbeat.states import HEALTHY, UNKNOWN, Assessment, assess


@dataclass(eq=False)
class Session:
    namespace: str
    check: Check
    key: str
    lease: int = 0
    count: int = 0
    adopted: bool = False
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
        return cls(
            namespace, check, key, lease=adoption.lease, count=adoption.count,
            adopted=adoption.lease != 0, status=adoption.status,
        )

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
