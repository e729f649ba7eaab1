"""Reading a manifest file: only a regular file, at most ``MAX_BYTES``, UTF-8. No YAML
here, so a caller that only reads and hashes (the sync's unchanged restart) imports
nothing heavier than ``os``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from chora_manifests.errors import ManifestError

MAX_BYTES = 1024 * 1024


def read_text(path: Path | str, root: Path | str, *, name: str | None = None) -> str:
    """The file's text (strict UTF-8), refusing what must never reach the parser: see
    ``read_bytes``."""
    source = name or str(path)
    return decode(read_bytes(path, root, name=source), source)


def read_bytes(path: Path | str, root: Path | str, *, name: str | None = None) -> bytes:
    """The file's bytes, refusing what must never reach the parser.

    Only a regular file is read, and a symlink only when it leads inside ``root``.
    Opening a FIFO named ``x.yaml`` for reading blocks until a writer appears, which hung
    the sync for good; a socket or a device is no manifest either. The file is opened
    non-blocking and checked again on the open descriptor, so swapping a FIFO in between
    the two checks cannot block us either. Plain ``os`` calls on the descriptor, no file
    object: an unchanged restart reads 10,000 files, and this is most of its time."""
    source = name or str(path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = Path(path).resolve()
        if not target.is_relative_to(Path(root).resolve()):
            raise ManifestError(source, f"symlink to {target} leads outside {root}; not followed")
        st = os.stat(path)
    _check_regular(source, st)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        _check_regular(source, st)
        if st.st_size > MAX_BYTES:
            raise ManifestError(
                source, f"{st.st_size} bytes; a manifest may be at most {MAX_BYTES}")
        data = _read_fd(fd, st.st_size)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ManifestError(source, f"larger than {MAX_BYTES} bytes")
    if not data or data.isspace():  # isspace stops at the first other byte
        raise ManifestError(source, "empty file: no manifest in it")
    return data


def decode(data: bytes, source: str) -> str:
    """Strict UTF-8, or an error naming the first bad byte."""
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


def _read_fd(fd: int, size: int) -> bytes:
    """The ``size`` bytes fstat gave, asked with one more to notice growth: a file that
    grew since is read on to one byte past ``MAX_BYTES`` (then refused). A file that did
    not change takes one ``read``: no buffer of 1 MiB, no second call to find the end."""
    data = os.read(fd, size + 1)
    while len(data) < size:  # short: read on to what fstat gave, or to the end
        more = os.read(fd, size + 1 - len(data))
        if not more:
            return data
        data += more
    while size < len(data) <= MAX_BYTES:  # grew since fstat: read on, to the limit
        more = os.read(fd, MAX_BYTES + 1 - len(data))
        if not more:
            break
        data += more
    return data
