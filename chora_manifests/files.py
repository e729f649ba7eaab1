"""Reading a manifest file: only a regular file, at most ``MAX_BYTES``, UTF-8. No YAML
here, so a caller that only reads and hashes (the sync's unchanged restart) imports
nothing heavier than ``os``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from chora_manifests.errors import ManifestError

MAX_BYTES = 1024 * 1024


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
        # The size fstat gave, plus one byte to notice growth: not a 1 MiB buffer per file.
        data = f.read(min(st.st_size, MAX_BYTES) + 1)
        if len(data) > st.st_size:  # grew since fstat: read on, to the limit
            data += f.read(MAX_BYTES + 1 - len(data))
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
