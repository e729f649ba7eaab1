"""The sync's Prometheus metrics. Figures that change on every run (durations, last
success) live here, never in etcd, so an unchanged reconcile writes nothing."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("chora_sync_reconciles_total", "Reconciles run", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "chora_sync_reconcile_duration_seconds",
    "Time of one reconcile",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHANGES = Counter("chora_sync_changes_total", "Capability changes applied", ["kind"])
TXNS = Counter("chora_sync_transactions_total", "etcd transactions sent", ["result"])
CAPABILITIES = Gauge("chora_sync_capabilities", "Valid capabilities in the directory")
MANIFEST_ERRORS = Gauge("chora_sync_manifest_errors", "Manifests that failed to load")
PRUNES_REFUSED = Counter("chora_sync_prunes_refused_total", "Mass prunes refused")
ETCD_FAILURES = Counter("chora_sync_etcd_unavailable_total", "Reconciles that could not reach etcd")
LAST_SUCCESS = Gauge(
    "chora_sync_last_success_timestamp_seconds", "Unix time of the last successful reconcile"
)
UNOWNED = Gauge(
    "chora_sync_unowned_capabilities",
    "Capabilities in etcd that no inventory entry owns and no file claims (never pruned)",
)
PRUNES_HELD = Gauge(
    "chora_sync_prunes_held", "Capabilities whose files are gone but whose prune was refused"
)
DRIFT_REPAIRS = Counter(
    "chora_sync_drift_repairs_total", "Capabilities repaired after someone else changed their keys"
)
