"""The manifest's JSON Schema: generated from the model, committed, and in agreement with
the model on every manifest of the test suite."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from chora_manifest_client.cli import app
from chora_manifests import ManifestError, from_document, parse_yaml, schema
from tests.manifests import manifest
from tests.unit.test_manifests import BAD_INPUT, ILLEGAL_NAMESPACES, SEED_STYLE

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / schema.COMMITTED
CORPUS = REPO / "tests" / "data" / "manifests"


def texts() -> list[tuple[str, str]]:
    """(name, text) of every manifest the test suite has: the repository's own, the
    corpus directories, and the texts of the loader's tables."""
    files = [*sorted((REPO / "capabilities").glob("*.y*ml")),
             *sorted(CORPUS.glob("*/*.yaml"))]
    out = [(str(f.relative_to(REPO)), f.read_text()) for f in files]
    out += [(f"BAD_INPUT[{i}]", text) for i, (text, _) in enumerate(BAD_INPUT)
            if isinstance(text, str)]
    out += [(f"namespace {ns!r}", manifest("x.y").replace("dc_identifier: x.y",
                                                          f"dc_identifier: {ns}"))
            for ns in ILLEGAL_NAMESPACES]
    out += [("SEED_STYLE", SEED_STYLE), ("manifest()", manifest("a.b"))]
    return out


def corpus() -> list[tuple[str, object]]:
    """(name, document) of those the YAML layer accepts. The rest (invalid YAML,
    duplicate keys, several documents, empty) never reach a model or a schema: the
    schema's description says so."""
    out = []
    for name, text in texts():
        try:
            document = parse_yaml(text)
        except Exception:
            continue
        if document is not None:
            out.append((name, document))
    return out


def test_manifest_schema_prints_the_committed_copy_which_is_not_stale():
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == schema.text()
    assert COMMITTED.read_text() == schema.text(), (
        f"{schema.COMMITTED} is stale: run `manifest schema > {schema.COMMITTED}`")
    jsonschema.Draft202012Validator.check_schema(json.loads(COMMITTED.read_text()))


def test_the_schema_says_what_it_cannot_express():
    description = json.loads(COMMITTED.read_text())["description"]
    for rule in ("duplicate keys", "one namespace", "no cycle", "range"):
        assert rule in description


@pytest.mark.parametrize(("name", "document"), corpus(), ids=[n for n, _ in corpus()])
def test_the_schema_and_the_model_agree_on_every_manifest_of_the_suite(name, document):
    try:
        from_document(document, name)
        model_valid, reason = True, ""
    except ManifestError as exc:
        model_valid, reason = False, exc.reason
    errors = list(jsonschema.Draft202012Validator(schema.schema()).iter_errors(document))
    assert (not errors) == model_valid, (name, reason, [e.message for e in errors[:3]])


def test_the_corpus_holds_both_kinds():
    verdicts = []
    for name, document in corpus():
        try:
            from_document(document, name)
            verdicts.append(True)
        except ManifestError:
            verdicts.append(False)
    assert verdicts.count(True) >= 10 and verdicts.count(False) >= 20
    assert len(texts()) - len(corpus()) >= 4  # the YAML layer's refusals, left out
