"""Health states of a service, and the pure rule that moves a service between them.

The text in ``STATES`` is the documentation: ``--help`` prints it and the README quotes it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from services.heartbeat.checks import NONE, ProbeResult

HEALTHY, UNHEALTHY, UNKNOWN, DOWN = "healthy", "unhealthy", "unknown", "down"

STATES = """\
Health states (key /chora/capabilities/{ns}/health, attached to the service's own lease):

  healthy    key present, "status": "healthy". With "check": "http" or "tcp" the
             latest probe passed (HTTP GET answered 2xx within the manifest's
             chora_service.health.timeout, default 5 s; or the TCP connect
             succeeded). With "check": "none" the manifest declares no probe: the
             record only says the service is registered and this daemon keeps it
             alive; no probe passed.
  unknown    key present, "status": "unknown": a probe is declared but none has
             finished yet since this daemon started (the first seconds only).
  unhealthy  key present, "status": "unhealthy", with "reason" and
             "failing_since": the probe has been failing for at most --ttl
             seconds. The lease is still renewed.
  down       key ABSENT. Either the probe has been failing for longer than
             --ttl (renewals stop, the lease runs out at most --ttl later, so
             the key vanishes between TTL and 2 x TTL after the first failed
             probe), or the service left the set (type no longer "service" or
             capability removed: lease revoked at once), or no heartbeat
             daemon has reached etcd for a whole TTL.

  Progression: healthy -> unhealthy -> down. A service whose probe passes again
  gets a new lease and its key back ("healthy") on its next beat; its
  heartbeat_count continues.

Every record: {"status", "timestamp" (ISO-8601 UTC, ends in Z), "namespace",
"heartbeat_count", "check" ("none" | "http" | "tcp"), "ttl", "interval"}; "reason"
and "failing_since" when not healthy.

heartbeat_count strictly increases and never repeats, across daemon restarts (crashes
included), a key that expired meanwhile, and a service leaving the set and rejoining.
It lives on in /chora/heartbeat/counts/{ns} (no lease; never deleted by the daemon):
each beat that passes the count stored there raises it 100 ahead, in the same txn as
the record; a clean stop and a service leaving store the exact count. So after a clean
stop the count continues exactly; after a crash (kill -9) it may jump by up to 100.

Stopping: SIGTERM/SIGINT refresh every lease one last time and exit WITHOUT revoking
them: the keys stay for one TTL, and a daemon started within that TTL adopts the
leases found on the health keys and continues each heartbeat_count (restart without a
blink). After a crash (kill -9) too, as long as the leases have not run out: a new
daemon refreshes every adopted lease in its first round, whatever time it had left.
An adopted lease granted with a TTL other than --ttl is replaced by a new one with
--ttl (the key moves to it without a gap, the old lease is revoked). With
--revoke-on-exit the daemon revokes every lease instead, so all health keys vanish
at once (decommissioning).
"""


@dataclass(frozen=True, slots=True)
class Assessment:
    status: str  # HEALTHY | UNHEALTHY | UNKNOWN | DOWN
    renew: bool  # keep the lease alive and write the record
    reason: str = ""


def assess(
    check_kind: str,
    last: ProbeResult | None,
    failing_since: float | None,
    now: float,
    ttl: float,
) -> Assessment:
    """The state a service is in at ``now`` (monotonic seconds), from its probe history."""
    if check_kind == NONE:
        return Assessment(HEALTHY, True)
    if last is None:
        return Assessment(UNKNOWN, True, "no probe has finished yet")
    if last.ok:
        return Assessment(HEALTHY, True)
    if failing_since is not None and now - failing_since > ttl:
        return Assessment(DOWN, False, last.reason)
    return Assessment(UNHEALTHY, True, last.reason)


def iso_utc(when: float) -> str:
    """Unix time → ``2025-11-17T10:00:00.123Z``."""
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def record(
    *,
    namespace: str,
    count: int,
    assessment: Assessment,
    check_kind: str,
    timestamp: str,
    ttl: int,
    interval: float,
    failing_since: str | None = None,
) -> bytes:
    """The JSON value of a health key (``shared/registry-contract.md`` §2)."""
    value: dict[str, object] = {
        "status": assessment.status,
        "timestamp": timestamp,
        "namespace": namespace,
        "heartbeat_count": count,
        "check": check_kind,
        "ttl": ttl,
        "interval": interval,
    }
    if assessment.status != HEALTHY and assessment.reason:
        value["reason"] = assessment.reason
    if failing_since is not None and assessment.status == UNHEALTHY:
        value["failing_since"] = failing_since
    return json.dumps(value, separators=(",", ":")).encode()


def parse_record(value: bytes) -> dict[str, object] | None:
    """A stored health record, or None when it is not one of ours (never raises)."""
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
