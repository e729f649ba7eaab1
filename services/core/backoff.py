"""Capped exponential backoff with full jitter: the one way every loop here waits after
a failure (the daemons' loops, the store's read retries, ``--once``).

``next()`` after a failure, ``reset()`` after a success: a dead etcd costs at most one
attempt per ``cap`` seconds, never a busy spin, and many clients that failed together
do not retry in lockstep.

>>> b = Backoff(initial=0.5, cap=10.0, rng=lambda: 1.0)
>>> [b.next() for _ in range(6)]
[0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
"""

from __future__ import annotations

import random
from collections.abc import Callable

FLOOR = 0.05  # never retry sooner than this, however lucky the jitter


class Backoff:
    def __init__(
        self,
        *,
        initial: float = 0.2,
        cap: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.cap, self._rng = initial, cap, rng
        self.failures = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt: uniform in (0, initial * 2^n], at most
        ``cap``."""
        self.failures += 1
        ceiling = min(self.cap, self.initial * 2 ** min(self.failures - 1, 60))
        return max(FLOOR, ceiling * self._rng())

    def reset(self) -> None:
        self.failures = 0
