"""Prometheus metrics of one heartbeat daemon, on its own registry (so several daemons
can live in one test process), plus an exact beat-lag p99 over the last minute.

The loop and the round update them; ``daemon.py`` serves ``registry`` on /metrics."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Lags:
    """Beat lags (seconds from scheduled time to written) of the last ``window`` seconds,
    for an exact p99 and max; the histogram has the long view."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._lags: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, values: list[float]) -> None:
        now = self.clock()
        with self._lock:
            self._lags.extend((now, v) for v in values)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._lags and self._lags[0][0] < now - self.window:
            self._lags.popleft()

    def quantile(self, q: float) -> float:
        with self._lock:
            self._trim(self.clock())
            data = sorted(v for _, v in self._lags)
        if not data:
            return 0.0
        return data[min(len(data) - 1, int(q * len(data)))]


class Metrics:
    """Every metric of one heartbeat daemon, on its own ``registry``. The names are the
    ones services/heartbeat/README.md documents: keep them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.beats = Counter(
            "heartbeat_beats_written", "Health records written (one per service per beat)",
            registry=r,
        )
        self.rounds_failed = Counter(
            "heartbeat_rounds_failed", "Beat rounds that could not reach etcd", registry=r
        )
        self.lease_losses = Counter(
            "heartbeat_lease_losses",
            "Leases etcd no longer knew (expired, revoked, restored), replaced just in time",
            registry=r,
        )
        self.leases_granted = Counter(
            "heartbeat_leases_granted", "Leases granted", registry=r
        )
        self.leases_adopted = Counter(
            "heartbeat_leases_adopted", "Leases taken over from a previous daemon", registry=r
        )
        self.leases_revoked = Counter(
            "heartbeat_leases_revoked", "Leases revoked (service left the set, or exit)",
            registry=r,
        )
        self.services = Gauge("heartbeat_services_tracked", "Services heartbeated", registry=r)
        self.lag = Histogram(
            "heartbeat_beat_lag_seconds", "From a beat's scheduled time to its write in etcd",
            buckets=LAG_BUCKETS, registry=r,
        )
        self.lags = Lags()
        Gauge(
            "heartbeat_beat_lag_p99_seconds", "Exact p99 of the beat lags of the last 60 s",
            registry=r,
        ).set_function(lambda: self.lags.quantile(0.99))
        Gauge(
            "heartbeat_beat_lag_max_seconds", "Largest beat lag of the last 60 s", registry=r
        ).set_function(lambda: self.lags.quantile(1.0))
        self.probes = Counter(
            "heartbeat_probe_results", "Probe results", ["check", "result"], registry=r
        )
        self.leader = Gauge(
            "heartbeat_leader", "1 while this instance leads the heartbeat election and "
            "beats, 0 while it stands by (exactly one instance should report 1)", registry=r)

    def observe_lags(self, values: list[float]) -> None:
        for v in values:
            self.lag.observe(v)
        self.lags.add(values)
