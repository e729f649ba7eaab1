"""The manifest's JSON Schema, generated from the pydantic model (never written by
hand), for editors: completion, hover and red squiggles while typing a manifest.

``manifest schema`` prints it; ``schemas/capability-manifest.schema.json`` is the
committed copy (a test fails when it is stale). The model is the authority: the schema
says what it can, and its description lists what only ``manifest validate`` checks.
"""

from __future__ import annotations

import json
from typing import Any

from chora_manifests.files import MAX_BYTES
from chora_manifests.model import Manifest

DRAFT = "https://json-schema.org/draft/2020-12/schema"
COMMITTED = "schemas/capability-manifest.schema.json"  # relative to the repository root

NOT_EXPRESSED = (
    "Checked by `manifest validate` (and the sync) but not by this schema: the file is "
    f"one UTF-8 YAML document of at most {MAX_BYTES} bytes, without duplicate keys, "
    "alias bombs or nesting deeper than 64 levels; YAML 1.1 reads unquoted 1.10, yes "
    "or 2025-01-01 as a number, a boolean or a date (quote versions); no two files claim "
    "one namespace; dependencies form no cycle; and, as warnings, every dependency "
    "names a capability that exists and its npm-style range is satisfied by that "
    "capability's version."
)


def schema() -> dict[str, Any]:
    generated = Manifest.model_json_schema()
    return {
        "$schema": DRAFT,
        "title": "chora capability manifest",
        "description": ("A capability manifest as the chora gitops-sync reads it "
                        "(shared/registry-contract.md section 1). " + NOT_EXPRESSED),
        **{k: v for k, v in generated.items() if k not in ("title", "description")},
    }


def text() -> str:
    """The schema as committed: stable key order, two-space indent, final newline."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"
