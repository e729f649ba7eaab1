import os

from services.gitops_sync import loop
from services.gitops_sync.watching import Debouncer, Watcher


def test_a_watch_goes_stale_when_its_directory_is_replaced_or_removed(tmp_path):
    root = tmp_path / "capabilities"
    root.mkdir()
    watcher = Watcher(root, Debouncer())
    assert not watcher.stale()
    os.rename(root, tmp_path / "previous")
    root.mkdir()
    assert watcher.stale()
    root.rmdir()
    assert watcher.stale()


def test_watching_a_directory_that_vanished_gives_none_and_no_error(tmp_path):
    assert loop._watch(tmp_path / "gone", Debouncer()) is None
