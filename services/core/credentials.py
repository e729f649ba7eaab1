"""When the store must change how it connects: TLS files renewed on disk, and auth
tokens about to expire. No gRPC here; ``store.py`` hands in how to build and close a
connection and how to log in, and this module decides when.

Certificates renewed on disk are picked up without a restart: at most every ``period``
seconds (a caller's next call after that, no thread) the three files are ``stat``-ed;
when one changed they are read and checked, a new connection is built and swapped in
(one attribute assignment: each call takes the connection current when it starts), and
the old one is closed ``grace`` seconds later, so calls in flight and open watches end
on it (a watch then fails over to the new connection like after any outage). A pair
caught half-written (the new key with the old certificate) does not match: the current
connection is kept and the files are looked at again a period later.

Tokens: etcd's simple tokens expire after ``--auth-token-ttl`` (300 s) without use,
its JWTs after their TTL however busy; python-etcd3 never renews them. ``Token`` logs in
on first use and again once the token is ``refresh`` seconds old (below etcd's default),
and whenever a call was refused for an invalid token (``renew``).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.core import logs
from services.core.access import EtcdAccess
from services.core.errors import AuthFailed

C = TypeVar("C")
RELOAD_PERIOD = 30.0  # seconds between two looks at the TLS files
RELOAD_GRACE = 60.0  # seconds an old connection stays open after a reload
TOKEN_REFRESH = 240.0  # seconds a token is used before logging in again (etcd: 300)

Stamp = tuple[tuple[int, int, int], ...]


class UnusableFiles(ValueError):
    """A TLS file that does not parse, or a certificate and key that are not a pair;
    the message names the flag."""


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes gRPC wants, read and checked together."""

    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None

    @property
    def common_name(self) -> str | None:
        """Our certificate's CN: the etcd user the members see."""
        return self._decoded[0]

    @property
    def not_after(self) -> dt.datetime | None:
        return self._decoded[1]

    @functools.cached_property
    def _decoded(self) -> tuple[str | None, dt.datetime | None]:
        """Decoded only when a log line or an error message names them: ``cryptography``
        costs ~0.1 s to import, a fifth of a sync restart that has nothing to do."""
        if self.certificate_chain is None:
            return None, None
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(self.certificate_chain)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return (str(names[0].value) if names else None), cert.not_valid_after_utc


def read_tls(access: EtcdAccess) -> TlsMaterial:
    """Read the TLS files; ``UnusableFiles`` when one does not parse or the certificate and
    the key are not a pair (say, one of them was just renewed and the other not yet).
    Checked by OpenSSL through the standard library, as gRPC will load them."""
    ca = access.cacert.read_bytes() if access.cacert else None
    if ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=ca.decode())
        except (ValueError, ssl.SSLError) as exc:  # ValueError: not even text
            raise UnusableFiles(f"--cacert {access.cacert}: {_reason(exc)}") from None
    if access.cert is None or access.key is None:
        return TlsMaterial(ca, None, None)
    chain, key_pem = access.cert.read_bytes(), access.key.read_bytes()
    try:
        # password b"": a key that wants a passphrase fails, rather than prompting.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            access.cert, access.key, password=b"")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise UnusableFiles(f"--cert {access.cert} and --key {access.key} are not a "
                                "pair (one renewed, the other not yet?)") from None
        raise UnusableFiles(f"--cert {access.cert} / --key {access.key}: "
                            f"{_reason(exc)}") from None
    if (access.cert.read_bytes(), access.key.read_bytes()) != (chain, key_pem):
        raise UnusableFiles(f"--cert {access.cert} / --key {access.key} changed while "
                            "being read")
    return TlsMaterial(ca, key_pem, chain)


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc)


def stamp(access: EtcdAccess) -> Stamp:
    """What changes when a TLS file is rewritten or replaced: mtime, size, inode."""
    out = []
    for path in access.tls_files:
        st = os.stat(path)
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class Swapping(Generic[C]):
    """The current connection, rebuilt when the TLS files change on disk (see the
    module docstring). ``get()`` costs one clock read when nothing is due."""

    def __init__(self, access: EtcdAccess, build: Callable[[TlsMaterial | None], C],
                 close: Callable[[C], None], *, period: float = RELOAD_PERIOD,
                 grace: float = RELOAD_GRACE) -> None:
        self.access, self._build, self._close = access, build, close
        self.period, self.grace = period, grace
        self.log = logs.get("etcd")
        self.material = read_tls(access) if access.tls else None
        self._stamp = stamp(access) if access.tls else ()
        self.current: C = build(self.material)
        self.reloads = 0
        self._next = time.monotonic() + period
        self._lock = threading.Lock()
        self._retiring: list[tuple[threading.Timer, C]] = []

    def get(self) -> C:
        if self.material is not None and time.monotonic() >= self._next:
            self.check()
        return self.current

    def check(self) -> bool:
        """Look at the files now; True when a new connection was swapped in. One caller
        at a time looks; the others go on with the current connection meanwhile."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._next = time.monotonic() + self.period
            try:
                now = stamp(self.access)
                if now == self._stamp:
                    return False
                material = read_tls(self.access)
            except (OSError, ValueError) as exc:
                self.log.warning("certificates changed on disk but cannot be used yet; "
                                 "keeping the current ones", error=str(exc),
                                 retry_in=self.period)
                return False
            fresh = self._build(material)
            old, self.current = self.current, fresh
            self.material, self._stamp = material, now
            self.reloads += 1
            self._retire(old)
            self.log.info("certificates reloaded", user=material.common_name,
                          not_after=material.not_after.isoformat() if material.not_after
                          else None, old_connection_closes_in=self.grace)
            return True
        finally:
            self._lock.release()

    def _retire(self, old: C) -> None:
        timer = threading.Timer(self.grace, self._close, args=(old,))
        timer.daemon = True
        timer.start()
        self._retiring = [(t, c) for t, c in self._retiring if t.is_alive()]
        self._retiring.append((timer, old))

    def close(self) -> None:
        """Close the current connection and every one still in its grace period."""
        for timer, old in self._retiring:
            if timer.is_alive():
                timer.cancel()
                self._close(old)
        self._retiring = []
        self._close(self.current)


class Token:
    """An etcd auth token, logged in for on first use and kept fresh (module docstring).
    ``login(user, password) -> token`` is the store's Authenticate call; its errors
    (``StoreError``) reach the caller whose call needed the token."""

    def __init__(self, access: EtcdAccess, login: Callable[[str, str], str], *,
                 refresh: float = TOKEN_REFRESH) -> None:
        assert access.user is not None
        self.user, self.access, self._login = access.user, access, login
        self.refresh = refresh
        self.log = logs.get("etcd")
        self._token: str | None = None
        self._at = 0.0
        self._lock = threading.Lock()
        self.logins = 0

    def current(self) -> str:
        token = self._token
        if token is None or time.monotonic() - self._at >= self.refresh:
            return self.renew(token, "expiring" if token else "first use")
        return token

    def renew(self, stale: str | None, reason: str = "refused as invalid") -> str:
        """Log in again unless another thread already replaced ``stale``."""
        with self._lock:
            if self._token is not None and self._token != stale:
                return self._token
            try:
                password = self.access.password()
            except OSError as exc:
                raise AuthFailed(f"--password-file {self.access.password_file}: {exc}") from None
            token = self._login(self.user, password)
            self._token, self._at = token, time.monotonic()
            self.logins += 1
            if self.logins > 1:
                self.log.info("re-authenticated", user=self.user, reason=reason)
            return token

    def age(self) -> float:
        """Seconds since the last login (infinite before the first)."""
        return time.monotonic() - self._at if self._token is not None else float("inf")

    def forget(self) -> None:
        """Make the next call log in again (a stream was refused for an invalid token)."""
        with self._lock:
            self._at = float("-inf")
