"""``manifest validate`` and ``manifest schema``: the offline commands for people who
write manifests (no registry, no etcd). The rules are ``chora_manifests``', the same
code the sync loads with, so the validator cannot drift from what the sync accepts.

Exit codes of ``validate``: 0 every file valid (warnings allowed unless ``--strict``),
1 a problem found, 2 a path that does not exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from chora_manifests import checking
from chora_manifests import schema as manifest_schema

EXIT_INVALID = 1
EXIT_USAGE = 2


def validate(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Manifest files or directories (the manifests directly inside). "
             "Default: capabilities/.", show_default=False)] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Warnings are errors: a dependency on a capability not in these "
                         "files, a range its version does not satisfy.")] = False,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="text (file:line:column: reason) or json.")] = "text",
) -> None:
    """Check manifests before committing them: the sync's own rules and messages.

    One line per problem, file:line:column: reason. Across files: two files claiming one
    namespace and dependency cycles are errors; a dependency on a capability that exists
    nowhere here, or an npm range its version does not satisfy, is a warning (--strict:
    an error). Exit 0 valid, 1 problems found, 2 no such path."""
    if output not in ("text", "json"):
        typer.echo(f"error: --output {output!r}: choose text or json", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        result = checking.validate(paths or [checking.DEFAULT_PATH], strict=strict)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    errors, warnings = result.count("error"), result.count("warning")
    if output == "json":
        typer.echo(json.dumps({"files": result.files, "errors": errors, "warnings": warnings,
                               "valid": errors == 0,
                               "findings": [f.as_json() for f in result.findings]}, indent=2))
    else:
        for finding in result.findings:
            typer.echo(str(finding))
        typer.echo(_summary(result.files, errors, warnings), err=True)
    if errors:
        raise typer.Exit(EXIT_INVALID)


def _summary(files: int, errors: int, warnings: int) -> str:
    def n(count: int, what: str) -> str:
        return f"{count} {what}{'' if count == 1 else 's'}"

    if not errors and not warnings:
        return f"{n(files, 'manifest')} valid"
    return f"{n(files, 'manifest')} checked: {n(errors, 'error')}, {n(warnings, 'warning')}"


def schema() -> None:
    """Print the manifest's JSON Schema (generated from the model), for editors.

    Save it and point yaml-language-server at it; the repository keeps a copy in
    schemas/capability-manifest.schema.json."""
    typer.echo(manifest_schema.text(), nl=False)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(schema)
