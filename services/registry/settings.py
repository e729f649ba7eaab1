"""The registry's settings, one typed object; the command line and the environment are
read only in ``cli.py``. Invalid combinations raise ``ValueError`` here, which the CLI
turns into a one-line usage error naming the flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.core.access import EtcdAccess

ETCD_MIN_TTL = 2  # ceil(1.5 x the election timeout of 1 s): etcd's shortest lease


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...]
    """etcd client endpoints, host:port."""
    host: str = "127.0.0.1"
    """Address the HTTP API listens on."""
    port: int = 8500
    """Port of the HTTP API, /metrics and /openapi.json (0: any free port)."""
    heartbeat_timeout: float = 30.0
    """Seconds without a heartbeat after which an instance is marked ``unhealthy``."""
    removal_timeout: int = 60
    """Seconds without a heartbeat after which etcd removes the instance: the TTL of its
    lease, so it holds whether or not a registry is running."""
    etcd_timeout: float = 3.0
    """Deadline of every etcd call; also how long a write's answer waits for the view
    to show it (read-your-writes)."""
    etcd_access: EtcdAccess = field(default_factory=EtcdAccess)
    """TLS and auth towards etcd (--cacert/--cert/--key, --user); default plaintext."""
    resync: float = 300.0
    """Seconds between full re-reads of /chora/ (the safety net behind the watch)."""
    watch_ring: int = 10_000
    """Changes kept for change-stream clients that reconnect with Last-Event-ID; one
    further behind gets a ``resync`` event."""
    quorum_check: float = 2.0
    """Seconds between two linearizable reads that tell whether etcd has a quorum."""
    cluster_check: float = 2.0
    """Seconds between two looks at every member's status (``GET /v1/cluster``)."""
    beats_every: float = 2.0
    """Seconds between two ``beats`` events (``/v1/watch?include=beats``): how fresh
    the dashboard's heartbeat ages are."""
    stall_after: float = 6.0
    """A watch that delivered nothing while etcd's revision moved on for this long is
    replaced by a full re-read (a member cut off from the majority stays silent)."""
    etcd_workers: int = 32
    """Threads making etcd calls for requests (the store is synchronous)."""
    lookup_workers: int = 8
    """Threads looking up remaining lease TTLs for the status writer."""
    stream_ping: float = 15.0
    """Seconds between keep-alive comments on an idle change stream."""
    list_refresh: float = 1.0
    """Seconds a cached list may show an older ``last_heartbeat`` (changes are never
    late: they drop the cache)."""
    shutdown_timeout: float = 5.0
    """Upper bound on each step of the shutdown (open requests, threads)."""
    tokens: Path | None = None
    """The token file (``tokens.py``): writes need a token whose scopes cover the service
    name. None: the API is open to anyone who can reach it (a warning at start)."""
    require_read_token: bool = False
    """Reads of data need a token with ``read`` (or ``admin``) too; needs ``tokens``."""
    token_check: float = 2.0
    """Seconds between two looks at the token file (and the TLS files) for changes."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; with ``tls_key``, or neither."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""

    def __post_init__(self) -> None:
        if self.removal_timeout < ETCD_MIN_TTL:
            raise ValueError(f"--removal-timeout must be at least {ETCD_MIN_TTL} seconds "
                             "(etcd's shortest lease)")
        if not 0 < self.heartbeat_timeout < self.removal_timeout:
            raise ValueError(
                f"--heartbeat-timeout ({self.heartbeat_timeout}s) must be positive and "
                f"shorter than --removal-timeout ({self.removal_timeout}s): an instance is "
                "unhealthy before it is removed")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is not a TCP port")
        if self.watch_ring < 1:
            raise ValueError("--watch-ring must be at least 1")
        if self.require_read_token and self.tokens is None:
            raise ValueError("--require-read-token needs --tokens FILE (the tokens to "
                             "accept)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        for name in ("etcd_timeout", "resync", "quorum_check", "cluster_check", "beats_every",
                     "stall_after", "token_check"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def write_wait(self) -> float:
        return self.etcd_timeout

    @property
    def status_tick(self) -> float:
        """How often silent instances are looked for: a quarter of the timeout, at most
        a second, so ``unhealthy`` comes at most that late."""
        return min(1.0, self.heartbeat_timeout / 4)
