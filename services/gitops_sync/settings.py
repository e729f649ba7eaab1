"""The sync's settings, one typed object; the command line and the environment are read
only in ``cli.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.core.access import EtcdAccess
from services.core.kv import MAX_TXN_OPS
from services.gitops_sync.plan import Policy


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...]
    """etcd client endpoints, host:port."""
    capabilities: Path = Path("capabilities")
    """The directory of manifests to project into etcd."""
    etcd_timeout: float = 3.0
    """Deadline of every etcd call."""
    etcd_access: EtcdAccess = field(default_factory=EtcdAccess)
    """TLS and auth towards etcd (--cacert/--cert/--key, --user); default plaintext."""
    reconcile_interval: float = 60.0
    """Seconds between two full reconciles (file events sync in between)."""
    debounce: float = 0.05
    """Quiet period after file events before syncing them."""
    max_prune_ratio: float = 0.5
    """Share of the capabilities owned that prunes may remove within ``prune_window``."""
    prune_window: float = 600.0
    """Seconds over which prunes are added up for ``max_prune_ratio``."""
    allow_mass_prune: bool = False
    """Prune whatever the directory no longer holds, however much that is."""
    max_txn_ops: int = MAX_TXN_OPS
    """Operations per transaction; at most the cluster's --max-txn-ops."""
    election_ttl: int = 3
    """Seconds of the leader's session lease: a crashed leader is replaced within it."""
    metrics_port: int | None = None
    """Serve /metrics and /healthz on this port (None: off)."""
    metrics_host: str = "0.0.0.0"
    """Address /metrics and /healthz listen on."""
    record_metrics: bool = True
    """Keep Prometheus metrics. Off for ``--once``/``--dry-run`` without a metrics port:
    nobody would read them, and prometheus_client's import is a tenth of a restart."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_prune_ratio <= 1:
            raise ValueError(f"--max-prune-ratio {self.max_prune_ratio} is not between 0 and 1")
        for name in ("etcd_timeout", "reconcile_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.max_txn_ops < MAX_TXN_OPS:
            raise ValueError(f"--max-txn-ops must be at least {MAX_TXN_OPS} (etcd's default; "
                             "a capability is written whole, in one transaction)")
        if self.election_ttl < 2:
            raise ValueError("--election-ttl must be at least 2 (etcd's shortest lease)")
        if self.debounce < 0 or self.prune_window < 0:
            raise ValueError("--debounce and --prune-window cannot be negative")

    @property
    def policy(self) -> Policy:
        return Policy(self.max_prune_ratio, self.allow_mass_prune, self.prune_window)

    @property
    def stall_after(self) -> float:
        """A loop step may legitimately take a few etcd deadlines (a ping retried across
        members); longer than this, /healthz calls it stalled."""
        return max(10.0, 3 * self.etcd_timeout)
