"""``manifest validate``: the sync's rules before the commit (files only, no etcd).

The command runs in-process through typer's runner, as a user would type it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chora_manifest_client.cli import app
from services.core.scanning import Index
from tests.manifests import manifest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "manifests"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["validate", *args])
    return result.exit_code, result.stdout, result.stderr


def write(root: Path, name: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return root / name


def requires(namespace: str, version: str = "1.0.0", **ranges: str) -> str:
    items = "".join(f"    - capability: {ns.replace('_', '.')}\n      version: '{r}'\n"
                    for ns, r in ranges.items())
    return manifest(namespace, version=version, extra="dc_relation:\n  requires:\n" + items)


def test_a_directory_of_valid_manifests_passes_with_exit_0(tmp_path):
    write(tmp_path, "a.yaml", manifest("team.a"))
    write(tmp_path, "b.yml", manifest("team.b"))
    code, out, err = run(str(tmp_path))
    assert (code, out) == (0, "")
    assert err.strip() == "2 manifests valid"


def test_the_repositorys_own_capabilities_are_the_default_path_and_valid_even_strictly(
    monkeypatch
):
    monkeypatch.chdir(REPO)
    code, out, err = run("--strict")
    assert code == 0, out
    assert re.fullmatch(r"\d+ manifests valid", err.strip())


def test_each_problem_is_one_line_with_file_line_and_column_and_exit_1(tmp_path):
    write(tmp_path, "bad.yaml", "metadata:\n  dc_identifier: team.bad\n  dc_type: Tool\n"
                                "  dc_hasVersion: '1.0.0'\n")
    write(tmp_path, "broken.yaml", "metadata: {dc_identifier: a.b\n")
    code, out, _ = run(str(tmp_path))
    assert code == 1
    bad, broken = str(tmp_path / "bad.yaml"), str(tmp_path / "broken.yaml")
    assert out.splitlines() == [
        f"{bad}:2:3: metadata.dc_title: Field required",
        f"{bad}:3:12: metadata.dc_type: dc_type 'Tool' is neither Service nor Pattern",
        f"{broken}:2:1: invalid YAML: did not find expected ',' or '}}'",
    ]


def test_the_messages_are_the_syncs_own_for_every_invalid_file_of_the_corpus():
    index = Index(CORPUS / "invalid")
    index.scan()
    synced = {Path(e.path).name: (e.line, e.column, e.reason) for e in index.resolve().errors}
    code, out, _ = run(str(CORPUS / "invalid"), "-o", "json")
    assert code == 1
    validated: dict[str, list[dict]] = {}
    for f in json.loads(out)["findings"]:
        validated.setdefault(Path(f["file"]).name, []).append(f)
    assert set(validated) == set(synced)
    for name, findings in validated.items():
        first = findings[0]
        assert synced[name] == (first["line"], first["column"],
                                "; ".join(f["reason"] for f in findings)), name


def test_every_invalid_corpus_file_fails_with_the_reason_it_announces():
    for path in sorted((CORPUS / "invalid").glob("*.yaml")):
        expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
        code, out, _ = run(str(path))
        assert code == 1 and re.search(expected, out), (path.name, out)
    code, out, _ = run(str(CORPUS / "valid"), "--strict")
    assert code == 0, out


def test_two_files_claiming_one_namespace_are_both_errors_pointing_at_the_identifier(tmp_path):
    write(tmp_path, "one.yaml", manifest("team.same"))
    write(tmp_path, "two.yaml", manifest("team.same"))
    code, out, _ = run(str(tmp_path))
    one, two = str(tmp_path / "one.yaml"), str(tmp_path / "two.yaml")
    assert code == 1
    assert out.splitlines() == [
        f"{one}:4:18: namespace team.same is also claimed by {two}",
        f"{two}:4:18: namespace team.same is also claimed by {one}",
    ]


def test_a_dependency_cycle_is_an_error_naming_the_cycle(tmp_path):
    write(tmp_path, "a.yaml", requires("team.a", team_b="*"))
    write(tmp_path, "b.yaml", requires("team.b", team_c="^1"))
    write(tmp_path, "c.yaml", requires("team.c", team_a=">=1.0.0 <2"))
    code, out, _ = run(str(tmp_path))
    assert code == 1
    assert out.splitlines() == [
        f"{tmp_path / 'a.yaml'}:10:3: dependency cycle: team.a → team.b → team.c → team.a"]


def test_unknown_targets_and_unsatisfied_ranges_are_warnings_and_errors_when_strict(tmp_path):
    write(tmp_path, "app.yaml", requires("team.app", team_db="^2.0.0", other_repo_thing="*"))
    write(tmp_path, "db.yaml", manifest("team.db", version="1.4.0"))
    code, out, err = run(str(tmp_path))
    app_file = tmp_path / "app.yaml"
    assert code == 0, out
    assert out.splitlines() == [
        f"{app_file}:11:7: warning: requires team.db ^2.0.0, but team.db is 1.4.0 here",
        f"{app_file}:13:7: warning: depends on other.repo.thing, which no manifest here "
        "declares (it may live in another repository)",
    ]
    assert err.strip() == "2 manifests checked: 0 errors, 2 warnings"
    code, out, _ = run(str(tmp_path), "--strict")
    assert code == 1 and "warning" not in out and len(out.splitlines()) == 2


def test_json_output_lists_findings_for_scripts(tmp_path):
    write(tmp_path, "a.yaml", manifest("team.a", version="1.0"))
    code, out, _ = run(str(tmp_path), "-o", "json")
    assert code == 1
    assert json.loads(out) == {
        "files": 1, "errors": 1, "warnings": 0, "valid": False,
        "findings": [{"file": str(tmp_path / "a.yaml"), "line": 7, "column": 18,
                      "severity": "error", "reason": "metadata.dc_hasVersion: version "
                      "'1.0' is not SemVer (x.y.z, such as 1.0.0)"}]}


def test_a_path_that_does_not_exist_is_a_usage_error_with_exit_2(tmp_path):
    code, _, err = run(str(tmp_path / "nope"))
    assert code == 2
    assert err.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"


@pytest.mark.parametrize(("where", "text", "version"), [
    ("dc_hasVersion", "metadata:\n  dc_identifier: a.b\n  dc_title: T\n  dc_type: Service\n"
     "  dc_hasVersion: '1.0.0'\n  chora_version: '2.0.0'\nchora_version: '3.0.0'\n", "1.0.0"),
    ("metadata.chora_version", "metadata:\n  dc_identifier: a.b\n  dc_title: T\n"
     "  dc_type: Service\n  chora_version: '2.0.0'\nchora_version: '3.0.0'\n", "2.0.0"),
    ("chora_version", "metadata:\n  dc_identifier: a.b\n  dc_title: T\n  dc_type: Service\n"
     "chora_version: '3.0.0'\n", "3.0.0"),
])
def test_the_version_is_read_from_dc_has_version_then_metadata_then_top_level(
    tmp_path, where, text, version
):
    import chora_manifests

    path = write(tmp_path, "m.yaml", text)
    assert chora_manifests.load(path, tmp_path).version == version, where
