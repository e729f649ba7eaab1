"""Run a callback on SIGTERM, then let the signal do what it did before.

Seed 001's pitfall 4: a service killed by its supervisor (SIGTERM from systemd, Docker,
Kubernetes) without deregistering stays listed as ``up`` for up to 30 s and callers fail
against it. The hook deregisters first, then chains to the handler that was installed
before it (so an application's own handler, or another hook, still runs), or, when that
was the default, exits with status 143 (128 + SIGTERM) by raising ``SystemExit`` so
``finally`` blocks and ``with`` exits run on the way out.

Python delivers signals to the main thread only: a hook created elsewhere installs
nothing (``install`` returns ``False``) and the owner must stop the helper itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("chora_manifest_client.shutdown")


class SigtermHook:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self._previous: Any = None
        self._installed = False

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        return True

    def uninstall(self) -> None:
        """Put the previous handler back, if ours is still the one installed (a handler
        installed after ours is left alone: it chains to ours)."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.callback()
        except Exception:  # the exit must go on whatever the callback met
            log.exception("SIGTERM callback failed")
        previous = self._previous
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)
