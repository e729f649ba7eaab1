"""Print the fault matrix's results as the markdown table of infrastructure/etcd/README.md.

    .venv/bin/python -m pytest -m fault -n 3        # writes one JSON line per scenario
    .venv/bin/python scripts/fault_table.py         # the table, latest result per test

Reads ``$FAULT_RESULTS`` (or ``--results``), by default the file the fault suite writes
under pytest's cache (``.pytest_cache/d/faults/results.jsonl``). Each test's latest line
wins, so re-running one scenario updates its row; rows follow the order of the tests in
their files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / ".pytest_cache" / "d" / "faults" / "results.jsonl"


def load(path: Path) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interrupted run
        latest[entry.get("test", entry.get("scenario", ""))] = entry
    # A test since parametrized leaves its unparametrized line behind: drop that too.
    parametrized = {t.split("[")[0] for t in latest if "[" in t}
    kept = [e for t, e in latest.items() if _exists(e) and t not in parametrized]
    return sorted(kept, key=_order)


def _exists(entry: dict[str, Any]) -> bool:
    """Whether the entry's test still exists (renamed or removed tests leave old lines)."""
    test = str(entry.get("test", ""))
    path, _, name = test.partition("::")
    if not name:
        return True
    try:
        return f"def {name.split('[')[0]}(" in (REPO / path).read_text()
    except OSError:
        return False


def _order(entry: dict[str, Any]) -> tuple[int, str, int]:
    """(table section, test file, line): held scenarios, then each daemon's defects."""
    order = list(entry.get("order") or [])
    if len(order) == 2:  # written before sections existed
        order.insert(0, 9)
    if len(order) != 3:
        return (99, "", 0)
    return int(order[0]), str(order[1]), int(order[2])


def _cell(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"< 0.1{unit}" if value < 0.1 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def table(entries: list[dict[str, Any]]) -> str:
    rows = [
        "| scenario | capability keys lost | health expiries (live services) | recovery "
        "| result | notes |",
        "|---|---:|---:|---:|---|---|",
    ]
    for e in entries:
        note = str(e.get("note", "")).replace("|", "/")
        if e.get("result") == "failed" and e.get("failure"):
            note = (note + "; " if note else "") + str(e["failure"]).replace("|", "/")
        rows.append(
            f"| {e.get('scenario', '')} | {_cell(e.get('keys_lost'))} "
            f"| {_cell(e.get('expiries'))} | {_cell(e.get('recovery_s'), ' s')} "
            f"| {e.get('result', '?')} ({_cell(e.get('duration_s'), ' s')}) | {note} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path,
                   default=Path(os.environ.get("FAULT_RESULTS") or DEFAULT),
                   help="JSON lines written by the fault suite (default %(default)s)")
    args = p.parse_args(argv)
    if not args.results.exists():
        print(f"no results at {args.results}: run `pytest -m fault` first", file=sys.stderr)
        return 1
    entries = load(args.results)
    print(table(entries))
    etcd = sorted({str(e.get("etcd")) for e in entries if e.get("etcd")})
    when = max((str(e.get("at", "")) for e in entries), default="")
    print(f"\netcd {', '.join(etcd) or 'unknown'}; latest result {when}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
