"""Which services to heartbeat: pure functions over what etcd (or a directory) holds.

The set is every namespace under ``/chora/capabilities/`` whose ``type`` key is
``service``; its probe comes from the ``manifest`` key the sync writes. Existing
``health`` keys give adoption hints: the lease and count a previous daemon left behind;
``/chora/heartbeat/counts/{ns}`` keys give the count reserved for each service, which
outlives the health key (an expiry, a crash, a service leaving and rejoining).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.core import keys
from services.heartbeat.checks import NO_CHECK, Check, check_from_document
from services.heartbeat.states import parse_record


@dataclass(frozen=True, slots=True)
class Adoption:
    """What a previous daemon left behind: reuse the lease on the health key, continue
    the count from above both the key's count and the reserved one (``reserved``, from
    the counts key: every count ever written is at most that)."""

    lease: int
    count: int
    status: str | None
    reserved: int = 0


@dataclass
class Known:
    """What the heartbeat knows of one namespace: its ``type`` key and the check its
    ``manifest`` key declares."""

    type: str | None = None
    check: Check = NO_CHECK


class Mirror:
    """The ``type`` and ``manifest`` keys of every capability, kept current by events."""

    def __init__(self) -> None:
        self.known: dict[str, Known] = {}

    def apply(self, key: str, value: bytes | None) -> bool:
        """A put (value) or delete (None) of ``key``; True when the service set may differ."""
        parts = keys.split(key)
        if parts is None:
            return False
        namespace, name = parts
        if name not in (keys.TYPE, keys.MANIFEST):
            return False
        known = self.known.setdefault(namespace, Known())
        if name == keys.TYPE:
            known.type = value.decode(errors="replace").strip().lower() if value else None
        else:
            known.check = _check(value)
        if known.type is None and known.check == NO_CHECK:
            del self.known[namespace]
        return True

    def services(self) -> dict[str, Check]:
        """The desired service set: every namespace typed ``service``, with its check."""
        return {ns: k.check for ns, k in self.known.items() if k.type == "service"}

    @classmethod
    def from_kvs(cls, kvs: Mapping[str, bytes]) -> Mirror:
        """A mirror of the capability keys read at one revision (``key → value``)."""
        mirror = cls()
        for key, value in kvs.items():
            mirror.apply(key, value)
        return mirror


def _check(value: bytes | None) -> Check:
    """The check a ``manifest`` key's JSON declares; an unreadable one declares none, so
    the service is still kept alive (unprobed) rather than dropped."""
    if not value:
        return NO_CHECK
    try:
        return check_from_document(json.loads(value))
    except (ValueError, UnicodeDecodeError):
        return NO_CHECK


def reserved_counts(counts: Iterable[tuple[str, bytes]]) -> dict[str, int]:
    """``(key, value)`` of ``/chora/heartbeat/counts/{ns}`` keys → reserved count per
    namespace; a value that is not a non-negative integer counts as nothing reserved."""
    out: dict[str, int] = {}
    for key, value in counts:
        namespace = key.removeprefix(keys.HEARTBEAT_COUNTS)
        if namespace == key or not namespace:
            continue
        try:
            out[namespace] = max(0, int(value))
        except ValueError:
            continue
    return out


def adoptions(
    health: Iterable[tuple[str, bytes, int]], reserved: Mapping[str, int] | None = None
) -> dict[str, Adoption]:
    """``(key, value, lease)`` of stored keys (and the reserved counts) → adoption hints
    per namespace; a namespace with a reserved count but no health key gets a hint
    without a lease, so its count still continues."""
    reserved = reserved or {}
    out = {ns: Adoption(0, 0, None, n) for ns, n in reserved.items()}
    for key, value, lease in health:
        parts = keys.split(key)
        if parts is None or parts[1] != keys.HEALTH:
            continue
        data = parse_record(value) or {}
        count = data.get("heartbeat_count")
        status = data.get("status")
        out[parts[0]] = Adoption(
            lease=lease,
            count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
            status=status if isinstance(status, str) else None,
            reserved=reserved.get(parts[0], 0),
        )
    return out


@dataclass(frozen=True)
class Delta:
    """How the desired service set differs from the services tracked."""

    added: dict[str, Check]
    removed: list[str]
    changed: dict[str, Check]  # same service, another check: probe anew


def delta(current: Mapping[str, Check], desired: Mapping[str, Check]) -> Delta:
    """Reconcile, don't replay: the loop applies this to its sessions, whatever events
    (or full re-reads) led to ``desired``."""
    added = {ns: c for ns, c in desired.items() if ns not in current}
    removed = [ns for ns in current if ns not in desired]
    changed = {ns: c for ns, c in desired.items() if ns in current and current[ns] != c}
    return Delta(added, removed, changed)
