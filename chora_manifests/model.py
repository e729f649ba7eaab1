"""The manifest model (pydantic) and its reduction to what the registry stores.

Tolerant where real manifests vary (``shared/registry-contract.md`` §1: no apiVersion,
missing service/pattern blocks, ``chora_version``, extra fields and relation kinds), and
strict where the store's safety depends on it: the namespace rule is what keeps a
manifest from writing outside its own keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
)

from chora_manifests.documents import json_safe
from chora_manifests.errors import ManifestError, Problem

NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*){1,7}")
SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)


def check_namespace(value: str) -> str:
    if len(value) > 253 or not NAMESPACE_RE.fullmatch(value):
        raise ValueError(
            f"namespace {value!r} is not 2-8 lowercase dotted segments of [a-z0-9_-] "
            "(at most 253 characters)"
        )
    return value


def _anycase(*words: str) -> str:
    """A JSON Schema pattern matching the words in any case (ECMA regexes have no
    inline ``(?i)``): ``Service`` → ``[Ss][Ee]…``."""
    return "^(" + "|".join("".join(f"[{c.upper()}{c}]" for c in w) for w in words) + ")$"


NAMESPACE_SCHEMA = {"pattern": f"^{NAMESPACE_RE.pattern}$", "maxLength": 253}
SEMVER_SCHEMA = {"type": "string", "pattern": f"^{SEMVER_RE.pattern}$"}
TYPE_SCHEMA = {"pattern": _anycase("service", "pattern")}
# Where the version is read, first found wins (a key given as null counts as absent).
VERSION_FIELDS = (("metadata", "dc_hasVersion"), ("metadata", "chora_version"),
                  ("chora_version",))


def _version_rule() -> dict[str, Any]:
    """The version order as JSON Schema: if/then/else, the first present field must be
    SemVer, and one of the three must be present."""

    def present(path: tuple[str, ...]) -> dict[str, Any]:
        *parents, leaf = path
        node: dict[str, Any] = {"properties": {leaf: {"type": "string"}}, "required": [leaf]}
        for parent in reversed(parents):
            node = {"properties": {parent: node}, "required": [parent]}
        return node

    def semver(path: tuple[str, ...]) -> dict[str, Any]:
        *parents, leaf = path
        node: dict[str, Any] = {"properties": {leaf: SEMVER_SCHEMA}}
        for parent in reversed(parents):
            node = {"properties": {parent: node}}
        return node

    rule: dict[str, Any] = {**present(VERSION_FIELDS[-1]), **semver(VERSION_FIELDS[-1])}
    for path in reversed(VERSION_FIELDS[:-1]):
        rule = {"if": present(path), "then": semver(path), "else": rule}
    return rule


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    dc_identifier: StrictStr = Field(json_schema_extra=NAMESPACE_SCHEMA,
                                     description="the capability's namespace: its keys "
                                     "live under /chora/capabilities/{namespace}/")
    dc_title: StrictStr
    dc_type: StrictStr = Field(json_schema_extra=TYPE_SCHEMA,
                               description="Service (heartbeated) or Pattern, any case")
    dc_hasVersion: StrictStr | None = Field(
        None, description="the version (SemVer); first of dc_hasVersion, "
        "metadata.chora_version, chora_version")
    chora_version: StrictStr | None = Field(
        None, description="the version when dc_hasVersion is not given (SemVer)")

    _check_ns = field_validator("dc_identifier")(lambda cls, v: check_namespace(v))

    @field_validator("dc_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v.lower() not in ("service", "pattern"):
            raise ValueError(f"dc_type {v!r} is neither Service nor Pattern")
        return v


class Relation(BaseModel):
    model_config = ConfigDict(extra="allow")

    capability: StrictStr = Field(description="the namespace depended on")
    version: StrictStr = Field("*", description="an npm-style range: ^1.0.0, ~1.2, "
                               ">=1.0.0 <2, *")
    relationship: StrictStr | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", title="chora capability manifest",
                              json_schema_extra={"allOf": [_version_rule()]})

    metadata: Metadata
    chora_version: StrictStr | None = Field(
        None, description="the version when metadata gives none (SemVer)")
    dc_relation: dict[str, list[Relation | StrictStr] | None] | None = Field(
        None, description="dependencies by kind (requires, recommends, ...): each a "
        "namespace, or {capability, version, relationship}")

    def version_field(self) -> tuple[str, str] | None:
        """(where, value) of the version that counts, in the documented order."""
        for where, value in (("metadata.dc_hasVersion", self.metadata.dc_hasVersion),
                             ("metadata.chora_version", self.metadata.chora_version),
                             ("chora_version", self.chora_version)):
            if value is not None:
                return where, value
        return None


@dataclass(frozen=True)
class Capability:
    """A valid manifest, reduced to what the registry stores."""

    namespace: str
    type: str  # "service" | "pattern"
    version: str
    metadata: dict[str, Any]  # the manifest's metadata mapping as written
    dependencies: list[dict[str, str]]
    document: dict[str, Any] = field(repr=False)  # the whole manifest, JSON-safe
    source: str = ""


UNION_TAGS = ("Relation", "str")  # pydantic names the member of a union in the path


def _problems(exc: ValidationError) -> tuple[Problem, ...]:
    """One problem per field, its path as the manifest spells it. Of the two branches of
    a dependency (a namespace string, or a mapping) only the one the author meant is
    reported: the mapping's when they wrote a mapping, the string's otherwise."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        value = err.get("input")
        if "str" in loc and isinstance(value, dict):
            continue  # they wrote a mapping: the mapping's error says what is wrong
        if "Relation" in loc and err["type"] == "model_type":
            continue  # not a mapping: the string branch's error is the one to read
        loc = tuple(p for p in loc if p not in UNION_TAGS)
        msg = re.sub(r" or instance of \w+", "", err["msg"].removeprefix("Value error, "))
        if err["type"] == "string_type" and isinstance(value, bool):
            msg += f" (got {value!r}: quote it, YAML reads yes/no/on/off as booleans)"
        elif err["type"] == "string_type" and isinstance(value, int | float):
            msg += f" (got {value!r}: quote it, YAML reads 1.10 as the number 1.1)"
        out.append(Problem(f"{'.'.join(str(p) for p in loc)}: {msg}", loc))
    return tuple(out)


def from_document(doc: Any, source: str) -> Capability:
    """Validate a parsed document: ``ManifestError`` naming ``source`` and the reason."""
    if doc is None:
        raise ManifestError(source, "empty file: no manifest in it")
    if not isinstance(doc, dict):
        raise ManifestError(source, f"top level is a {type(doc).__name__}, not a mapping")
    namespace = None
    meta = doc.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("dc_identifier"), str):
        try:
            namespace = check_namespace(meta["dc_identifier"])
        except ValueError:
            namespace = None
    try:
        model = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(source, namespace=namespace, problems=_problems(exc)) from None
    md = model.metadata
    found = model.version_field()
    if found is None:
        raise ManifestError(source, namespace=namespace, problems=(Problem(
            "no version: set metadata.dc_hasVersion (or metadata.chora_version, or "
            "top-level chora_version)", ("metadata",)),))
    where, version = found
    if not SEMVER_RE.fullmatch(version):
        loc = tuple(where.split("."))
        raise ManifestError(source, namespace=namespace, problems=(
            Problem(f"{where}: version {version!r} is not SemVer (x.y.z, such as 1.0.0)",
                    loc),))
    dependencies = []
    for kind, items in (model.dc_relation or {}).items():
        for item in items or []:
            if isinstance(item, str):
                dependencies.append({"capability": item, "version": "*", "relationship": kind})
            else:
                dependencies.append(
                    {
                        "capability": item.capability,
                        "version": item.version,
                        "relationship": item.relationship or kind,
                    }
                )
    try:
        document = json_safe(doc)
    except ValueError as exc:
        raise ManifestError(source, str(exc), namespace) from None
    return Capability(
        namespace=md.dc_identifier,
        type=md.dc_type.lower(),
        version=version,
        metadata=document["metadata"],
        dependencies=dependencies,
        document=document,
        source=source,
    )
