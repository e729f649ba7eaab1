"""Probes: when each service is probed, the probe itself (HTTP GET or TCP connect), and
what becomes of its result.

Why apart from the beat: a probe may hang for its whole timeout, and a beat must never
wait for one. Probes run on a thread pool, each service at most once per interval, and
only leave their latest result behind; the loop collects the results at the start of a
tick and a beat writes whatever result is latest. A probe still running after its
timeout + 1 s counts as failed (and is not started again until it returns).

The I/O lives here and nowhere else in the heartbeat: ``checks.py`` is the pure
description of a probe (what the manifest declares), this module runs it.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from services.heartbeat.checks import HTTP, NONE, TCP, Check, ProbeResult
from services.heartbeat.metrics import Metrics
from services.heartbeat.schedule import Schedule, next_beat
from services.heartbeat.sessions import Session

OVERRUN = 1.0  # seconds past its timeout after which a running probe counts as failed


# -- the probes themselves ----------------------------------------------------------------


def probe_http(url: str, timeout: float) -> tuple[bool, str]:
    """Healthy on a 2xx answer to a GET within ``timeout``."""
    if not url.startswith(("http://", "https://")):
        return False, f"url {url!r} is not http(s)"
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "chora-heartbeat"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        return False, f"GET {url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"GET {url}: {reason}"
    if 200 <= status < 300:
        return True, ""
    return False, f"GET {url}: HTTP {status}"


def probe_tcp(target: str, timeout: float) -> tuple[bool, str]:
    """Healthy when a TCP connection to ``host:port`` opens within ``timeout``."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return False, f"tcp target {target!r} is not host:port"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"connect {target}: {exc.strerror or exc}"


def run_probe(check: Check) -> tuple[bool, str]:
    """(ok, reason) of one probe; a service without a check passes."""
    if check.kind == HTTP:
        return probe_http(check.target, check.timeout)
    if check.kind == TCP:
        return probe_tcp(check.target, check.timeout)
    return True, ""


# -- scheduling and results ---------------------------------------------------------------


class Probes:
    """Every service's probe: due times, the pool they run on, results waiting for the
    loop. Only ``_done`` runs on a pool thread; the rest is called by the loop's thread."""

    def __init__(
        self,
        *,
        interval: float,
        workers: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[Check], tuple[bool, str]] = run_probe,
    ) -> None:
        self.interval = interval
        self.metrics = metrics
        self.clock = clock
        self.schedule = Schedule()
        self._probe = probe
        self._pool = ThreadPoolExecutor(workers, "probe")
        self._results: deque[tuple[Session, Check, ProbeResult]] = deque()

    def plan(self, ns: str, check: Check, now: float) -> None:
        """A new service, or a new check: probe at once (or never, without a check)."""
        if check.kind == NONE:
            self.schedule.remove(ns)
        else:
            self.schedule.at(ns, now)

    def forget(self, ns: str) -> None:
        """The service left the set."""
        self.schedule.remove(ns)

    def start_due(self, now: float, sessions: Mapping[str, Session]) -> None:
        """Start the probes that are due, unless the previous one still runs."""
        for ns, when in self.schedule.pop_due(now):
            s = sessions.get(ns)
            if s is None or s.check.kind == NONE:
                continue
            self.schedule.at(ns, next_beat(when, now, self.interval))
            if s.probe is not None and not s.probe.done():
                running = now - s.probe_started
                if running > s.check.timeout + OVERRUN:
                    s.record_probe(ProbeResult(
                        False, f"probe still running after {running:.0f}s", now))
                continue
            check = s.check
            s.probe = self._pool.submit(self._probe, check)
            s.probe_started = now
            s.probe.add_done_callback(lambda f, s=s, c=check: self._done(s, c, f))

    def _done(self, s: Session, check: Check, fut: Future[tuple[bool, str]]) -> None:
        if fut.cancelled():
            return
        try:
            ok, reason = fut.result()
        except Exception as exc:
            ok, reason = False, f"probe error: {exc!r}"
        self._results.append((s, check, ProbeResult(ok, reason, self.clock())))

    def collect(self, sessions: Mapping[str, Session]) -> None:
        """Hand finished probes' results to their sessions; a result for a service that
        left, or for a check that changed meanwhile, is dropped."""
        while self._results:
            s, check, result = self._results.popleft()
            if sessions.get(s.namespace) is s and s.check == check:
                s.record_probe(result)
                self.metrics.probes.labels(check.kind, "ok" if result.ok else "fail").inc()

    def close(self) -> None:
        """Stop starting probes; running ones are abandoned (their threads end with their
        timeout)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
