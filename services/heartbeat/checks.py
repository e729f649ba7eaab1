"""What a service's manifest says about probing it, and the probes themselves.

A manifest may declare ``chora_service.health.url`` (HTTP GET, healthy on a 2xx answer
within ``timeout`` seconds, default 5) or ``chora_service.health.tcp`` (``host:port``,
healthy when a TCP connection opens within ``timeout``). ``url`` wins when both are given.
``health.endpoint`` is a bare path and cannot be probed by itself, so it is ignored.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 5.0

NONE, HTTP, TCP = "none", "http", "tcp"


@dataclass(frozen=True, slots=True)
class Check:
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
    ok: bool
    reason: str  # "" when ok
    at: float  # time.monotonic() when the probe finished


def probe_http(url: str, timeout: float) -> tuple[bool, str]:
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
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return False, f"tcp target {target!r} is not host:port"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"connect {target}: {exc.strerror or exc}"


def run_probe(check: Check) -> tuple[bool, str]:
    if check.kind == HTTP:
        return probe_http(check.target, check.timeout)
    if check.kind == TCP:
        return probe_tcp(check.target, check.timeout)
    return True, ""
