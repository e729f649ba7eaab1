"""Capped exponential backoff with full jitter, from tenacity's wait strategy.

Daemon loops call ``Backoff.next()`` after a failure and ``reset()`` after a success,
so a dead etcd costs at most one attempt per ``cap`` seconds and never a busy spin.
"""

from __future__ import annotations

import tenacity


class Backoff:
    def __init__(self, *, initial: float = 0.2, cap: float = 10.0) -> None:
        self._wait = tenacity.wait_random_exponential(multiplier=initial, max=cap)
        self.failures = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt."""
        self.failures += 1
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = self.failures
        return max(0.05, self._wait(state))

    def reset(self) -> None:
        self.failures = 0
