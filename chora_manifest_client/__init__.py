"""Client library of the chora registry (SAP-044 "Manifest"), seed 001's API and more.

    from chora_manifest_client import ManifestClient

    client = ManifestClient("http://127.0.0.1:8500,http://127.0.0.1:8501")
    with client.keep_registered("my-service", "1.0.0", {"REST": "http://10.0.0.10:9000"}):
        with client.cache() as cache:
            orchestrator = cache.get_instances("orchestrator")[0]

See README.md beside this file.
"""

from chora_manifest_client.caching import ServiceCache
from chora_manifest_client.client import ManifestClient
from chora_manifest_client.endpoints import DEFAULT_URL
from chora_manifest_client.errors import (
    CapabilityNotFoundError,
    ManifestAuthError,
    ManifestError,
    NotFoundError,
    RegistryUnavailableError,
    ServiceNotFoundError,
)
from chora_manifest_client.events import WatchEvent
from chora_manifest_client.heartbeating import AsyncHeartbeat, Heartbeat
from chora_manifest_client.operations import Registration

__all__ = [
    "DEFAULT_URL",
    "AsyncHeartbeat",
    "CapabilityNotFoundError",
    "Heartbeat",
    "ManifestAuthError",
    "ManifestClient",
    "ManifestError",
    "NotFoundError",
    "Registration",
    "RegistryUnavailableError",
    "ServiceCache",
    "ServiceNotFoundError",
    "WatchEvent",
]
