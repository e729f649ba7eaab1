"""Reading a manifest file and parsing its YAML safely: only regular files, bounded
size, no duplicate keys, no alias bombs, no nesting deep enough to crash libyaml."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from chora_manifests.errors import ManifestError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000  # after alias expansion; a normal manifest has a few hundred

SAFE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(SAFE_LOADER):  # type: ignore[misc,valid-type]
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
    for event in yaml.parse(text, Loader=SAFE_LOADER):
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
    """YAML 1.1 gives dates, and keys that are not strings; JSON and etcd want text."""
    if isinstance(value, dict):
        return {
            str(k).lower() if isinstance(k, bool) else str(k): json_safe(v)
            for k, v in value.items()
        }
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


def read_text(path: Path, root: Path, *, name: str | None = None) -> str:
    """The file's text, refusing what must never reach the parser.

    Only a regular file is read. Opening a FIFO named ``x.yaml`` for reading blocks until
    a writer appears, which hung the sync for good; a socket or a device is no manifest
    either. The file is opened non-blocking and checked again on the open descriptor, so
    swapping a FIFO in between the two checks cannot block us either."""
    source = name or str(path)
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root.resolve()):
            raise ManifestError(source, f"symlink to {target} leads outside {root}; not followed")
    _check_regular(source, path.stat())
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        _check_regular(source, st)
        if st.st_size > MAX_BYTES:
            raise ManifestError(
                source, f"{st.st_size} bytes; a manifest may be at most {MAX_BYTES}")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ManifestError(source, f"larger than {MAX_BYTES} bytes")
    if not data.strip():
        raise ManifestError(source, "empty file: no manifest in it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(source, f"not UTF-8 (byte {exc.start}: {exc.reason})") from None


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(path: Path | str, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    what = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
    raise ManifestError(path, f"is {what}, not a regular file; not read")
