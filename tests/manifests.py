"""Manifest text for tests: ``manifest("a.b")`` is a valid Service, keyword arguments
override metadata fields, ``extra`` appends raw YAML."""

from __future__ import annotations


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
