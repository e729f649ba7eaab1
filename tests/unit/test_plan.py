import hashlib
import json

from chora_manifests import from_document, parse_yaml
from services.core import keys
from services.core.kv import Delete, KeyValue, Put, Unchanged
from services.gitops_sync.plan import Actual, Policy, PruneWindow, make_plan, unowned_namespaces
from services.gitops_sync.projection import keys_digest, project
from tests.manifests import manifest


def projected(text: str, source: str) -> dict[str, bytes]:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return project(from_document(parse_yaml(text), source), digest)


def desired_for(*namespaces: str, version: str = "1.0.0") -> dict:
    return {ns: projected(manifest(ns, version=version), f"{ns}.yaml") for ns in namespaces}


def actual_from(desired: dict, *, extra: dict[str, bytes] | None = None) -> Actual:
    kvs, rev = [], 10
    for values in desired.values():
        for key, value in values.items():
            rev += 1
            kvs.append(KeyValue(key, value, rev, rev, 0))
    for key, value in (extra or {}).items():
        rev += 1
        kvs.append(KeyValue(key, value, rev, rev, 0))
    return Actual.from_kvs(kvs)


def test_an_empty_store_gets_one_create_per_capability_guarded_by_absence():
    plan = make_plan(desired_for("a.b", "a.c"), Actual())
    assert [c.kind for c in plan.changes] == ["create", "create"]
    change = plan.changes[0]
    assert {op.key for op in change.ops} == set(desired_for("a.b")["a.b"])
    assert all(g.mod_revision == 0 for g in change.guards)


def test_nothing_differs_so_nothing_is_planned():
    desired = desired_for("a.b", "a.c")
    assert not make_plan(desired, actual_from(desired)).changes


def test_an_update_puts_only_the_keys_that_differ_guarded_by_their_revisions():
    actual = actual_from(desired_for("a.b", version="1.0.0"))
    plan = make_plan(desired_for("a.b", version="1.1.0"), actual)
    (change,) = plan.changes
    assert change.kind == "update"
    # The inventory entry too: it records the new bytes' and keys' hashes.
    assert {op.key.rsplit("/", 1)[1] for op in change.ops} == {
        "version", "metadata", "manifest", "a.b"}
    assert keys.owned("a.b") in {op.key for op in change.ops}
    version_key = keys.capability("a.b", "version")
    assert Unchanged(version_key, actual.kvs[version_key].mod_revision) in change.guards


def test_a_removed_capability_is_pruned_but_health_and_foreign_keys_are_not():
    health = keys.capability("a.b", "health")
    foreign = keys.capability("a.b", "notes")
    actual = actual_from(desired_for("a.b", "a.c", "a.d"), extra={health: b"{}", foreign: b"x"})
    plan = make_plan(desired_for("a.c", "a.d"), actual)
    (change,) = plan.changes
    assert change.kind == "prune"
    deleted = {op.key for op in change.ops}
    assert all(isinstance(op, Delete) for op in change.ops)
    assert keys.owned("a.b") in deleted and keys.capability("a.b", "type") in deleted
    assert health not in deleted and foreign not in deleted


def test_a_capability_we_never_wrote_is_never_pruned():
    stranger = {keys.capability("x.y", "type"): b"service"}
    actual = actual_from(desired_for("a.b"), extra=stranger)
    assert not make_plan(desired_for("a.b"), actual).changes


def test_a_broken_or_disputed_capability_keeps_its_last_good_state():
    actual = actual_from(desired_for("a.b", "a.c", "a.d"))
    # a.b's file is broken but still names a.b; a.c's file no longer parses at all.
    plan = make_plan(desired_for("a.d"), actual, keep={"a.b"}, broken_sources={"a.c.yaml"})
    assert not plan.changes


def test_pruning_more_than_half_is_refused_but_updates_still_go_through():
    actual = actual_from(desired_for("a.b", "a.c", "a.d", "a.e"))
    plan = make_plan(desired_for("a.b", version="2.0.0"), actual)
    assert plan.refusal.startswith("refusing to prune 3 of 4 capabilities")
    assert set(plan.refused_prunes) == {"a.c", "a.d", "a.e"}
    assert [c.kind for c in plan.changes] == ["update"]
    allowed = make_plan(desired_for("a.b"), actual, policy=Policy(allow_mass_prune=True))
    assert [c.kind for c in allowed.changes] == ["prune", "prune", "prune"]


def test_an_empty_directory_refuses_to_prune_everything():
    plan = make_plan({}, actual_from(desired_for("a.b", "a.c")))
    assert not plan.changes and plan.refusal


def test_a_partial_scope_only_plans_its_namespaces():
    desired = desired_for("a.b", "a.c")
    plan = make_plan(desired, Actual(), scope={"a.c"}, owned_total=2)
    assert [c.namespace for c in plan.changes] == ["a.c"]


def test_a_sync_key_no_longer_desired_is_deleted_with_the_update():
    desired = desired_for("a.b")
    stale = {keys.capability("a.b", "manifest"): b"old"}
    trimmed = {"a.b": {k: v for k, v in desired["a.b"].items() if not k.endswith("/manifest")}}
    plan = make_plan(trimmed, actual_from(trimmed, extra=stale))
    (change,) = plan.changes
    assert change.ops == (Delete(keys.capability("a.b", "manifest")),)


def test_projection_writes_the_contract_keys():
    text = manifest("a.b", type="Pattern")
    cap = from_document(parse_yaml(text), "a.yaml")
    values = project(cap, hashlib.sha256(text.encode()).hexdigest())
    assert values[keys.capability("a.b", "type")] == b"pattern"
    assert values[keys.capability("a.b", "version")] == b"1.0.0"
    assert b'"type":"pattern"' in values[keys.capability("a.b", "metadata")]
    assert values[keys.capability("a.b", "dependencies")] == b"[]"
    # The inventory entry: the file, the sha256 of its bytes, the sha256 of the keys.
    assert json.loads(values[keys.owned("a.b")]) == {
        "source": "a.yaml",
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "keys": keys_digest(values),
    }
    # deterministic: what makes a no-op reconcile write nothing
    assert project(cap, hashlib.sha256(text.encode()).hexdigest()) == values
    assert Put(keys.capability("a.b", "type"), b"pattern") is not None


def test_a_directory_emptied_one_file_at_a_time_is_caught_by_the_prune_window():
    names = [f"a.n{i:02d}" for i in range(20)]
    desired = desired_for(*names)
    window = PruneWindow(600)
    owned = len(names)
    window.note_total(0.0, owned)
    pruned = []
    for i, ns in enumerate(names):  # one file leaves per partial reconcile, 150 ms apart
        now = i * 0.15
        plan = make_plan(
            {n: d for n, d in desired.items() if n not in pruned and n != ns},
            actual_from({ns: desired[ns]}),
            scope={ns},
            owned_total=window.baseline(now, owned),
            recently_pruned=window.pruned(now),
        )
        if plan.refusal:
            assert "already pruned in the last 600 s" in plan.refusal
            assert plan.refused_prunes == (ns,)
            continue
        pruned.append(ns)
        owned -= 1
        window.note_pruned(now, 1)
    assert len(pruned) == 10  # half of the 20 seen in the window, not 19 of them


def test_prunes_older_than_the_window_no_longer_count():
    window = PruneWindow(60)
    window.note_total(0.0, 10)
    window.note_pruned(0.0, 5)
    assert window.pruned(30.0) == 5 and window.baseline(30.0, 5) == 10
    assert window.pruned(61.0) == 0 and window.baseline(61.0, 5) == 5


def test_unowned_namespaces_are_those_no_inventory_owns_and_no_file_claims():
    present = {"a.owned", "a.handmade", "a.claimed"}
    assert unowned_namespaces(present, owned={"a.owned"}, desired={"a.claimed"}) == {
        "a.handmade"
    }


def test_an_unowned_capability_is_never_pruned():
    desired = desired_for("a.b")
    handmade = {k.replace("a.b", "a.x"): v for k, v in desired["a.b"].items()
                if not k.startswith(keys.SYNC_OWNED)}
    plan = make_plan({}, actual_from({}, extra=handmade), policy=Policy(allow_mass_prune=True))
    assert not plan.changes


def test_an_inventory_entry_without_hashes_or_not_json_reads_as_empty_fields():
    from services.gitops_sync.projection import Record

    assert Record.parse(b'{"source":"a.yaml"}') == Record("a.yaml", "", "")
    assert Record.parse(b'{"source":"a.yaml","sha256":7,"keys":null}') == Record("a.yaml")
    for junk in (b"", b"[1]", b"\xff", b"not json"):
        assert Record.parse(junk) == Record()


def test_etcd_values_stand_in_for_parsing_only_while_they_hash_to_the_inventory_entry():
    from services.gitops_sync.projection import still_projected

    text = manifest("a.b")
    digest = hashlib.sha256(text.encode()).hexdigest()
    values = projected(text, "a.yaml")
    actual = actual_from({"a.b": values}, extra={keys.capability("a.b", "health"): b"{}"})
    held = still_projected("a.b", "a.yaml", digest, actual.of("a.b"))
    assert held == values  # the heartbeat's health key is no part of it
    assert still_projected("a.b", "a.yaml", "0" * 64, actual.of("a.b")) is None  # new bytes
    assert still_projected("a.b", "renamed.yaml", digest, actual.of("a.b")) is None
    edited = actual_from({"a.b": {**values, keys.capability("a.b", "version"): b"6.6.6"}})
    assert still_projected("a.b", "a.yaml", digest, edited.of("a.b")) is None
    trimmed = {k: v for k, v in values.items() if not k.endswith("/type")}
    assert still_projected("a.b", "a.yaml", digest, actual_from({"a.b": trimmed}).of("a.b")) is None
    old = {**values, keys.owned("a.b"): b'{"source":"a.yaml"}'}  # as older versions wrote
    assert still_projected("a.b", "a.yaml", digest, actual_from({"a.b": old}).of("a.b")) is None
