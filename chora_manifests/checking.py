"""``manifest validate``: a directory of manifests checked the way the sync will see it,
before it is committed. Offline; no etcd, no registry.

Each file is loaded by ``chora_manifests.load``, the sync's own loader, so a file that
passes here is one the sync accepts, and a refused one gets the sync's message. Then the
checks only a whole directory allows:

- errors: two files claiming one namespace (the sync keeps both out), dependency cycles
  (named: ``a → b → a``);
- warnings (errors with ``strict``): a dependency on a capability that no file here
  declares (it may live in another repository), a range the target's version here does
  not satisfy, a range that is not an npm range.

Findings are ``file:line:column: reason``, sorted by file and line, ready for an editor,
a CI annotation or a pre-commit hook.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chora_manifests import dependencies as deps
from chora_manifests import is_manifest_name, load
from chora_manifests.errors import Loc, ManifestError
from chora_manifests.files import read_text
from chora_manifests.model import Capability
from chora_manifests.positions import locate

Severity = Literal["error", "warning"]
DEFAULT_PATH = Path("capabilities")


@dataclass(frozen=True)
class Finding:
    file: str
    reason: str
    severity: Severity = "error"
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f":{self.line}:{self.column}" if self.line is not None else ""
        label = "warning: " if self.severity == "warning" else ""
        return f"{self.file}{where}: {label}{self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column,
                "severity": self.severity, "reason": self.reason}


@dataclass(frozen=True)
class Result:
    files: int
    findings: list[Finding]

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


def claimed_twice(namespace: str, others: Iterable[str]) -> str:
    """The sync's and the validator's message for a namespace claimed by several files."""
    return f"namespace {namespace} is also claimed by {', '.join(others)}"


def manifest_files(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(file, the directory it is judged in) for every file named, and for every
    manifest name directly inside a directory named (not recursive: the sync reads one
    directory). A name that does not exist is a ``FileNotFoundError``."""
    out: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            with os.scandir(path) as it:
                names = sorted(de.name for de in it if is_manifest_name(de.name))
            out += [(path / name, path) for name in names]
        elif path.exists() or path.is_symlink():
            out.append((path, path.parent))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return out


def validate(paths: Iterable[Path], *, strict: bool = False) -> Result:
    """Every file named (or in a directory named), loaded and checked together."""
    files = manifest_files(paths)
    findings: list[Finding] = []
    loaded: dict[str, Capability] = {}
    for path, root in files:
        name = str(path)
        try:
            loaded[name] = load(path, root, name=name)
        except ManifestError as exc:
            findings += [Finding(name, p.reason, "error", p.line, p.column)
                         for p in exc.problems]
        except OSError as exc:
            findings.append(Finding(name, f"cannot read: {exc.strerror or exc}"))
    findings += _duplicates(loaded)
    findings += _dependencies(loaded, "error" if strict else "warning")
    findings.sort(key=lambda f: (f.file, f.line or 0, f.column or 0, f.reason))
    return Result(len(files), findings)


def _position(file: str, loc: Loc) -> tuple[int | None, int | None]:
    try:
        found = locate(read_text(Path(file), Path(file).parent), loc)
    except (ManifestError, OSError):
        found = None
    return found if found else (None, None)


def _duplicates(loaded: dict[str, Capability]) -> list[Finding]:
    claims: dict[str, list[str]] = defaultdict(list)
    for file, cap in loaded.items():
        claims[cap.namespace].append(file)
    out = []
    for namespace, files in claims.items():
        for file in files if len(files) > 1 else ():
            line, column = _position(file, ("metadata", "dc_identifier"))
            out.append(Finding(file, claimed_twice(namespace, (f for f in files if f != file)),
                               "error", line, column))
    return out


def _relations(cap: Capability) -> list[tuple[Loc, deps.Dependency]]:
    """Each declared dependency with its place in the document."""
    out = []
    relation = cap.document.get("dc_relation") or {}
    for kind, items in relation.items():
        for i, item in enumerate(items or []):
            found = deps.Dependency.parse(item)
            if found is not None:
                out.append((("dc_relation", kind, i), found))
    return out


def _dependencies(loaded: dict[str, Capability], severity: Severity) -> list[Finding]:
    by_namespace = {cap.namespace: cap for cap in loaded.values()}
    graph = {ns: deps.Capability(ns, cap.version, tuple(d for _, d in _relations(cap)))
             for ns, cap in by_namespace.items()}
    out = []
    for file, cap in loaded.items():
        for loc, dependency in _relations(cap):
            checked = deps.check(dependency, graph)
            target = dependency.capability
            if checked.status == "satisfied":
                continue
            if checked.status == "missing":
                reason = (f"depends on {target}, which no manifest here declares (it may "
                          "live in another repository)")
            elif checked.status == "unsatisfied":
                reason = (f"requires {target} {dependency.range}, but {target} is "
                          f"{graph[target].version} here")
            else:
                reason = f"{target}: {checked.reason}"
            line, column = _position(file, loc)
            out.append(Finding(file, reason, severity, line, column))
    for cycle in deps.cycles(graph):
        file = by_namespace[cycle[0]].source
        line, column = _position(file, ("dc_relation",))
        out.append(Finding(file, f"dependency cycle: {deps.format_cycle(cycle)}", "error",
                           line, column))
    return out
