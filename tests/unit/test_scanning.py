import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

import chora_manifests
from chora_manifests import ManifestError, parse
from services.core.scanning import Claim, Index
from services.gitops_sync.plan import Actual, make_plan
from services.gitops_sync.projection import project
from services.gitops_sync.reconciling import batches
from services.gitops_sync.watching import Debouncer
from tests.manifests import manifest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "manifests"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_files_claiming_one_namespace_are_both_errors_and_the_namespace_is_kept(tmp_path):
    (tmp_path / "one.yaml").write_text(manifest("a.b"))
    (tmp_path / "two.yaml").write_text(manifest("a.b"))
    (tmp_path / "three.yaml").write_text(manifest("a.c"))
    index = Index(tmp_path, derive=project)
    index.scan()
    resolved = index.resolve()
    assert set(resolved.desired) == {"a.c"}
    assert "a.b" in resolved.keep
    assert [os.path.basename(e.path) for e in resolved.errors] == ["one.yaml", "two.yaml"]
    assert "also claimed by" in resolved.errors[0].reason


def test_an_unchanged_file_is_not_parsed_again(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(manifest("a.b"))
    index = Index(tmp_path, derive=project)
    assert index.scan() == {"a.yaml"}
    assert index.scan() == set()
    path.write_text(manifest("a.b", version="2.0.0"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert index.scan() == {"a.yaml"}


def test_refresh_reports_the_namespace_a_file_held_before(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(manifest("a.b"))
    index = Index(tmp_path, derive=project)
    index.scan()
    path.write_text(manifest("a.renamed"))
    assert index.refresh(["a.yaml"]) == {"a.yaml": "a.b"}
    assert index.namespaces_of(["a.yaml"]) == {"a.renamed"}
    path.unlink()
    assert index.refresh(["a.yaml"]) == {"a.yaml": "a.renamed"}
    assert index.entries == {}


def test_non_manifest_files_are_ignored(tmp_path):
    (tmp_path / "notes.md").write_text("# hi")
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / ".a.yaml.swp").write_text("junk")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.yaml").write_text(manifest("a.b"))
    index = Index(tmp_path, derive=project)
    index.scan()
    assert index.entries == {}


def test_changes_are_packed_whole_into_transactions_of_at_most_128_operations(tmp_path):
    for i in range(100):
        (tmp_path / f"c{i}.yaml").write_text(manifest(f"a.c{i}"))
    index = Index(tmp_path, derive=project)
    index.scan()
    plan = make_plan(index.resolve().desired, Actual())
    groups = batches(plan.changes)
    assert all(sum(len(c.ops) for c in g) <= 128 for g in groups)
    assert sum(len(g) for g in groups) == 100
    assert len(groups) == 100 // (128 // 6) + 1


def test_a_burst_of_events_is_delivered_as_one_batch_once_quiet():
    d = Debouncer(quiet=0.1, max_delay=5)

    def burst():
        for i in range(50):
            d.add(f"f{i}.yaml")
            time.sleep(0.002)

    t = threading.Thread(target=burst)
    t.start()
    batch = d.take(timeout=5)
    t.join()
    assert batch == {f"f{i}.yaml" for i in range(50)}
    assert d.take(timeout=0.05) == set()


def test_a_steady_stream_still_flushes_after_max_delay():
    d = Debouncer(quiet=0.2, max_delay=0.3)
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set():
            d.add(f"f{i}.yaml")
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=stream)
    t.start()
    start = time.monotonic()
    batch = d.take(timeout=5)
    stop.set()
    t.join()
    assert batch and time.monotonic() - start < 1.0


def test_a_large_scan_parsed_by_the_process_pool_matches_a_serial_one(tmp_path, monkeypatch):
    from services.core import scanning

    for i in range(300):
        (tmp_path / f"c{i:03}.yaml").write_text(manifest(f"a.c{i:03}"))
    (tmp_path / "bad.yaml").write_text("metadata: [")
    pooled = Index(tmp_path, derive=project)
    pooled.scan()
    monkeypatch.setattr(scanning, "PARALLEL_THRESHOLD", 10**9)
    serial = Index(tmp_path, derive=project)
    serial.scan()
    def shown(index):
        return {n: (e.signature, str(e.result), e.derived) for n, e in index.entries.items()}

    assert shown(pooled) == shown(serial)
    assert str(pooled.entries["bad.yaml"].result).endswith("did not find expected node content")


def test_a_touched_file_whose_bytes_did_not_change_is_read_but_not_parsed_again(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(manifest("a.b"))
    index = Index(tmp_path, derive=project)
    index.scan()
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert index.scan() == {"a.yaml"}
    assert index.parsed == 1
    assert index.entries["a.yaml"].digest == sha256(path)


def test_files_the_caller_recalls_are_not_parsed_and_keep_the_namespace_it_gave(tmp_path):
    (tmp_path / "a.yaml").write_text(manifest("a.b"))
    (tmp_path / "c.yaml").write_text(manifest("a.c"))
    asked = {}

    def recall(digests):
        asked.update(digests)
        return {"a.yaml": "a.b"}

    index = Index(tmp_path, derive=project)
    index.scan(recall=recall)
    assert asked == {n: sha256(tmp_path / n) for n in ("a.yaml", "c.yaml")}
    assert index.parsed == 1  # c.yaml only
    recalled = index.entries["a.yaml"]
    assert recalled.recalled and recalled.derived is None
    assert recalled.result == Claim("a.b", "a.yaml")
    resolved = index.resolve()
    assert resolved.files == {"a.b": "a.yaml", "a.c": "c.yaml"}
    assert resolved.desired["a.b"] is None

    index.settle("a.yaml", {"k": b"v"})
    assert index.resolve().desired["a.b"] == {"k": b"v"}
    index.reparse(["a.yaml"])
    assert index.parsed == 2 and not index.entries["a.yaml"].recalled
    assert index.resolve().desired["a.b"] == project(
        parse(manifest("a.b"), name="a.yaml"), sha256(tmp_path / "a.yaml"))


def test_errors_and_claims_name_files_relative_to_the_directory(tmp_path):
    (tmp_path / "bad.yaml").write_text("metadata: [")
    (tmp_path / "one.yaml").write_text(manifest("a.b"))
    (tmp_path / "two.yaml").write_text(manifest("a.b"))
    os.symlink(tmp_path / "gone", tmp_path / "dangling.yaml")
    index = Index(tmp_path, derive=project)
    index.scan()
    errors = {e.path: e.reason for e in index.resolve().errors}
    assert set(errors) == {"bad.yaml", "dangling.yaml", "one.yaml", "two.yaml"}
    assert "also claimed by two.yaml" in errors["one.yaml"]


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*/*.yaml")), ids=lambda p: p.name)
def test_parsing_the_text_read_gives_what_loading_the_file_gives(path):
    """scanning.parse follows chora_manifests.load after its read, step for step."""
    text = chora_manifests.read_text(path, path.parent, name=path.name)
    try:
        expected = chora_manifests.load(path, path.parent, name=path.name)
    except ManifestError as exc:
        with pytest.raises(ManifestError) as got:
            parse(text, name=path.name)
        assert (str(got.value), got.value.problems) == (str(exc), exc.problems)
    else:
        assert parse(text, name=path.name) == expected


YAML_TROUBLE = {
    "invalid.yaml": "metadata: {dc_identifier: a.b\n",
    "two-documents.yaml": manifest("a.b") + "---\nb: 1\n",
    "duplicate-key.yaml": manifest("a.b") + "kind: Again\n",
    "deep.yaml": "a: " + "[" * 80 + "]" * 80 + "\n",
    "bomb.yaml": "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    "list.yaml": "- a\n- b\n",
}


@pytest.mark.parametrize("name", sorted(YAML_TROUBLE))
def test_parsing_troubled_yaml_fails_as_loading_it_does(tmp_path, name):
    (tmp_path / name).write_text(YAML_TROUBLE[name])
    with pytest.raises(ManifestError) as loaded:
        chora_manifests.load(tmp_path / name, tmp_path, name=name)
    with pytest.raises(ManifestError) as parsed:
        parse(YAML_TROUBLE[name], name=name)
    assert (str(parsed.value), parsed.value.problems) == (str(loaded.value), loaded.value.problems)
