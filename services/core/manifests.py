"""Capability manifests: safe loading and the pydantic model.

Tolerant where real manifests vary (``shared/registry-contract.md`` §1: no apiVersion,
missing service/pattern blocks, ``chora_version``, extra fields and relation kinds), and
strict where the store's safety depends on it: the namespace rule is what keeps a
manifest from writing outside its own keys, and the loader refuses what would cost
unbounded time or memory (alias bombs, deep nesting, huge files).

>>> cap = load(Path("capabilities/chora.devex.registry.yaml"), root=Path("capabilities"))
>>> cap.namespace, cap.type, cap.version
('chora.devex.registry', 'service', '1.0.0')
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError, field_validator

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000  # after alias expansion; a normal manifest has a few hundred
NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*){1,7}")
SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
MANIFEST_SUFFIXES = (".yaml", ".yml")

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(Exception):
    """A manifest that cannot be synced: ``str()`` names the file and the reason."""

    def __init__(self, path: Path | str, reason: str, namespace: str | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.namespace = namespace

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        """Picklable with its fields, for the parsing process pool."""
        return (type(self), (self.path, self.reason, self.namespace))


def is_manifest_name(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIXES) and not name.startswith(".")


def check_namespace(value: str) -> str:
    if len(value) > 253 or not NAMESPACE_RE.fullmatch(value):
        raise ValueError(
            f"namespace {value!r} is not 2-8 lowercase dotted segments of [a-z0-9_-] "
            "(at most 253 characters)"
        )
    return value


# -- YAML ---------------------------------------------------------------------------------


class _StrictLoader(_Loader):  # type: ignore[misc,valid-type]
    """Safe loader that refuses duplicate mapping keys, which PyYAML silently merges."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = (self.resolve(yaml.ScalarNode, key_node.value, (True, False))
                            if key_node.tag is None else key_node.tag, key_node.value)
                shown = key_node.value
            else:
                key = shown = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _surely_shallow(text: str) -> bool:
    """A cheap, conservative proof that a document has no anchors and nests less than
    MAX_DEPTH levels, so the event pass can be skipped for ordinary manifests.

    A nesting level opens with ``[``, ``{``, ``- ``, ``? `` or a deeper indentation (a
    block sequence may share its parent key's column, hence the factor 2)."""
    if "&" in text:
        return False
    indent = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines()), default=0)
    openers = (text.count("[") + text.count("{") + text.count("- ") + text.count("? ")
               + text.count("-\n") + text.count("-\t"))
    return 2 * (indent + 1) + openers < MAX_DEPTH


def _check_shape(text: str) -> None:
    """Count nodes as they would be after alias expansion, and nesting depth, from the
    event stream alone: bounded time and memory even for a billion-laughs document."""
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = []  # [anchor, node count]
    total = documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise ValueError("more than one YAML document; a manifest is one document")
        elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in sizes:
                    raise ValueError(f"alias *{event.anchor} names no anchor")
                n = sizes[event.anchor]
            else:
                n = 1
                if event.anchor:
                    sizes[event.anchor] = 1
            total += n
            if stack:
                stack[-1][1] += n
        elif isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, n = stack.pop()
            if anchor:
                sizes[anchor] = n
            total += 1
            if stack:
                stack[-1][1] += n
        if total > MAX_NODES:
            raise ValueError(
                f"expands to more than {MAX_NODES} nodes (a YAML alias bomb?); refused"
            )


def _json_safe(value: Any) -> Any:
    """YAML 1.1 gives dates, and keys that are not strings; JSON and etcd want text."""
    if isinstance(value, dict):
        return {
            str(k).lower() if isinstance(k, bool) else str(k): _json_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, set):
        return sorted(_json_safe(v) for v in value)
    raise ValueError(f"value of type {type(value).__name__} cannot be stored as JSON")


def parse_yaml(text: str) -> Any:
    if not _surely_shallow(text):
        # libyaml's composer recurses in C: a deeply nested document would crash the
        # process (SIGSEGV), not raise, so depth must be proven before composing.
        _check_shape(text)
    return yaml.load(text, Loader=_StrictLoader)


# -- model --------------------------------------------------------------------------------


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    dc_identifier: StrictStr
    dc_title: StrictStr
    dc_type: StrictStr
    dc_hasVersion: StrictStr | None = None

    _check_ns = field_validator("dc_identifier")(lambda cls, v: check_namespace(v))

    @field_validator("dc_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v.lower() not in ("service", "pattern"):
            raise ValueError(f"dc_type {v!r} is neither Service nor Pattern")
        return v


class Relation(BaseModel):
    model_config = ConfigDict(extra="allow")

    capability: StrictStr
    version: StrictStr = "*"
    relationship: StrictStr | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    metadata: Metadata
    chora_version: StrictStr | None = None
    dc_relation: dict[str, list[Relation | StrictStr] | None] | None = None


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


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_type" and isinstance(err.get("input"), int | float):
            msg += f" (got {err['input']!r}: quote it, YAML reads 1.10 as the number 1.1)"
        if err["type"] == "string_type" and isinstance(err.get("input"), bool):
            msg += f" (got {err['input']!r}: quote it, YAML reads yes/no/on/off as booleans)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


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
        raise ManifestError(source, _explain(exc), namespace) from None
    md = model.metadata
    version = md.dc_hasVersion or model.chora_version
    if version is None:
        raise ManifestError(
            source,
            "no version: set metadata.dc_hasVersion (or top-level chora_version)",
            namespace,
        )
    if not SEMVER_RE.fullmatch(version):
        raise ManifestError(source, f"version {version!r} is not SemVer (x.y.z)", namespace)
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
        document = _json_safe(doc)
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


def read_text(path: Path, root: Path) -> str:
    """The file's text, refusing what must never reach the parser.

    Only a regular file is read. Opening a FIFO named ``x.yaml`` for reading blocks until
    a writer appears, which hung the sync for good; a socket or a device is no manifest
    either. The file is opened non-blocking and checked again on the open descriptor, so
    swapping a FIFO in between the two checks cannot block us either."""
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root.resolve()):
            raise ManifestError(path, f"symlink to {target} leads outside {root}; not followed")
    _check_regular(path, path.stat())
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        _check_regular(path, st)
        if st.st_size > MAX_BYTES:
            raise ManifestError(path, f"{st.st_size} bytes; a manifest may be at most {MAX_BYTES}")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ManifestError(path, f"larger than {MAX_BYTES} bytes")
    if not data.strip():
        raise ManifestError(path, "empty file: no manifest in it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(path, f"not UTF-8 (byte {exc.start}: {exc.reason})") from None


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    what = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
    raise ManifestError(path, f"is {what}, not a regular file; not read")


def load(path: Path, root: Path) -> Capability:
    text = read_text(path, root)
    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "found another document" in problem:
            raise ManifestError(path, "more than one YAML document; a manifest is one") from None
        raise ManifestError(path, f"invalid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(path, str(exc) or "nested too deeply") from None
    return from_document(doc, str(path))
