"""Reading a manifest file and parsing its YAML safely: only regular files, bounded
size, no duplicate keys, no alias bombs, no nesting deep enough to crash libyaml."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import yaml

MAX_DEPTH = 64
MAX_NODES = 100_000  # after alias expansion; a normal manifest has a few hundred

SAFE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


STR, SEQ, MAP, INT, BOOL, NULL = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "seq", "map", "int", "bool", "null"))
MERGE = "tag:yaml.org,2002:merge"
# Plain scalar → its tag (``_StrictLoader.resolve``): keys and short values, the ones
# that recur; bounded, so a long-running sync holds a few MB at most.
_PLAIN_TAGS: dict[str, str] = {}
_PLAIN_TAGS_MAX = 20_000
_PLAIN_TAG_LENGTH = 64
_SCALAR, _SEQUENCE, _MAPPING = yaml.ScalarNode, yaml.SequenceNode, yaml.MappingNode


class _StrictLoader(SAFE_LOADER):  # type: ignore[misc,valid-type]
    """Safe loader that refuses duplicate mapping keys, which PyYAML silently merges.

    Strings, lists and mappings (what manifests are made of) are built here directly:
    PyYAML's constructor builds every node through generators and bookkeeping for
    recursive documents, ~60 % of a manifest's parse. Every other node (numbers,
    booleans, dates, merge keys, explicit tags) is still PyYAML's, so the values are
    the ones it gives."""

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        """PyYAML's tag resolution, remembered: called for every node, it tries the
        implicit resolvers' regular expressions on every plain scalar; the same keys and
        values recur across a directory of manifests. Equal to PyYAML's own as long as no
        path resolver is added (none is: safe loading adds none)."""
        if kind is _SCALAR:
            if not implicit[0]:
                return STR
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(value) <= _PLAIN_TAG_LENGTH and len(_PLAIN_TAGS) < _PLAIN_TAGS_MAX:
                    _PLAIN_TAGS[value] = tag
            return tag
        return SEQ if kind is _SEQUENCE else MAP

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return self._build(node)
        finally:
            self.constructed_objects, self.recursive_objects = {}, {}

    def _build(self, node: yaml.Node) -> Any:
        """Strings, decimal integers, booleans, nulls and collections here, anything
        else PyYAML's (the same values: tests/unit/test_manifests.py). A mapping's
        keys are checked for duplicates only when the dict came out shorter than the
        node (equal keys, or keys PyYAML builds equal, such as 1 and 0x1)."""
        kind, tag = type(node), node.tag
        if kind is _SCALAR:
            if tag == STR:
                return node.value
            value = node.value
            if tag == INT and value.isascii() and value.isdigit() and (
                    value[0] != "0" or value == "0"):
                return int(value)  # plain decimal: what construct_yaml_int gives
            if tag == BOOL and (known := self.bool_values.get(value.lower())) is not None:
                return known
            return None if tag == NULL else self.construct_object(node, deep=True)
        build = self._build
        if kind is _SEQUENCE and tag == SEQ:
            return [item.value if type(item) is _SCALAR and item.tag == STR else build(item)
                    for item in node.value]
        if kind is _MAPPING and tag == MAP:
            out: dict[Any, Any] = {}
            for k, v in node.value:
                if k.tag == MERGE:  # PyYAML's merge semantics, for the whole mapping
                    return self.construct_object(node, deep=True)
                key = k.value if type(k) is _SCALAR and k.tag == STR else build(k)
                value = v.value if type(v) is _SCALAR and v.tag == STR else build(v)
                try:
                    out[key] = value
                except TypeError:  # an unhashable key: said with its position
                    self._refuse_duplicates(node)
                    raise
            if len(out) < len(node.value):
                self._refuse_duplicates(node)
            return out
        return self.construct_object(node, deep=True)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's, with its constructors' bare errors on an explicit tag they cannot
        read (``!!bool maybe``: KeyError; ``!!timestamp x``: AttributeError; ``!!set
        [1]``: TypeError; ``!!int x``: ValueError) said as a YAML error at the node, so
        the file is reported, with a position, instead of the error escaping every
        reconcile."""
        try:
            return super().construct_object(node, deep=deep)
        except (KeyError, AttributeError, TypeError, IndexError, ValueError):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            what = (repr(node.value) if isinstance(node, yaml.ScalarNode)
                    else f"this {node.id}")  # "sequence", "mapping"
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} is not a valid {tag}", node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
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


def _surely_shallow(text: str) -> bool:
    """A cheap, conservative proof that a document has no anchors and nests less than
    MAX_DEPTH levels, so the event pass can be skipped for ordinary manifests.

    A nesting level opens with ``[``, ``{``, ``- ``, ``? `` or a deeper indentation (a
    block sequence may share its parent key's column, hence the factor 2): so the
    proof holds when ``2 * (indent + 1) + openers < MAX_DEPTH``, that is when no line
    is indented by ``deep`` spaces or more (lines as ``str.splitlines`` breaks them)."""
    if "&" in text:
        return False
    openers = (text.count("[") + text.count("{") + text.count("- ") + text.count("? ")
               + text.count("-\n") + text.count("-\t"))
    deep = (MAX_DEPTH - openers - 1) // 2  # the least indent that breaks the inequality
    if deep <= 0:
        return False
    margin = " " * deep
    if text.isascii() and not any(brk in text for brk in _OTHER_ASCII_BREAKS):
        return not text.startswith(margin) and "\n" + margin not in text  # one C scan
    return not any(line.startswith(margin) for line in text.splitlines())


_OTHER_ASCII_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e"  # where splitlines breaks, besides \n


def _check_shape(text: str) -> None:
    """Count nodes as they would be after alias expansion, and nesting depth, from the
    event stream alone: bounded time and memory even for a billion-laughs document."""
    try:
        _count(yaml.parse(text, Loader=SAFE_LOADER))
    except yaml.YAMLError as exc:
        # PyYAML 6.0.4's scanner stops at 1,000 levels while it reads ahead, before the
        # events reach our count: deeper than ours too, so said our way.
        if "maximum nesting depth" in str(exc):
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
        raise


def _count(events: Iterable[Any]) -> None:
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = []  # [anchor, node count]
    total = documents = 0
    for event in events:
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


def json_safe(value: Any) -> Any:
    """YAML 1.1 gives dates, and keys that are not strings; JSON and etcd want text.
    Strings, mappings with string keys and lists first: what manifests are made of."""
    if type(value) is str:
        return value
    if isinstance(value, dict):
        return {k if type(k) is str else str(k).lower() if isinstance(k, bool) else str(k):
                json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, set):
        return sorted(json_safe(v) for v in value)
    raise ValueError(f"value of type {type(value).__name__} cannot be stored as JSON")


def parse_yaml(text: str) -> Any:
    if not _surely_shallow(text):
        # libyaml's composer recurses in C: a deeply nested document would crash the
        # process (SIGSEGV), not raise, so depth must be proven before composing.
        _check_shape(text)
    return yaml.load(text, Loader=_StrictLoader)
