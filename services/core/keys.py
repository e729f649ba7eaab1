"""The etcd key layout (``shared/registry-contract.md`` sections 2 and 3): a public
contract.

Capability keys live under ``/chora/capabilities/{namespace}/``, service instances under
``/chora/services/{name}/{id}``; each daemon's bookkeeping lives under its own prefix and
never among a capability's keys.
"""

from __future__ import annotations

CAPABILITIES = "/chora/capabilities/"
SYNC = "/chora/sync/"
SYNC_STATUS = SYNC + "status"
# One key per capability the sync wrote: prune deletes only what this inventory lists.
SYNC_OWNED = SYNC + "owned/"
# A revision at which the sync knew etcd to hold what its inventory says, so a restart
# need not read every capability back (services/gitops_sync/checkpoint.py).
SYNC_CHECKPOINT = SYNC + "checkpoint"
ELECTION = "/chora/election/"
"""One election per program: ``{ELECTION}{program}/{lease:016x}`` (``core/election.py``)."""
HEARTBEAT = "/chora/heartbeat/"
# One key per service the heartbeat ever beat, no lease (it outlives the health key): the
# heartbeat_count reserved so far, so a restart or a rejoin never repeats a count.
HEARTBEAT_COUNTS = HEARTBEAT + "counts/"
# Service instances registered at run time (contract section 3): one key per instance,
# on the instance's lease; the registry service owns this prefix alone.
SERVICES = "/chora/services/"

METADATA, TYPE, VERSION, DEPENDENCIES, MANIFEST = (
    "metadata",
    "type",
    "version",
    "dependencies",
    "manifest",
)
HEALTH = "health"

# Keys the sync owns under a capability; ``health`` belongs to the heartbeat alone.
SYNC_KEYS: tuple[str, ...] = (METADATA, TYPE, VERSION, DEPENDENCIES, MANIFEST)


def capability(namespace: str, name: str) -> str:
    return f"{CAPABILITIES}{namespace}/{name}"


def owned(namespace: str) -> str:
    return SYNC_OWNED + namespace


def heartbeat_count(namespace: str) -> str:
    return HEARTBEAT_COUNTS + namespace


def service(name: str, instance_id: str) -> str:
    """``/chora/services/{name}/{id}``: one registered instance of service ``name``."""
    return f"{SERVICES}{name}/{instance_id}"


def split_service(key: str) -> tuple[str, str] | None:
    """``/chora/services/orch/orch-1a2b3c4d`` → ``("orch", "orch-1a2b3c4d")``; None for
    other keys (or deeper ones, which no registry writes)."""
    if not key.startswith(SERVICES):
        return None
    name, sep, instance_id = key[len(SERVICES) :].partition("/")
    if not (sep and name and instance_id) or "/" in instance_id:
        return None
    return name, instance_id


def split(key: str) -> tuple[str, str] | None:
    """``/chora/capabilities/a.b/type`` → ``("a.b", "type")``; None for other keys."""
    if not key.startswith(CAPABILITIES):
        return None
    namespace, sep, name = key[len(CAPABILITIES) :].partition("/")
    return (namespace, name) if sep and namespace and name else None
