"""What goes in and out of etcd, as plain data: keys read, operations to apply, guards,
watch events, and etcd's limits. Pure: planners and tests use these without importing
the gRPC adapter (``store.py``)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops (operations, and guards, per txn)
# ``make up`` and the compose files run etcd with --max-txn-ops at this, and the sync
# with the same: a first sync of 10,000 manifests in 60 transactions rather than 480
# costs etcd a quarter less CPU (each transaction is a raft entry, an fsync, an apply).
WIDE_TXN_OPS = 1024
MAX_REQUEST_BYTES = 1_400_000  # etcd's default --max-request-bytes is 1.5 MiB; keep headroom

@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Guard: the key's mod revision is still ``mod_revision`` (0: it does not exist)."""

    key: str
    mod_revision: int


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "put" | "delete"
    kv: KeyValue


def prefix_end(prefix: bytes) -> bytes:
    """The end of etcd's range for ``prefix``: every key that starts with it is below."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
