"""When each service beats next: a heap of due times, spread evenly over the interval.

Pure (times are passed in), so the spreading and ordering are unit-tested without etcd.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class Schedule:
    """Names and when each is due; one entry per name (``at`` moves it)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def at(self, name: str, when: float) -> None:
        """Due at ``when``, replacing any earlier due time of ``name``."""
        self._due[name] = when
        heapq.heappush(self._heap, (when, name))

    def spread(self, names: Iterable[str], now: float, interval: float) -> None:
        """Schedule ``names`` from ``now`` on, evenly over one ``interval``: a thousand
        services added at once make a steady stream of small rounds, not one spike."""
        names = list(names)
        step = interval / len(names) if names else 0.0
        for i, name in enumerate(names):
            self.at(name, now + i * step)

    def remove(self, name: str) -> None:
        self._due.pop(name, None)  # its heap entry is skipped when it surfaces

    def pop_due(self, now: float) -> list[tuple[str, float]]:
        """Every (name, scheduled time) due by ``now``, earliest first; they leave the
        schedule until ``at`` puts them back."""
        out: list[tuple[str, float]] = []
        while self._heap and self._heap[0][0] <= now:
            when, name = heapq.heappop(self._heap)
            if self._due.get(name) == when:
                del self._due[name]
                out.append((name, when))
        return out


def next_beat(scheduled: float, now: float, interval: float, spread: float = 1.0) -> float:
    """The next beat keeps its phase, unless the daemon fell a whole interval behind
    (an outage). Then it beats again within one interval from now, at a point given by
    ``spread`` in [0, 1] (the caller passes a random number), so services delayed
    together by an outage spread out again instead of beating in lockstep forever."""
    nxt = scheduled + interval
    return nxt if nxt > now else now + interval * (0.5 + 0.5 * spread)
