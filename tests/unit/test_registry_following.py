"""The registry's follower and quorum check against a scripted store: read at R, watch
from R + 1, re-create a failed watch from the last revision + 1 without re-reading,
re-read on compaction, and degraded while the linearizable read fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from services.core import logs
from services.core.errors import Compacted, Unavailable
from services.core.kv import Event, KeyValue
from services.registry.following import Follower, QuorumCheck
from services.registry.metrics import Metrics
from services.registry.state import ROOT
from tests.conftest import wait_for


def ev(rev: int) -> Event:
    return Event("put", KeyValue(f"{ROOT}services/a/a-0000000{rev % 10}", b"{}", rev, rev, 0))


class Watch:
    def __init__(self, batches: list[list[Event]], then: Exception | None) -> None:
        self.batches, self.then = batches, then
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[list[Event]]:
        yield from self.batches
        if self.then is not None:
            raise self.then
        self.cancelled.wait()


class Etcd:
    """Each read answers the next revision of ``reads``; each watch the next script."""

    def __init__(self, reads: list[int], watches: list[tuple[list[list[Event]],
                                                             Exception | None]]) -> None:
        self.reads, self.watches = reads, watches
        self.calls: list[str] = []
        self.revisions: list[int | Exception] = []

    def get_prefix(self, prefix: str) -> tuple[dict[str, KeyValue], int]:
        revision = self.reads.pop(0)
        self.calls.append(f"read {prefix} -> {revision}")
        return {}, revision

    def watch_prefix(self, prefix: str, start: int) -> Watch:
        self.calls.append(f"watch from {start}")
        batches, then = self.watches.pop(0) if self.watches else ([], None)
        return Watch(batches, then)

    def revision(self) -> int:
        answer = self.revisions.pop(0) if len(self.revisions) > 1 else self.revisions[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Hub:
    def __init__(self) -> None:
        self.posted: list[object] = []

    def post_state(self, state: object) -> None:
        self.posted.append(("state", state.revision))  # type: ignore[attr-defined]

    def post_events(self, events: list[Event]) -> None:
        self.posted.append(("events", [e.kv.mod_revision for e in events]))

    def post_reachable(self, ok: bool, reason: str = "") -> None:
        self.posted.append(("reachable", ok))


def follow(etcd: Etcd, until: int) -> tuple[Follower, Hub]:
    hub = Hub()
    f = Follower(etcd, hub, Metrics(), logs.get("test"), resync=60)  # type: ignore[arg-type]
    f.start()
    try:
        wait_for(lambda: len(etcd.calls) >= until, timeout=10, what="the scripted calls")
    finally:
        f.stop()
        f.join(5)
    assert not f.is_alive()
    return f, hub


def test_it_reads_at_r_watches_from_r_plus_1_and_resumes_a_failed_watch_without_rereading():
    etcd = Etcd(reads=[10], watches=[([[ev(11)], [ev(12), ev(12)]], Unavailable("member died")),
                                     ([[ev(13)]], None)])
    f, hub = follow(etcd, until=3)
    assert etcd.calls == [f"read {ROOT} -> 10", "watch from 11", "watch from 13"]
    assert hub.posted == [("state", 10), ("events", [11]), ("events", [12, 12]),
                          ("events", [13])]
    assert f.last == 13


def test_a_compacted_watch_means_a_full_reread_then_a_watch_from_after_it():
    etcd = Etcd(reads=[10, 50], watches=[([], Compacted(40)), ([], None)])
    _, hub = follow(etcd, until=4)
    assert etcd.calls == [f"read {ROOT} -> 10", "watch from 11", f"read {ROOT} -> 50",
                          "watch from 51"]
    assert hub.posted == [("state", 10), ("state", 50)]


def test_asking_for_a_reread_cancels_the_watch_and_reads_again():
    etcd = Etcd(reads=[10, 20], watches=[])
    hub = Hub()
    f = Follower(etcd, hub, Metrics(), logs.get("test"), resync=60)  # type: ignore[arg-type]
    f.start()
    try:
        wait_for(lambda: etcd.calls == [f"read {ROOT} -> 10", "watch from 11"], timeout=5)
        f.reread("quorum back")
        wait_for(lambda: etcd.calls[-1] == "watch from 21", timeout=5)
    finally:
        f.stop()
        f.join(5)
    assert hub.posted == [("state", 10), ("state", 20)]


def test_the_quorum_check_marks_degraded_and_asks_for_a_reread_when_the_quorum_is_back():
    class Follows:
        def __init__(self) -> None:
            self.last = 30
            self.asked: list[str] = []

        def reread(self, reason: str) -> None:
            self.asked.append(reason)

    etcd = Etcd(reads=[], watches=[])
    etcd.revisions = [Unavailable("no leader"), Unavailable("no leader"), 30]
    hub, follower = Hub(), Follows()
    check = QuorumCheck(etcd, hub, follower, logs.get("test"),  # type: ignore[arg-type]
                        period=0.01, stall_after=60)
    check.start()
    try:
        wait_for(lambda: ("reachable", True) in hub.posted, timeout=5)
    finally:
        check.stop()
        check.join(5)
    assert hub.posted[:3] == [("reachable", False), ("reachable", False), ("reachable", True)]
    assert follower.asked == ["quorum back"]


def test_a_watch_that_stays_behind_the_cluster_is_replaced_by_a_reread():
    class Follows:
        def __init__(self) -> None:
            self.last = 30
            self.asked: list[str] = []

        def reread(self, reason: str) -> None:
            self.asked.append(reason)
            self.last = 31

    etcd = Etcd(reads=[], watches=[])
    etcd.revisions = [31]
    hub, follower = Hub(), Follows()
    check = QuorumCheck(etcd, hub, follower, logs.get("test"),  # type: ignore[arg-type]
                        period=0.01, stall_after=0.1)
    check.start()
    try:
        wait_for(lambda: follower.asked, timeout=5)
    finally:
        check.stop()
        check.join(5)
    assert follower.asked == ["watch silent"]


def test_an_unexpected_error_does_not_freeze_the_view_it_means_a_reread():
    class Flaky(Hub):
        def post_events(self, events: list[Event]) -> None:
            if not any(p[0] == "events" for p in self.posted):
                self.posted.append(("events", "boom"))
                raise RuntimeError("a bug")
            super().post_events(events)

    etcd = Etcd(reads=[10, 20], watches=[([[ev(11)]], None), ([[ev(21)]], None)])
    hub = Flaky()
    f = Follower(etcd, hub, Metrics(), logs.get("test"), resync=60)  # type: ignore[arg-type]
    f.start()
    try:
        wait_for(lambda: ("events", [21]) in hub.posted, timeout=10)
    finally:
        f.stop()
        f.join(5)
    assert etcd.calls == [f"read {ROOT} -> 10", "watch from 11", f"read {ROOT} -> 20",
                          "watch from 21"]
