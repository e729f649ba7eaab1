"""The sync's Prometheus metrics, on a registry of its own per daemon (so several can
live in one test process). Figures that change on every run (durations, last success)
live here, never in etcd, so an unchanged reconcile writes nothing.

``Metrics.unrecorded()`` is for a run nobody scrapes (``--once``): it takes every update
and keeps none, and prometheus_client (50 ms of imports) is never loaded."""

from __future__ import annotations

from typing import Any, cast


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.reconciles = Counter(
            "chora_sync_reconciles_total", "Reconciles run", ["kind", "result"], registry=r)
        self.reconcile_seconds = Histogram(
            "chora_sync_reconcile_duration_seconds", "Time of one reconcile", ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.changes = Counter(
            "chora_sync_changes_total", "Capability changes applied", ["kind"], registry=r)
        self.txns = Counter(
            "chora_sync_transactions_total", "etcd transactions sent", ["result"], registry=r)
        self.capabilities = Gauge(
            "chora_sync_capabilities", "Valid capabilities in the directory", registry=r)
        self.manifest_errors = Gauge(
            "chora_sync_manifest_errors", "Manifests that failed to load", registry=r)
        self.prunes_refused = Counter(
            "chora_sync_prunes_refused_total", "Mass prunes refused", registry=r)
        self.etcd_failures = Counter(
            "chora_sync_etcd_unavailable_total", "Reconciles that could not reach etcd",
            registry=r)
        self.last_success = Gauge(
            "chora_sync_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile", registry=r)
        self.unowned = Gauge(
            "chora_sync_unowned_capabilities",
            "Capabilities in etcd that no inventory entry owns and no file claims "
            "(never pruned)", registry=r)
        self.prunes_held = Gauge(
            "chora_sync_prunes_held",
            "Capabilities whose files are gone but whose prune was refused", registry=r)
        self.drift_repairs = Counter(
            "chora_sync_drift_repairs_total",
            "Capabilities repaired after someone else changed their keys", registry=r)
        self.manifests_parsed = Counter(
            "chora_sync_manifests_parsed_total",
            "Manifest files parsed (YAML and schema). A file whose bytes are those the "
            "sync last projected (their sha256 is in its inventory) is not parsed again",
            registry=r)
        self.leader = Gauge(
            "chora_sync_leader",
            "1 while this instance leads the gitops-sync election and syncs, 0 while it "
            "stands by (exactly one instance should report 1)", registry=r)

    @classmethod
    def unrecorded(cls) -> Metrics:
        return cast(Metrics, _Unrecorded())


class _Discarded:
    """A metric nobody reads."""

    def labels(self, *values: object) -> _Discarded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


class _Unrecorded:
    registry = None

    def __getattr__(self, name: str) -> Any:
        return _DISCARDED


_DISCARDED = _Discarded()
