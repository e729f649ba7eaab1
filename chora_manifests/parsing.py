"""Text to capability: the YAML layer, then the model, with each problem's line and
column. ``load`` is ``read_text`` + ``parse``; the sync, which hashes the text it read
before deciding to parse it, calls the two apart, so the digest is of exactly the bytes
parsed."""

from __future__ import annotations

import yaml

from chora_manifests.documents import parse_yaml
from chora_manifests.errors import ManifestError, Problem
from chora_manifests.model import Capability, from_document
from chora_manifests.positions import locate


def parse(text: str, *, name: str) -> Capability:
    """The capability in ``text`` (the file ``name``), or ``ManifestError`` naming it."""
    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if "found another document" in problem:
            problem = "more than one YAML document; a manifest is one"
        else:
            problem = f"invalid YAML: {problem}"
        at = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise ManifestError(name, problems=(Problem(problem, (), *at),)) from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(name, str(exc) or "nested too deeply") from None
    try:
        return from_document(doc, name)
    except ManifestError as exc:
        raise exc.placed(text, locate) from None
