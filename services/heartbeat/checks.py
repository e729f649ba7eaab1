"""What a service's manifest says about probing it: pure data, no I/O (the probes run
in ``probing.py``).

A manifest may declare ``chora_service.health.url`` (HTTP GET, healthy on a 2xx answer
within ``timeout`` seconds, default 5) or ``chora_service.health.tcp`` (``host:port``,
healthy when a TCP connection opens within ``timeout``). ``url`` wins when both are given.
``health.endpoint`` is a bare path and cannot be probed by itself, so it is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 5.0

NONE, HTTP, TCP = "none", "http", "tcp"


@dataclass(frozen=True, slots=True)
class Check:
    """How to probe one service; equal checks need no new probe."""

    kind: str = NONE  # "none" | "http" | "tcp"
    target: str = ""  # the URL or "host:port"
    timeout: float = DEFAULT_TIMEOUT


NO_CHECK = Check()


def check_from_document(document: Any) -> Check:
    """The check a normalized manifest declares; ``NO_CHECK`` when it declares none."""
    if not isinstance(document, dict):
        return NO_CHECK
    service = document.get("chora_service")
    health = service.get("health") if isinstance(service, dict) else None
    if not isinstance(health, dict):
        return NO_CHECK
    timeout = health.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    timeout = float(min(timeout, 60.0))
    url, tcp = health.get("url"), health.get("tcp")
    if isinstance(url, str) and url.strip():
        return Check(HTTP, url.strip(), timeout)
    if isinstance(tcp, str) and tcp.strip():
        return Check(TCP, tcp.strip(), timeout)
    return NO_CHECK


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe, as the session keeps it (the latest one counts)."""

    ok: bool
    reason: str  # "" when ok
    at: float  # time.monotonic() when the probe finished
