"""Manifest text for tests: ``manifest("a.b")`` is a valid Service, keyword arguments
override metadata fields, ``extra`` appends raw YAML; ``corpus`` writes a directory of
them."""

from __future__ import annotations

from pathlib import Path


def manifest(
    namespace: str,
    *,
    type: str = "Service",
    version: str = "1.0.0",
    title: str | None = None,
    extra: str = "",
) -> str:
    return (
        "apiVersion: chora.dev/v1\n"
        "kind: Capability\n"
        "metadata:\n"
        f"  dc_identifier: {namespace}\n"
        f"  dc_title: {title or 'Title of ' + namespace}\n"
        f"  dc_type: {type}\n"
        f"  dc_hasVersion: '{version}'\n"
        "  dc_date: '2025-11-15'\n" + extra
    )


def corpus(root: Path, count: int) -> Path:
    """A new directory ``root`` of ``count`` valid manifests: c00.yaml claiming
    chora.test.c00, c01.yaml…"""
    root.mkdir()
    width = max(2, len(str(count - 1)))
    for i in range(count):
        (root / f"c{i:0{width}}.yaml").write_text(manifest(f"chora.test.c{i:0{width}}"))
    return root
