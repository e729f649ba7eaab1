"""How a program proves to etcd who it is: the flags etcdctl has (``--cacert``,
``--cert``, ``--key``, ``--user``, ``--password-file``) as one typed value.

The default, ``EtcdAccess()``, is plaintext without auth: what every program did before
the secure stack, so settings that never mention access keep working unchanged.

Certificates are the way to go (``make up SECURE=1``): the certificate's common name is
the etcd user, there is no password to leak and no token that expires. ``--user`` with
``--password-file`` is for where a certificate is not possible; the store then keeps a
token and re-authenticates before it expires (python-etcd3 does not). Both may be given;
etcd then takes the token's user.

Validated on construction: a ``ValueError`` names the flag at fault, which the CLI turns
into a usage error, never a retry loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _readable(flag: str, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{flag} {path}: not readable by this user")


@dataclass(frozen=True)
class EtcdAccess:
    cacert: Path | None = None
    """CA bundle the members' certificates are checked against; turns TLS on."""
    cert: Path | None = None
    """Our client certificate (PEM); its common name is our etcd user. With ``key``."""
    key: Path | None = None
    """The certificate's private key (PEM). With ``cert``."""
    user: str | None = None
    """etcd user for password authentication. With ``password_file``."""
    password_file: Path | None = None
    """File holding ``user``'s password (one line; a trailing newline is ignored)."""
    server_name: str | None = None
    """The name the members' certificates must be valid for. None: the endpoints' host
    when they all share one (127.0.0.1 locally), else ``localhost`` (see store.py)."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together: give both or neither")
        if (self.user is None) != (self.password_file is None):
            raise ValueError("--user and --password-file go together: give both or neither")
        if self.user is not None and (not self.user or ":" in self.user):
            raise ValueError(f"--user {self.user!r}: a user name, without ':password'")
        if self.server_name is not None and not self.tls:
            raise ValueError("--tls-server-name needs TLS: give --cacert (and --cert/--key)")
        for flag, path in (("--cacert", self.cacert), ("--cert", self.cert),
                           ("--key", self.key), ("--password-file", self.password_file)):
            if path is not None:
                _readable(flag, path)

    @property
    def tls(self) -> bool:
        """Talk TLS to the members (a CA to check them, or a client certificate)."""
        return self.cacert is not None or self.cert is not None

    @property
    def tls_files(self) -> tuple[Path, ...]:
        """The TLS files given, in a fixed order: what a reload watches."""
        return tuple(p for p in (self.cacert, self.cert, self.key) if p is not None)

    def password(self) -> str:
        """``user``'s password, read now (so a rotated file is used at the next login)."""
        if self.password_file is None:
            raise ValueError("no --password-file given")
        return self.password_file.read_text().rstrip("\r\n")

    def describe(self) -> dict[str, object]:
        """For a start-up log line: how we connect, never a secret."""
        return {"tls": self.tls, "cacert": str(self.cacert) if self.cacert else None,
                "cert": str(self.cert) if self.cert else None, "user": self.user}

    @classmethod
    def from_files(cls, cacert: Path, cert: Path, key: Path) -> EtcdAccess:
        """The usual certificate identity: ``EtcdAccess.from_files(*pki.paths("reader"))``."""
        return cls(cacert=Path(cacert), cert=Path(cert), key=Path(key))
