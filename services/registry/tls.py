"""HTTPS for the API (``--tls-cert`` / ``--tls-key``): the server's TLS context, checked
at start-up and kept in step with the files.

Checked at start-up so that a missing file, a key that does not belong to the
certificate or a file that is not PEM is a configuration error naming the flag (exit 2),
not a crash of the server thread after "registry starting". TLS 1.2 at least.

Renewing needs no restart: ``refresh`` loads a changed pair into the same context, which
every new connection uses (open ones keep theirs). The pair is first loaded into a
scratch context, so a half-renewed pair (new certificate, old key) is refused and the
previous certificate stays in use, with an error in the log.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from services.registry.metrics import Metrics


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


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
        try:
            self.context = _context(cert, key)
        except ssl.SSLError as exc:
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
        """Load the pair again if either file changed; True when the new one is in use.
        Call on the event loop (the context is shared with the handshakes there)."""
        signature = _signature(self.cert, self.key)
        if signature == self._signature:
            return False
        self._signature = signature  # one error per edit, not one per check
        try:
            check_files(self.cert, self.key)
            _context(self.cert, self.key)  # whole and matching, or nothing changes
            self.context.load_cert_chain(self.cert, self.key)
        except (ValueError, ssl.SSLError, OSError) as exc:
            self.metrics.tls_reloads.labels("error").inc()
            self.log.error("TLS certificate not reloaded; the previous one stays in use",
                           cert=str(self.cert), key=str(self.key), error=str(exc))
            return False
        self.metrics.tls_reloads.labels("ok").inc()
        self.log.info("TLS certificate reloaded", cert=str(self.cert))
        return True
