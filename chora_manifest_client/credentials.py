"""What a client shows the registry and what it trusts: the bearer token and the CA
bundle for ``https://`` URLs, from arguments or the environment.

Read in one place so that the library (``ManifestClient.from_env``) and the ``manifest``
CLI agree: ``MANIFEST_TOKEN`` (``MANIFEST_AUTH_TOKEN``, seed 001's name, is still read:
names are added, never renamed), ``MANIFEST_CACERT``. Without a CA bundle, https URLs
are checked against the system's trust store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
override it, as for any OpenSSL program).
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping

TOKEN_VARS = ("MANIFEST_TOKEN", "MANIFEST_AUTH_TOKEN")
CACERT_VAR = "MANIFEST_CACERT"
PathLike = str | os.PathLike[str]


def token_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The first of ``MANIFEST_TOKEN``, ``MANIFEST_AUTH_TOKEN`` that is set."""
    for name in TOKEN_VARS:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def cacert_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(CACERT_VAR, "").strip() or None


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (none for no token). A token read
    from a file often ends in a newline: surrounding whitespace is dropped; whitespace
    inside is a mistake worth saying at construction, not a 401 later."""
    if token is None or not token.strip():
        return {}
    token = token.strip()
    if any(c.isspace() for c in token) or not token.isascii():
        raise ValueError("auth_token: a bearer token is printable ASCII without spaces")
    return {"Authorization": f"Bearer {token}"}


@functools.lru_cache(maxsize=1)
def _system_context() -> ssl.SSLContext:
    # Loading the trust store takes tens of milliseconds: once per process, shared by
    # every client without a bundle of its own (a context may serve many connections).
    return ssl.create_default_context()


def tls_context(cacert: PathLike | None) -> ssl.SSLContext:
    """The context https connections are verified with: only the certificates of
    ``cacert`` (a PEM bundle) when given, else the system's trust store (one context,
    shared). ``ValueError`` naming the file when it cannot be used, at construction
    rather than on the first call."""
    if cacert is None:
        return _system_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(cacert))
    except FileNotFoundError:
        raise ValueError(f"cacert {os.fspath(cacert)}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cacert {os.fspath(cacert)}: not a PEM CA bundle ({exc})") from None
