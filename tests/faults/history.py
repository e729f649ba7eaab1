"""After-the-fact replay of etcd's revision history, and what an operator reads off it.

Why replay: a live ``etcdctl watch`` (or any watch) dies with the quorum and reconnects
from "now", so it undercounts exactly the deletions a fault causes. etcd keeps every
revision until compaction, so a watch opened *after* the fault from the revision read
*before* it delivers the complete history, in order, however the cluster behaved
meanwhile. ``replay`` does that; ``History`` turns it into capability keys lost, health
keys expired, and how long until things were right again.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from services.core import keys
from services.core.store import Store

ROOT = "/"  # every key the project writes starts with "/"


class RevisionClock:
    """(monotonic time, cluster revision) samples taken every ``period`` seconds, so a
    revision found by the replay can be given a time: the first sample that had reached
    it is an upper bound on when it was committed (error: one period plus one write).

    Each sample is a write of the clock's own key (outside "/", so replays skip it): the
    revision a committed put answers with is the cluster's, from the leader's raft log.
    A read could answer from a member that had not caught up after the fault (CI saw the
    clock stuck at a revision from before the outage, every gap then "never back").
    Sent over etcd's HTTP gateway, one short request at a time, rotating through the
    members on failure: no gRPC channel whose state a fault could leave stuck."""

    KEY = base64.b64encode(b"faults-clock").decode()

    def __init__(self, endpoints: list[str], period: float = 0.1) -> None:
        self.samples: list[tuple[float, int]] = []
        self.errors: list[str] = []  # the last few failed samples, for a failing test's message
        self.failures = 0
        self._urls = [f"http://{e}/v3/kv/put" for e in endpoints]
        self._http = httpx.Client(timeout=0.5)
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="revision-clock", daemon=True)
        self._thread.start()

    def _revision(self, url: str) -> int:
        resp = self._http.post(url, json={"key": self.KEY, "value": ""})
        resp.raise_for_status()
        return int(resp.json()["header"]["revision"])

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            url = self._urls[turn % len(self._urls)]
            try:
                rev = self._revision(url)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                self.failures += 1
                self.errors = [*self.errors[-4:], f"{url}: {type(exc).__name__}: {exc}"]
                turn += 1  # try the next member
                rev = 0
            if rev:
                self.samples.append((time.monotonic(), rev))
            self._stop.wait(self._period)

    def describe(self) -> str:
        last = self.samples[-1] if self.samples else None
        age = f"{time.monotonic() - last[0]:.1f} s ago" if last else "never"
        return (f"clock: {len(self.samples)} samples, first {self.samples[:1]}, last five "
                f"{[rev for _, rev in self.samples[-5:]]}, last {last} ({age}), "
                f"{self.failures} failed, latest errors {self.errors}")

    def time_of(self, revision: int) -> float | None:
        for t, rev in self.samples:
            if rev >= revision:
                return t
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._http.close()


# -- replay --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    kind: str  # "put" | "delete"
    value: bytes


def replay(
    store: Store, prefix: str, from_revision: int, to_revision: int, timeout: float = 60.0
) -> dict[str, list[Change]]:
    """Every change of every key under ``prefix`` with from_revision <= revision <=
    to_revision, per key in revision order, from etcd's own history (after the fact).

    The watch is opened on the whole key space ("/"), not just ``prefix``: every revision
    is an event somewhere, so seeing one at or beyond ``to_revision`` proves the history
    up to it is complete even when nothing under ``prefix`` changed at the end. Bounded:
    the watch is cancelled after ``timeout`` seconds, and an incomplete history fails.
    (Keys the tests write outside "/" — the NOSPACE filler — stay out of the stream, so
    their large values never exceed gRPC's message limit.)"""
    out: dict[str, list[Change]] = {}
    watch = store.watch_prefix(ROOT, from_revision)
    timer = threading.Timer(timeout, watch.cancel)
    timer.start()
    reached = 0
    try:
        for events in watch:
            for ev in events:
                rev = ev.kv.mod_revision
                reached = max(reached, rev)
                if rev > to_revision:
                    continue
                if ev.kv.key.startswith(prefix):
                    out.setdefault(ev.kv.key, []).append(
                        Change(rev, ev.kind, ev.kv.value if ev.kind == "put" else b""))
            if reached >= to_revision:
                break
    finally:
        timer.cancel()
        watch.cancel()
    if reached < to_revision:
        raise AssertionError(
            f"replay of {prefix} from {from_revision} reached only {reached} of {to_revision} "
            f"within {timeout}s")
    return out


@dataclass
class History:
    """The state at ``start`` (a snapshot read at one revision) and every change after it,
    up to ``end``: what the scenario's judgement is computed from."""

    start: int
    end: int
    baseline: dict[str, bytes]
    changes: dict[str, list[Change]]

    def final(self) -> dict[str, bytes]:
        state = dict(self.baseline)
        for key, changes in self.changes.items():
            last = changes[-1]
            if last.kind == "put":
                state[key] = last.value
            else:
                state.pop(key, None)
        return state

    def then(self, later: History) -> History:
        """This history continued by ``later`` (which starts where this one ends)."""
        assert later.start == self.end, (self.end, later.start)
        changes = {k: list(v) for k, v in self.changes.items()}
        for key, more in later.changes.items():
            changes.setdefault(key, []).extend(more)
        return History(self.start, later.end, self.baseline, changes)

    def deletes(self, key: str) -> list[int]:
        return [c.revision for c in self.changes.get(key, []) if c.kind == "delete"]

    # -- capability keys -------------------------------------------------------------------

    def capability_keys_lost(self, namespaces: Iterable[str]) -> list[str]:
        """Sync-owned keys of capabilities whose manifest still exists that were there (at
        the start, or written since) and are gone at the end: lost, not restored."""
        final = self.final()
        lost = []
        for ns in namespaces:
            for name in keys.SYNC_KEYS:
                key = keys.capability(ns, name)
                existed = key in self.baseline or key in self.changes
                if existed and key not in final:
                    lost.append(key)
        return lost

    def capability_key_deletions(self, namespaces: Iterable[str]) -> list[tuple[str, int]]:
        """Every delete of such a key, restored later or not: a reader in between saw a
        capability with a key missing, which is already a fault."""
        return [
            (keys.capability(ns, name), rev)
            for ns in namespaces
            for name in keys.SYNC_KEYS
            for rev in self.deletes(keys.capability(ns, name))
        ]

    def torn_capabilities(self) -> list[str]:
        """Namespaces whose sync-owned keys and inventory entry did not appear in one
        revision: the contract says a capability changes in one transaction."""
        firsts: dict[str, set[int]] = {}
        for key, changes in self.changes.items():
            if key.startswith(keys.SYNC_OWNED):
                ns = key[len(keys.SYNC_OWNED):]
            elif (split := keys.split(key)) and split[1] in keys.SYNC_KEYS:
                ns = split[0]
            else:
                continue
            if key in self.baseline:
                continue
            puts = [c.revision for c in changes if c.kind == "put"]
            if puts:
                firsts.setdefault(ns, set()).add(puts[0])
        return sorted(ns for ns, revs in firsts.items() if len(revs) > 1)

    # -- health keys -----------------------------------------------------------------------

    def health_expiries(self, live: Iterable[str]) -> list[tuple[str, int]]:
        """Deletes of the health keys of services that were alive throughout: the lease
        expired (or was revoked) while nothing should have let it."""
        return [
            (ns, rev) for ns in live for rev in self.deletes(keys.capability(ns, keys.HEALTH))
        ]

    def health_gaps(self, live: Iterable[str], clock: RevisionClock) -> list[float]:
        """For each such delete, seconds until the key was written again (inf: never)."""
        gaps = []
        for ns in live:
            changes = self.changes.get(keys.capability(ns, keys.HEALTH), [])
            for i, c in enumerate(changes):
                if c.kind != "delete":
                    continue
                back = next((d for d in changes[i + 1:] if d.kind == "put"), None)
                t_del = clock.time_of(c.revision)
                t_put = clock.time_of(back.revision) if back else None
                if t_del is None or t_put is None:
                    gaps.append(float("inf"))
                else:
                    gaps.append(max(0.0, t_put - t_del))
        return gaps

    def heartbeat_counts(self, ns: str) -> list[int]:
        """heartbeat_count of every record written for ``ns``, in order (baseline first)."""
        key = keys.capability(ns, keys.HEALTH)
        values = [self.baseline[key]] if key in self.baseline else []
        values += [c.value for c in self.changes.get(key, []) if c.kind == "put"]
        return [json.loads(v)["heartbeat_count"] for v in values]
