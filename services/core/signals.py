"""SIGTERM/SIGINT for every program: the first asks for a graceful stop, a second one
(an impatient Ctrl-C, a supervisor that gave up) exits at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

from services.core import logs


def on_stop(stop: Callable[[], None], program: str) -> None:
    """Install the handlers; ``stop`` must only set an event (it runs in a signal
    handler). Call from the main thread."""
    log = logs.get(program)
    asked = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal asked
        if asked:
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            os._exit(1)
        asked = True
        log.info("stopping", signal=signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
