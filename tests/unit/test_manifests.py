import os
import time
from pathlib import Path

import pytest
import yaml

import chora_manifests as manifests
from chora_manifests import ManifestError, load
from tests.manifests import manifest


def write(tmp_path: Path, text: str | bytes, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def load_text(tmp_path: Path, text: str | bytes) -> manifests.Capability:
    return load(write(tmp_path, text), tmp_path)


SEED_STYLE = """\
# Capability manifest for the registry
# (a leading comment block, no apiVersion/kind)
metadata:
  dc_identifier: chora.devex.registry
  dc_identifier_legacy: SAP-044
  dc_title: Capability Registry & Discovery
  dc_description: >
    Service registry with
    health monitoring
  dc_type: service
  dc_creator: chora-base
  dc_date: 2025-11-15
  dc_subject: [registry, discovery]
  chora_maturity: beta
chora_version: 2.1.0
chora_service:
  interfaces: [cli, rest]
  health: {endpoint: /health, interval: 10, timeout: 5, heartbeat_ttl: 30}
dc_relation:
  requires:
    - capability: chora.infrastructure.sap_framework
      version: ^1.0.0
      relationship: prerequisite
      reason: needs the framework
    - chora.devex.interface_design
  recommends:
    - capability: chora.awareness.sap_self_evaluation
adoption: {teams: 3}
"""


def test_a_manifest_with_every_real_world_variation_is_accepted(tmp_path):
    cap = load_text(tmp_path, SEED_STYLE)
    assert cap.namespace == "chora.devex.registry"
    assert cap.type == "service"
    assert cap.version == "2.1.0"  # chora_version, since dc_hasVersion is missing
    assert cap.metadata["dc_identifier_legacy"] == "SAP-044"
    assert cap.metadata["chora_maturity"] == "beta"  # unknown fields kept
    assert cap.metadata["dc_description"] == "Service registry with health monitoring\n"
    assert cap.metadata["dc_date"] == "2025-11-15"  # a YAML date, stored as text
    assert cap.document["adoption"] == {"teams": 3}
    assert cap.dependencies == [
        {
            "capability": "chora.infrastructure.sap_framework",
            "version": "^1.0.0",
            "relationship": "prerequisite",
        },
        {"capability": "chora.devex.interface_design", "version": "*", "relationship": "requires"},
        {
            "capability": "chora.awareness.sap_self_evaluation",
            "version": "*",
            "relationship": "recommends",
        },
    ]


def test_dc_has_version_wins_over_chora_version_and_dc_date_is_never_the_version(tmp_path):
    text = manifest("a.b", version="3.0.0") + "chora_version: 9.9.9\n"
    assert load_text(tmp_path, text).version == "3.0.0"
    no_version = "metadata: {dc_identifier: a.b, dc_title: T, dc_type: Pattern, dc_date: 2025-1-1}"
    with pytest.raises(ManifestError, match="no version"):
        load_text(tmp_path, no_version)


@pytest.mark.parametrize("dc_type", ["Service", "service", "SERVICE", "Pattern", "pattern"])
def test_the_type_is_read_in_any_case(tmp_path, dc_type):
    assert load_text(tmp_path, manifest("a.b", type=dc_type)).type == dc_type.lower()


def test_a_pattern_without_chora_pattern_and_a_service_without_chora_service_are_valid(tmp_path):
    assert load_text(tmp_path, manifest("a.b", type="Pattern")).type == "pattern"
    assert load_text(tmp_path, manifest("a.c", type="Service")).type == "service"


def test_a_normal_anchor_and_alias_is_allowed(tmp_path):
    text = manifest("a.b") + "defaults: &d {timeout: 5}\nchora_service: {health: *d}\n"
    assert load_text(tmp_path, text).document["chora_service"]["health"] == {"timeout": 5}


ILLEGAL_NAMESPACES = [
        "Chora.devex",
        "single",
        "a/b.c",
        "a..b",
        "'a.b c'",
        "../etc.passwd",
        ".a.b",
        "a.b.",
        "a.b.c.d.e.f.g.h.i",
        "a." + "b" * 252,
        "'a.b\\x00'",
        "-a.b",
        "'a.b\\n'",
    ]


@pytest.mark.parametrize("namespace", ILLEGAL_NAMESPACES)
def test_an_illegal_namespace_is_rejected_naming_the_file(tmp_path, namespace):
    text = manifest("x.y").replace("dc_identifier: x.y", f"dc_identifier: {namespace}")
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, text)
    assert str(err.value).startswith(str(tmp_path / "m.yaml"))
    assert "dc_identifier" in str(err.value) or "namespace" in str(err.value)


def test_a_yaml_alias_bomb_is_rejected_fast(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.monotonic()
    with pytest.raises(ManifestError, match="alias bomb"):
        load_text(tmp_path, "\n".join(lines))
    assert time.monotonic() - start < 1.0


def test_deep_nesting_is_rejected_without_a_recursion_error(tmp_path):
    with pytest.raises(ManifestError, match="nested deeper"):
        load_text(tmp_path, "a: " + "[" * 50_000 + "]" * 50_000)


BAD_INPUT = [
        ("metadata: {dc_identifier: a.b\n", r"m\.yaml:2:1: invalid YAML"),
        (manifest("a.b") + "metadata: {}\n", "duplicate key 'metadata'"),
        (manifest("a.b") + "---\n" + manifest("a.c"), "more than one YAML document"),
        ("- a\n- b\n", "top level is a list"),
        ("metadata: {dc_identifier: a.b, dc_type: Service, dc_hasVersion: 1.0.0}", "dc_title"),
        (
            "metadata: {dc_identifier: a.b, dc_title: T, dc_type: Tool, dc_hasVersion: 1.0.0}",
            "neither Service nor Pattern",
        ),
        (
            "metadata: {dc_identifier: a.b, dc_title: T, dc_type: Service, dc_hasVersion: 1.10}",
            "quote it",
        ),
        (
            "metadata: {dc_identifier: a.b, dc_title: T, dc_type: Service, dc_hasVersion: '1.0'}",
            "not SemVer",
        ),
        ("   \n", "empty file"),
        ("# only a comment\n", "empty file"),
        (b"metadata: {dc_title: \xff\xfe}\n", "not UTF-8"),
    ]


@pytest.mark.parametrize(("text", "reason"), BAD_INPUT)
def test_bad_input_gets_one_clear_reason(tmp_path, text, reason):
    with pytest.raises(ManifestError, match=reason):
        load_text(tmp_path, text)


@pytest.mark.parametrize(("text", "reason"), [
    ("a: !!bool maybe\n", "1:4: invalid YAML: 'maybe' is not a valid !!bool"),
    ("a: [1, !!timestamp soon]\n", "1:8: invalid YAML: 'soon' is not a valid !!timestamp"),
    ("a: !!set [1]\n", "1:4: invalid YAML: this sequence is not a valid !!set"),
    ("a:\n  b: !!int abc\n", "2:6: invalid YAML: 'abc' is not a valid !!int"),
])
def test_an_explicit_tag_its_value_does_not_fit_is_reported_where_it_is(text, reason):
    with pytest.raises(ManifestError) as err:
        manifests.parse(text, name="a.yaml")
    assert str(err.value) == f"a.yaml:{reason}"


def test_a_file_over_one_mib_is_rejected_before_parsing(tmp_path):
    text = manifest("a.b") + "padding: '" + "x" * (1024 * 1024) + "'\n"
    with pytest.raises(ManifestError, match="at most 1048576"):
        load_text(tmp_path, text)


def _pipe_with(*chunks: bytes) -> int:
    """A pipe's read end, its writer sending ``chunks`` from a thread (a pipe hands a
    reader what has arrived so far: reads shorter than asked, as a file growing would)."""
    import threading

    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb", buffering=0) as f:
            for chunk in chunks:
                f.write(chunk)

    threading.Thread(target=write, daemon=True).start()
    return r


# 6: the reads come back shorter than the size measured, and are continued; 0: the file
# grew after it was measured, and is read on to its end.
@pytest.mark.parametrize("size", [0, 6])
def test_the_bytes_read_are_the_whole_file_when_reads_are_short_or_it_grew(size):
    from chora_manifests.files import _read_fd

    fd = _pipe_with(b"abc", b"def")
    try:
        assert _read_fd(fd, size) == b"abcdef"
    finally:
        os.close(fd)


def test_a_file_that_grows_past_one_mib_after_it_was_measured_is_read_no_further(tmp_path):
    from chora_manifests.files import MAX_BYTES, _read_fd

    path = tmp_path / "a.yaml"
    path.write_bytes(b"x" * (MAX_BYTES + 10))  # 10 bytes when measured, then it grew
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(_read_fd(fd, 10)) == MAX_BYTES + 1
    finally:
        os.close(fd)


def test_a_symlink_leading_outside_the_directory_is_not_followed(tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_text(manifest("a.b"))
    root = tmp_path / "caps"
    root.mkdir()
    os.symlink(outside, root / "link.yaml")
    with pytest.raises(ManifestError, match="leads outside"):
        load(root / "link.yaml", root)
    os.symlink(root / "inner.yaml", root / "inner-link.yaml")
    (root / "inner.yaml").write_text(manifest("a.c"))
    assert load(root / "inner-link.yaml", root).namespace == "a.c"


@pytest.mark.parametrize(
    ("name", "is_manifest"),
    [
        ("a.yaml", True),
        ("a.yml", True),
        ("a.json", False),
        ("README.md", False),
        (".a.yaml.swp", False),
        (".hidden.yaml", False),
        ("a.yaml~", False),
    ],
)
def test_only_yaml_files_are_manifests(name, is_manifest):
    assert manifests.is_manifest_name(name) is is_manifest


def _load_within(path: Path, root: Path, seconds: float = 5.0) -> ManifestError:
    """Load in a thread, so a regression that blocks fails the test instead of hanging it."""
    import threading

    out: list[BaseException] = []

    def target() -> None:
        try:
            load(path, root)
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"loading {path.name} blocked"
    assert out and isinstance(out[0], ManifestError), out
    return out[0]


def test_a_fifo_named_like_a_manifest_is_rejected_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    err = _load_within(tmp_path / "pipe.yaml", tmp_path)
    assert "pipe.yaml" in str(err) and "FIFO" in err.reason and "not a regular file" in err.reason


def test_a_directory_and_a_socket_named_like_manifests_are_rejected(tmp_path):
    import socket

    (tmp_path / "dir.yaml").mkdir()
    assert "is a directory" in _load_within(tmp_path / "dir.yaml", tmp_path).reason
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock.yaml"))
        assert "is a socket" in _load_within(tmp_path / "sock.yaml", tmp_path).reason
    finally:
        sock.close()


def test_a_symlink_to_a_fifo_inside_the_directory_is_rejected_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "pipe")
    assert "FIFO" in _load_within(tmp_path / "link.yaml", tmp_path).reason


@pytest.mark.parametrize("text", [
    "a: &x {b: 1, c: [1, 2.5, .inf]}\nd: *x\ne: {<<: *x, f: 2}\n",
    "d: 2024-01-01\nt: 2024-01-01 10:00:00\nb: yes\nn: ~\no: 0o17\nh: 0x1F\ns: '1'\n",
    "- !!str 1\n- !!int '2'\n- !!binary aGVsbG8=\n- !!set {a, b}\n- [x, {y: [z]}]\n",
    "1: one\ntrue: yes\nnull: none\n2024-01-01: date key\n",
    # the same scalars plain and quoted: a tag remembered for one is not the other's
    "a: yes\nb: 'yes'\nc: 1\nd: '1'\ne: \"1\"\nf: [yes, 'yes', 1, '1']\n",
    # integers built here only when plainly decimal; keys equal once built, not as text
    "a: [0, 00, 010, -0, +5, -12, 1_000, 0x1F, 0b101, 1:30, 12, 3.5]\n1: x\n0x1: y\n",
    "a: !!int '12'\nb: !!bool 'yes'\nc: !!null 'x'\nd: [On, off, NULL, ~, '']\n",
])
def test_strings_lists_and_mappings_built_directly_are_what_pyyaml_builds(text):
    from chora_manifests.documents import SAFE_LOADER, parse_yaml

    assert parse_yaml(text) == yaml.load(text, Loader=SAFE_LOADER)


def test_json_safe_gives_text_keys_iso_dates_and_sorted_sets_at_any_depth():
    import datetime as dt

    from chora_manifests.documents import json_safe

    value = {True: 1, 2: [dt.date(2024, 1, 1)], "a": {False: None, "s": {3, 1}},
             "t": dt.datetime(2024, 1, 1, 10, 0)}
    assert json_safe(value) == {"true": 1, "2": ["2024-01-01"],
                                "a": {"false": None, "s": [1, 3]},
                                "t": "2024-01-01T10:00:00"}
    with pytest.raises(ValueError, match="bytes cannot be stored as JSON"):
        json_safe({"b": [b"x"]})
