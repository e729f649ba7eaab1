"""What is wrong with a manifest: ``str()`` names the file, where, and why."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

Loc = tuple[str | int, ...]  # a field's path in the document: ("metadata", "dc_type")


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with its place in the YAML when it has one (1-based)."""

    reason: str
    loc: Loc = ()
    line: int | None = None
    column: int | None = None

    def at(self, path: str) -> str:
        """``file:line:column: reason``, the form editors and CI annotations jump to."""
        where = f":{self.line}:{self.column}" if self.line is not None else ""
        return f"{path}{where}: {self.reason}"


class ManifestError(Exception):
    """A manifest that cannot be synced. ``str()`` is its first problem's place and
    every reason (the sync's log line and status entry); ``problems`` has them one by
    one (``manifest validate`` prints a line each)."""

    def __init__(self, path: Path | str, reason: str = "", namespace: str | None = None,
                 problems: tuple[Problem, ...] = ()) -> None:
        self.problems = problems or (Problem(reason),)
        self.reason = "; ".join(p.reason for p in self.problems)
        self.path = str(path)
        self.namespace = namespace
        first = self.problems[0]
        self.line, self.column = first.line, first.column
        super().__init__(replace(first, reason=self.reason).at(self.path))

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None, tuple[Problem, ...]]]:
        """Picklable with its fields, for the parsing process pool."""
        return (type(self), (self.path, self.reason, self.namespace, self.problems))

    def placed(self, text: str, locate: Callable[[str, Loc], tuple[int, int] | None]
               ) -> ManifestError:
        """The same error with each problem's line and column found in ``text``."""
        problems = []
        for p in self.problems:
            pos = locate(text, p.loc) if p.loc and p.line is None else None
            problems.append(replace(p, line=pos[0], column=pos[1]) if pos else p)
        return ManifestError(self.path, self.reason, self.namespace, tuple(problems))
