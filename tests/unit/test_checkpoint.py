"""What a checkpoint proves: counts and revisions in, verdicts out (no etcd)."""

from services.core import keys
from services.core.kv import KeyValue
from services.gitops_sync.checkpoint import (
    Checkpoint,
    contiguous,
    examine,
    nothing_else_changed,
)

W = 100


def kv(key: str, mod: int, create: int | None = None) -> KeyValue:
    return KeyValue(key, b"", mod, create if create is not None else mod, 0)


def inventory(*namespaces: str, mod: int = 90) -> dict[str, KeyValue]:
    return {keys.owned(ns): kv(keys.owned(ns), mod) for ns in namespaces}


def test_with_nothing_changed_since_the_checkpoint_every_capability_is_proven():
    cp = Checkpoint(W, capability_keys=10, inventory=2)
    verdict = examine(cp, 120, inventory("a.b", "a.c"), count=10, modified=[])
    assert verdict.usable and verdict.dirty == frozenset()
    assert verdict.present == {"a.b", "a.c"}


def test_a_key_modified_after_the_checkpoint_makes_only_its_capability_dirty():
    cp = Checkpoint(W, capability_keys=10, inventory=2)
    edited = kv(keys.capability("a.b", keys.VERSION), 110, create=50)
    health = kv(keys.capability("a.c", keys.HEALTH), 111, create=60)  # the heartbeat's
    verdict = examine(cp, 120, inventory("a.b", "a.c"), count=10, modified=[edited, health])
    assert verdict.usable and verdict.dirty == {"a.b"}


def test_an_inventory_entry_rewritten_after_the_checkpoint_makes_its_capability_dirty():
    entries = inventory("a.b", "a.c")
    entries[keys.owned("a.c")] = kv(keys.owned("a.c"), 115, create=90)
    verdict = examine(Checkpoint(W, 10, 2), 120, entries, count=10, modified=[])
    assert verdict.usable and verdict.dirty == {"a.c"}


def test_keys_created_since_are_counted_so_only_a_deletion_breaks_the_count():
    cp = Checkpoint(W, capability_keys=10, inventory=2)
    new = kv(keys.capability("a.new", keys.TYPE), 112)  # created after W
    assert examine(cp, 120, inventory("a.b", "a.c"), 11, [new]).usable
    deleted = examine(cp, 120, inventory("a.b", "a.c"), 9, [])
    assert not deleted.usable and "1 key(s)" in deleted.reason
    # Deleted and created again: its create revision gives it away.
    again = kv(keys.capability("a.b", keys.TYPE), 113)
    assert not examine(cp, 120, inventory("a.b", "a.c"), 10, [again]).usable


def test_an_inventory_entry_deleted_or_recreated_since_proves_nothing():
    cp = Checkpoint(W, capability_keys=10, inventory=2)
    assert not examine(cp, 120, inventory("a.b"), 10, []).usable
    recreated = inventory("a.b") | {keys.owned("a.c"): kv(keys.owned("a.c"), 115)}
    assert not examine(cp, 120, recreated, 10, []).usable


def test_unowned_capabilities_recorded_in_the_checkpoint_are_still_present():
    cp = Checkpoint(W, capability_keys=10, inventory=1, unowned=("hand.made",))
    verdict = examine(cp, 120, inventory("a.b"), 10, [])
    assert verdict.present == {"a.b", "hand.made"}


def test_no_checkpoint_or_one_ahead_of_etcd_proves_nothing():
    assert not examine(None, 120, {}, 0, []).usable
    behind = examine(Checkpoint(200, 10, 2), 120, inventory("a.b", "a.c"), 10, [])
    assert not behind.usable and "backup" in behind.reason


def test_a_checkpoint_round_trips_and_anything_else_decodes_to_none():
    cp = Checkpoint(7, 50, 10, ("x.y",))
    assert Checkpoint.decode(cp.encode()) == cp
    for junk in (b"", b"[]", b'{"revision": 1}', b"\xff", b'{"revision": "x", '
                 b'"capability_keys": 1, "inventory": 1, "unowned": []}'):
        assert Checkpoint.decode(junk) is None


def test_writes_are_contiguous_only_when_every_revision_since_the_read_is_ours():
    assert contiguous(10, [])
    assert contiguous(10, [12, 11, 13])
    assert not contiguous(10, [11, 13])  # someone wrote revision 12
    assert not contiguous(10, [12])


def test_after_our_writes_a_foreign_write_or_a_foreign_deletion_is_noticed():
    ours = {11, 12}
    written = [kv(keys.capability("a.b", keys.TYPE), 11, create=11),
               kv(keys.owned("a.b"), 11, create=11),
               kv(keys.capability("a.c", keys.HEALTH), 13, create=5)]  # a beat: fine
    # 10 keys and 1 entry before; ours created 1 key and 1 entry, deleted nothing.
    assert nothing_else_changed(10, (10, 1), (11, 2), written, ours, (0, 0))
    foreign = [*written, kv(keys.capability("a.c", keys.VERSION), 14, create=5)]
    assert not nothing_else_changed(10, (10, 1), (11, 2), foreign, ours, (0, 0))
    # One key fewer than our writes explain: someone deleted one.
    assert not nothing_else_changed(10, (10, 1), (10, 2), written, ours, (0, 0))
