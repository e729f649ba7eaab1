from services.core import keys
from services.gitops_sync.drifting import drifted_namespace


def test_only_sync_owned_keys_and_inventory_entries_name_a_drifted_capability():
    assert drifted_namespace(keys.capability("a.b", keys.VERSION)) == "a.b"
    assert drifted_namespace(keys.owned("a.b")) == "a.b"
    assert drifted_namespace(keys.capability("a.b", keys.HEALTH)) is None
    assert drifted_namespace(keys.capability("a.b", "something-else")) is None
    assert drifted_namespace(keys.SYNC_STATUS) is None
