"""The heartbeat's settings, one typed object; the command line and the environment are
read only in ``cli.py``. Invalid combinations raise ``ValueError`` here, which the CLI
turns into a one-line usage error: a bad flag is terminal, never retried."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.core.access import EtcdAccess


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...]
    """etcd client endpoints, host:port."""
    ttl: int = 30
    """Lease TTL in seconds: a health key outlives its last refresh by this much."""
    interval: float = 10.0
    """Seconds between two beats (lease refresh + record write) of one service, and
    between two probes of it."""
    capabilities_dir: Path | None = None
    """Take the service set from manifests in this directory instead of from etcd."""
    revoke_on_exit: bool = False
    """On SIGTERM/SIGINT revoke every lease (keys vanish) instead of leaving them."""
    election_ttl: int = 3
    """Seconds of the leader's session lease: a crashed leader is replaced within it."""
    metrics_port: int | None = None
    """Serve /metrics and /healthz on this port (None: off)."""
    metrics_host: str = "0.0.0.0"
    """Address /metrics and /healthz listen on."""
    resync: float = 60.0
    """Seconds between full re-reads of the capability prefix (a watch on a member cut
    off from the majority reports nothing, so the read is the safety net)."""
    etcd_timeout: float = 3.0
    """Deadline of every etcd call."""
    etcd_access: EtcdAccess = field(default_factory=EtcdAccess)
    """TLS and auth towards etcd (``--cacert/--cert/--key``, ``--user``); default
    plaintext. In the secure stack the heartbeat's user may write only under
    /chora/capabilities/ and /chora/heartbeat/ (``services/core/roles.py``)."""
    probe_workers: int = 32
    """Threads running probes; a hanging probe holds one of them up to its timeout."""
    lease_workers: int = 16
    """Threads granting/revoking leases in parallel (startup, or after a long outage)."""
    shutdown_timeout: float = 5.0
    """Upper bound on the final refresh (or revoke) at exit."""

    def __post_init__(self) -> None:
        if self.ttl < 2:
            raise ValueError("ttl must be at least 2 seconds (etcd's minimum lease TTL)")
        if not 0 < self.interval < self.ttl:
            raise ValueError(
                f"interval ({self.interval}s) must be positive and shorter than ttl "
                f"({self.ttl}s), or every key expires between two beats"
            )
        if self.election_ttl < 2:
            raise ValueError("--election-ttl must be at least 2 (etcd's shortest lease)")
        for name in ("etcd_timeout", "resync"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
