"""The heartbeat's --capabilities DIR mode reads the directory with the sync's scanner."""

from services.core import logs
from services.heartbeat.discovering import DirectoryDiscovery
from tests.manifests import manifest


def discovery(root) -> DirectoryDiscovery:
    return DirectoryDiscovery(None, root, lambda *_: None, logs.get("test"), period=1.0)  # type: ignore[arg-type]


def test_only_valid_service_manifests_become_services_and_duplicates_are_refused(tmp_path):
    (tmp_path / "svc.yaml").write_text(manifest("a.svc"))
    (tmp_path / "pat.yaml").write_text(manifest("a.pat", type="Pattern"))
    (tmp_path / "broken.yaml").write_text("metadata: [")
    (tmp_path / "one.yaml").write_text(manifest("a.twice"))
    (tmp_path / "two.yaml").write_text(manifest("a.twice"))
    assert set(discovery(tmp_path).scan()) == {"a.svc"}


def test_a_missing_directory_keeps_the_service_set_instead_of_emptying_it(tmp_path):
    d = discovery(tmp_path / "capabilities")
    assert d.scan() is None
