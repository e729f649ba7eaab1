"""The token file and the scopes (``services/registry/tokens.py``), without a server:
what a file may say, how a broken one is reported, what each scope covers, the header
parsing and its cache, and the minted line that is appended to a file."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest

from services.registry import tokens
from services.registry.tokens import TokenFileError

H1, H2 = "a" * 64, "b" * 64


def test_a_file_lists_subjects_with_hashed_tokens_and_scopes_in_yaml_or_json():
    text = f"""
# a comment
- {{subject: orchestrator, sha256: {H1}, scopes: ["register:orch*"]}}
- subject: ops
  sha256: {H2}
  scopes: [read, admin]
  note: the on-call team
  created: 2026-01-01
"""
    found = tokens.parse(text, "tokens.yaml")
    assert len(found) == 2 and found.subjects == ["ops", "orchestrator"]
    assert found.identify(H1).scopes == ("register:orch*",)
    assert found.identify(H2).admin
    as_json = json.dumps([{"subject": "a", "sha256": H1, "scopes": ["read"]}])
    assert tokens.parse(as_json, "tokens.json").identify(H1).may_read()
    assert len(tokens.parse("", "empty.yaml")) == 0  # nothing allowed, not everything
    assert tokens.parse("# only comments\n", "c.yaml").identify(H1) is None


@pytest.mark.parametrize(("text", "said"), [
    ("{subject: a}", "expected a list of entries"),
    ("- just a string", "entry 1 is not a mapping"),
    (f"- {{subject: a, sha256: {H1}, scopes: [read]}}\n- {{subject: b, scopes: [read]}}",
     "entry 2 (subject 'b'): missing sha256"),
    ("- {subject: a, sha256: 1234, scopes: [read]}", "entry 1 (subject 'a'): sha256 must be"),
    (f"- {{subject: a, sha256: {H1.upper()}, scopes: [read]}}", "64 lowercase hex"),
    (f"- {{subject: a, sha256: {H1}, scopes: [write]}}", "entry 1 (subject 'a'): unknown "
                                                          "scope 'write'"),
    (f"- {{subject: a, sha256: {H1}, scopes: ['register:Orch*']}}", "lowercase"),
    (f"- {{subject: a, sha256: {H1}, scopes: ['register:']}}", "glob after 'register:'"),
    (f"- {{subject: a, sha256: {H1}, scopes: []}}", "scopes must be a non-empty list"),
    (f"- {{subject: a, sha256: {H1}, scope: [read]}}", "missing scopes"),
    (f"- {{subject: a, sha256: {H1}, scopes: [read], token: x}}", "unknown field(s) token"),
    (f"- {{subject: 'has space', sha256: {H1}, scopes: [read]}}", "subject must be"),
    (f"- {{subject: a, sha256: {H1}, scopes: [read]}}\n"
     f"- {{subject: b, sha256: {H1}, scopes: [admin]}}",
     "entry 2 (subject 'b') repeats the sha256 of subject 'a'"),
    ("- {subject: a, sha256: [", "not YAML"),
])
def test_a_malformed_file_is_refused_naming_the_file_and_the_entry(text, said):
    with pytest.raises(TokenFileError) as caught:
        tokens.parse(text, "/etc/chora/tokens.yaml")
    assert str(caught.value).startswith("--tokens /etc/chora/tokens.yaml: "), caught.value
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)  # one usage line


def test_a_register_glob_covers_matching_names_only_and_admin_covers_everything():
    def who(*scopes: str) -> tokens.Identity:
        return tokens.Identity("x", scopes, H1)

    orch = who("register:orch*")
    assert orch.may_write("orchestrator") and orch.may_write("orch")
    assert not orch.may_write("gateway") and not orch.may_write("my-orchestrator")
    assert not orch.may_read()  # scopes do not imply each other
    assert who("register:svc-?").may_write("svc-a") and not who("register:svc-?").may_write(
        "svc-ab")
    assert who("register:chora.devex.*").may_write("chora.devex.registry")
    assert who("register:*").may_write("anything") and not who("register:*").may_read()
    assert who("read").may_read() and not who("read").may_write("orchestrator")
    assert who("admin").may_read() and who("admin").may_write("gateway")


def test_the_bearer_header_is_hashed_once_per_value_and_anything_else_is_no_token():
    token = tokens.mint()
    expected = hashlib.sha256(token.encode()).hexdigest()
    assert tokens.header_hash(f"Bearer {token}".encode()) == expected == tokens.digest(token)
    assert tokens.header_hash(f"bearer  {token} ".encode()) == expected
    for value in (b"Basic dXNlcjpwdw==", b"Bearer", b"Bearer ", b"Bearer a b", b"",
                  b"Bearer " + b"x" * 2000, token.encode()):
        assert tokens.header_hash(value) is None, value
    before = tokens.header_hash.cache_info().hits
    for _ in range(3):
        tokens.header_hash(f"Bearer {token}".encode())
    assert tokens.header_hash.cache_info().hits == before + 3


def test_a_minted_token_is_random_prefixed_and_its_line_parses_to_its_hash():
    a, b = tokens.mint(), tokens.mint()
    assert a != b and a.startswith("chora_") and len(a) >= 40
    line = tokens.entry_line("orchestrator", a, ["register:orchestrator*", "read"])
    assert "\n" not in line and a not in line
    found = tokens.parse(line, "f").identify(tokens.digest(a))
    assert found is not None and found.subject == "orchestrator"
    assert found.scopes == ("register:orchestrator*", "read")


def test_appending_creates_a_private_file_adds_one_line_and_refuses_a_json_file(tmp_path):
    path = tmp_path / "tokens.yaml"
    first, second = tokens.mint(), tokens.mint()
    tokens.append(path, tokens.entry_line("a", first, ["read"]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens.append(path, tokens.entry_line("b", second, ["admin"]))
    found = tokens.read_file(path)
    assert found.subjects == ["a", "b"] and found.identify(tokens.digest(second)).admin

    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps([{"subject": "a", "sha256": H1, "scopes": ["read"]}]))
    with pytest.raises(TokenFileError, match="add this entry by hand"):
        tokens.append(as_json, tokens.entry_line("b", second, ["read"]))
    assert len(tokens.read_file(as_json)) == 1  # left as it was
    broken = tmp_path / "broken.yaml"
    broken.write_text("- {subject: a}\n")
    with pytest.raises(TokenFileError, match="missing"):
        tokens.append(broken, tokens.entry_line("b", second, ["read"]))
    assert broken.read_text() == "- {subject: a}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.yaml", "tokens.json", "tokens.yaml"]  # no temporary file left behind
