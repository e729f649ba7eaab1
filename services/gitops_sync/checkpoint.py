"""The sync's checkpoint: proof that etcd still holds what the inventory says, without
reading back every capability key. Pure: counts and revisions in, verdicts out.

Reading back all keys of 10,000 capabilities (50,000 keys, 25 MB of values) took ~0.8 s,
and even keys alone ~0.3 s: more than a whole unchanged restart may take. So after a
reconcile that wrote, the sync records under ``/chora/sync/checkpoint`` a revision W at
which it knew every capability it owns to hold exactly what its inventory entry hashes
(``keys``), with how many keys ``/chora/capabilities/`` and the inventory held at W and
which capabilities nobody owned (``unowned``).

A full reconcile asks etcd two cheap questions at its read revision R: how many keys are
under /chora/capabilities/ (``count_only``), and which were modified after W
(``min_mod_revision`` W + 1, keys only: etcd filters, so only those travel). Then:

- a key of a capability (or its inventory entry) modified after W: that capability is
  read back and checked against its hashes, or its file parsed;
- fewer keys than W's count plus those created since (a key deleted after W, by hand, or
  a health key whose lease ended; deleted keys leave no trace a range shows): the
  checkpoint proves nothing and every capability is read back, still without parsing a
  file whose bytes did not change;
- every other capability holds what it held at W: nothing to read, nothing to parse.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from services.core import keys
from services.core.kv import KeyValue


@dataclass(frozen=True)
class Checkpoint:
    revision: int
    """W: at this revision every owned capability held what its inventory entry hashes."""
    capability_keys: int
    """How many keys /chora/capabilities/ held at W (health and foreign keys included)."""
    inventory: int
    """How many inventory entries (/chora/sync/owned/) there were at W."""
    unowned: tuple[str, ...] = ()
    """Capabilities with keys at W that no inventory entry owned."""

    def encode(self) -> bytes:
        return json.dumps({"revision": self.revision, "capability_keys": self.capability_keys,
                           "inventory": self.inventory, "unowned": sorted(self.unowned)},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> Checkpoint | None:
        """None for anything this version did not write (then a full read it is)."""
        try:
            doc = json.loads(value)
            checkpoint = cls(int(doc["revision"]), int(doc["capability_keys"]),
                             int(doc["inventory"]), tuple(str(n) for n in doc["unowned"]))
        except (ValueError, TypeError, KeyError):
            return None
        return checkpoint


@dataclass(frozen=True)
class Verdict:
    """What a checkpoint proves at the read revision."""

    usable: bool
    reason: str = ""  # why it proves nothing, for the log
    dirty: frozenset[str] = field(default_factory=frozenset)
    """Capabilities whose keys or inventory entry changed after W: to be read back."""
    present: frozenset[str] = field(default_factory=frozenset)
    """Namespaces holding sync keys now (as ``reconciling._present`` would find them)."""


def _sync_namespace(key: str) -> str | None:
    split = keys.split(key)
    return split[0] if split and split[1] in keys.SYNC_KEYS else None


def examine(
    checkpoint: Checkpoint | None,
    revision: int,
    inventory: Mapping[str, KeyValue],
    count: int,
    modified: Iterable[KeyValue],
) -> Verdict:
    """``inventory``: every inventory entry at ``revision`` (key → kv); ``count``: keys
    under /chora/capabilities/ then; ``modified``: those of them modified after W."""
    if checkpoint is None:
        return Verdict(False, "no checkpoint")
    w = checkpoint.revision
    if w > revision:
        return Verdict(False, f"etcd is at revision {revision}, behind the checkpoint's {w} "
                       "(restored from a backup?)")
    modified = list(modified)
    created = sum(1 for kv in modified if kv.create_revision > w)
    if count != checkpoint.capability_keys + created:
        gone = checkpoint.capability_keys + created - count
        return Verdict(False, f"{gone} key(s) under {keys.CAPABILITIES} deleted since "
                       f"revision {w}")
    kept = sum(1 for kv in inventory.values() if kv.create_revision <= w)
    if kept != checkpoint.inventory:
        return Verdict(False, f"{checkpoint.inventory - kept} inventory entry(ies) deleted "
                       f"since revision {w}")
    owned = {key[len(keys.SYNC_OWNED):]: kv for key, kv in inventory.items()}
    touched = {ns for kv in modified if (ns := _sync_namespace(kv.key))}
    dirty = touched | {ns for ns, kv in owned.items() if kv.mod_revision > w}
    present = {ns for ns, kv in owned.items() if kv.create_revision <= w}
    return Verdict(True, dirty=frozenset(dirty),
                   present=frozenset(present | set(checkpoint.unowned) | touched))


def contiguous(read_revision: int, own: Collection[int]) -> bool:
    """Whether the revisions after ``read_revision`` up to the last of ``own`` are all our
    own transactions: then nobody else wrote anything in between (each revision of etcd
    is one write), and the state after them is known without reading it."""
    return sorted(own) == list(range(read_revision + 1, read_revision + 1 + len(own)))


def nothing_else_changed(
    read_revision: int,
    before: tuple[int, int],
    now: tuple[int, int],
    modified: Iterable[KeyValue],
    own: Collection[int],
    deleted: tuple[int, int],
) -> bool:
    """Whether, between ``read_revision`` and now, every capability key and inventory
    entry that changed was changed by ``own`` transactions (``modified``: the capability
    keys and inventory entries modified since, keys only; ``before``/``now``: how many
    of each there were; ``deleted``: how many of each our transactions deleted). Others'
    health and foreign keys may come and go; the counts say whether any other key went."""
    created = [0, 0]
    for kv in modified:
        inventory = kv.key.startswith(keys.SYNC_OWNED)
        if (inventory or _sync_namespace(kv.key)) and kv.mod_revision not in own:
            return False
        if kv.create_revision > read_revision:
            created[inventory] += 1
    return all(now[i] == before[i] + created[i] - deleted[i] for i in (0, 1))
