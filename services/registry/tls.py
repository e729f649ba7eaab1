"""HTTPS for the API (``--tls-cert`` / ``--tls-key``): the pair checked at start-up and
kept in step with the files.

Checked at start-up so that a missing file, a key that does not belong to the
certificate or a file that is not PEM is a configuration error naming the flag (exit 2),
not a crash of the server after "registry starting". TLS 1.2 at least.

The server (``serving.py``) reads the pair from files whenever its worker starts, so it
is given a private copy: the bytes of the last pair proven whole and matching, in a
directory only this process may read. Renewing needs no restart: ``refresh`` reads a
changed pair once, proves those very bytes (a half-renewed pair, new certificate and old
key, is refused and the previous pair stays in use, with an error in the log), copies
them in, and says so; the daemon then has the server start a worker with them.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import tempfile
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from services.registry.metrics import Metrics


def _prove(cert: Path, key: Path) -> None:
    """``ssl.SSLError`` unless these are a PEM certificate and its private key (one that
    wants a passphrase fails here, rather than prompting on the terminal)."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")


class Pair:
    """The private copy the server reads: ``cert`` and ``key`` in a directory of mode
    0700, removed at ``close``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="registry-tls-"))
        self.cert, self.key = self.dir / "server.crt", self.dir / "server.key"

    def take(self, cert: Path, key: Path) -> None:
        """Copy the pair in if its bytes prove to be one: read once, proven from the
        copies, then renamed into place. ``ssl.SSLError`` or ``OSError`` when they are
        not, and the copy in use is unchanged. The server reads the copy only when told
        (at start, and at the reload that follows a take), never during one."""
        new_cert, new_key = self.dir / "new.crt", self.dir / "new.key"
        for source, target in ((key, new_key), (cert, new_cert)):
            with open(source, "rb") as f:
                data = f.read()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        _prove(new_cert, new_key)
        os.replace(new_key, self.key)
        os.replace(new_cert, self.cert)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...] | None:
    try:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in map(os.stat, paths))
    except OSError:
        return None


def check_files(cert: Path, key: Path) -> None:
    """``ValueError`` naming the flag whose file cannot be read."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


class ServerTls:
    def __init__(self, cert: Path, key: Path, *, metrics: Metrics,
                 log: FilteringBoundLogger) -> None:
        self.cert, self.key, self.metrics, self.log = cert, key, metrics, log
        check_files(cert, key)
        self._signature = _signature(cert, key)
        self.pair = Pair()
        try:
            self.pair.take(cert, key)
        except ssl.SSLError as exc:
            self.pair.close()
            raise ValueError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate "
                             f"and its private key ({exc.reason or exc})") from None

    def warnings(self) -> list[str]:
        """What is worth a warning at start-up (a private key others can read)."""
        mode = os.stat(self.key).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return [f"--tls-key {self.key} can be read by other users "
                    f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"]
        return []

    def refresh(self) -> bool:
        """Take the pair again if either file changed; True when the private copy now
        holds the new one (the server is to start a worker with it)."""
        signature = _signature(self.cert, self.key)
        if signature == self._signature:
            return False
        self._signature = signature  # one error per edit, not one per check
        try:
            check_files(self.cert, self.key)
            self.pair.take(self.cert, self.key)  # whole and matching, or nothing changes
        except (ValueError, ssl.SSLError, OSError) as exc:
            self.metrics.tls_reloads.labels("error").inc()
            self.log.error("TLS certificate not reloaded; the previous one stays in use",
                           cert=str(self.cert), key=str(self.key), error=str(exc))
            return False
        self.metrics.tls_reloads.labels("ok").inc()
        self.log.info("TLS certificate reloaded", cert=str(self.cert))
        return True

    def close(self) -> None:
        self.pair.close()
