"""The pre-commit hook this repository offers (``.pre-commit-hooks.yaml``), run the way a
team would try it: ``pre-commit try-repo <this repo> validate-capabilities`` in a
temporary git repository of theirs. pre-commit builds the hook's own environment from
this repository (pip, from its package index or cache), so this takes a few seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.manifests import manifest

REPO = Path(__file__).resolve().parents[2]
PRE_COMMIT = Path(sys.executable).with_name("pre-commit")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   timeout=60)


def try_repo(team: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(
        [str(PRE_COMMIT), "try-repo", str(REPO), "validate-capabilities", "--color", "never"],
        cwd=team, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(600)
def test_the_hook_blocks_a_bad_manifest_with_the_validators_message_and_passes_a_good_one(
    tmp_path,
):
    assert shutil.which("git"), "git is needed for pre-commit"
    team, home = tmp_path / "team-repo", tmp_path / "pre-commit-home"
    (team / "capabilities").mkdir(parents=True)
    git(team, "init", "-q")
    (team / "capabilities" / "team.api.yaml").write_text(manifest("team.api"))
    (team / "capabilities" / "team.db.yaml").write_text(
        manifest("team.db").replace("dc_type: Service", "dc_type: Tool"))
    git(team, "add", "capabilities")

    bad = try_repo(team, home)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "validate capability manifests" in bad.stdout and "Failed" in bad.stdout
    message = ("capabilities/team.db.yaml:6:12: metadata.dc_type: dc_type 'Tool' is "
               "neither Service nor Pattern")
    assert message in bad.stdout, bad.stdout

    (team / "capabilities" / "team.db.yaml").write_text(manifest("team.db"))
    git(team, "add", "capabilities")
    good = try_repo(team, home)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "validate capability manifests" in good.stdout and "Passed" in good.stdout
