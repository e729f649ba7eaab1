"""structlog set-up shared by both daemons: JSON lines when not on a terminal (for log
collectors), coloured key=value when a person is watching. Each line goes out in one
write (WriteLoggerFactory, not print's two), so daemons sharing a stream, as under
`make up`, never splice their JSON lines together.

structlog is imported when the first line is logged, not before: with rich installed it
imports rich too, 100-200 ms that a `gitops_sync --once` restart with nothing to say
would otherwise spend before doing anything. ``configure`` and ``get`` cost nothing
until then."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

_pending: tuple[str, bool | None] | None = None  # configure()'s arguments, not applied yet
_lock = threading.Lock()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    global _pending
    with _lock:
        if "structlog" in sys.modules:
            _apply(level, json)
            _pending = None
        else:
            _pending = (level, json)


def _apply(level: str, json: bool | None) -> None:
    import logging

    import structlog

    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _structlog() -> Any:
    """structlog, configured as ``configure`` last asked."""
    global _pending
    with _lock:
        import structlog

        if _pending is not None:
            _apply(*_pending)
            _pending = None
    return structlog


class _Logger:
    """Stands for ``structlog.get_logger(name)`` until a method is first called."""

    __slots__ = ("_name", "_real")

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        real = self._real
        if real is None:
            real = self._real = _structlog().get_logger(self._name)
        return getattr(real, attr)


def get(name: str) -> FilteringBoundLogger:
    return _Logger(name)  # type: ignore[return-value]
