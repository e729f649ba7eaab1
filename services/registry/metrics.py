"""The registry's Prometheus metrics, on a registry of their own per process (so several
servers can live in one test process), served on ``/metrics`` of the API port.

Gauges that describe the view (instances by status, revision, subscribers) are set from
the event loop that owns it, just before a scrape is encoded, so they never need a lock
on the view."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "chora_registry_requests_total", "HTTP requests answered",
            ["route", "method", "code"], registry=r)
        self.latency = Histogram(
            "chora_registry_request_duration_seconds",
            "Time to answer (a change stream: its whole life)", ["route"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.instances = Gauge(
            "chora_registry_instances", "Instances in the view by served status", ["status"],
            registry=r)
        self.subscribers = Gauge(
            "chora_registry_watch_subscribers", "Open change streams (GET /v1/watch)",
            registry=r)
        self.revision = Gauge(
            "chora_registry_view_revision", "The etcd revision the view reflects "
            "(X-Registry-Index)", registry=r)
        self.degraded = Gauge(
            "chora_registry_degraded", "1 while the etcd quorum cannot be reached", registry=r)
        self.ready = Gauge(
            "chora_registry_ready", "1 once the first full read is done", registry=r)
        self.changes = Counter(
            "chora_registry_changes_total", "Changes announced on the change stream",
            ["kind"], registry=r)
        self.resyncs = Counter(
            "chora_registry_stream_resyncs_total",
            "resync events sent to subscribers behind the ring", registry=r)
        self.writes = Counter(
            "chora_registry_etcd_writes_total", "Writes to etcd by the registry",
            ["kind", "result"], registry=r)
        self.keepalives = Counter(
            "chora_registry_keepalives_total", "Heartbeats forwarded as one lease keep-alive",
            ["result"], registry=r)
        self.lease_lookups = Counter(
            "chora_registry_lease_lookups_total",
            "Remaining-TTL lookups before marking an instance unhealthy", registry=r)
        self.rereads = Counter(
            "chora_registry_rereads_total", "Full reads of /chora/ after the first",
            ["reason"], registry=r)
        self.watch_failures = Counter(
            "chora_registry_watch_failures_total", "Watch streams that failed and were "
            "re-created", registry=r)
        self.auth_refusals = Counter(
            "chora_registry_auth_refusals_total", "Requests refused for want of a token "
            "(reason: missing, malformed, unknown) or of a scope (scope)", ["reason"],
            registry=r)
        self.tokens = Gauge(
            "chora_registry_tokens", "Tokens in force from the --tokens file", registry=r)
        self.token_reloads = Counter(
            "chora_registry_token_reloads_total", "Re-reads of a changed --tokens file "
            "(error: the previous tokens stayed in force)", ["result"], registry=r)
        self.tls_reloads = Counter(
            "chora_registry_tls_reloads_total", "Re-reads of a changed --tls-cert/--tls-key "
            "(error: the previous certificate stayed in use)", ["result"], registry=r)
        self.ryw_timeouts = Counter(
            "chora_registry_read_your_writes_timeouts_total",
            "Writes answered before the view showed them (the watch lagged)", registry=r)
