"""Who may do what, on every request: the current token set (``tokens.py``), kept in
step with the ``--tokens`` file, and the answers 401 / 403 with what was missing.

- **Writes** need a token: 401 (``WWW-Authenticate: Bearer``) when there is none or it
  is unknown, 403 when its scopes do not cover the service name (register, and the
  name in the path of a heartbeat or a deregistration: an instance can keep alive or
  remove only instances of names its token covers).
- **Reads** of data (``GET /v1/services...``, ``/v1/capabilities...``, ``/v1/watch``)
  need ``read`` or ``admin`` only with ``--require-read-token``; otherwise the
  ``Authorization`` header is not even looked at, so open reads cost what they did.
  ``/v1/health``, ``/metrics``, ``/openapi.json`` and ``/docs`` stay open: probes and
  Prometheus carry no tokens, and none of them shows an instance.
- **Revoking needs no restart.** ``refresh`` re-reads the file when its mtime, size or
  inode changed (the daemon asks every ``token_check`` seconds, and on SIGHUP). A broken
  edit, or a file gone, keeps the previous good set and logs an error: a typo must not
  lock every service out, nor open the registry.
- **No log floods.** Every refusal is counted (``chora_registry_auth_refusals_total``);
  it is logged at most once a minute per subject and reason, with how many were not.
  Tokens are never logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import Scope
from structlog.typing import FilteringBoundLogger

from services.registry import tokens
from services.registry.metrics import Metrics
from services.registry.tokens import Identity, TokenFileError, TokenSet

REALM = 'Bearer realm="chora-registry"'
LOG_EVERY = 60.0  # seconds between two log lines of one subject and reason
ANONYMOUS = "-"


class AuthRefused(Exception):
    """A 401 or 403; ``detail`` says what is needed, ``challenge`` is the
    ``WWW-Authenticate`` value."""

    def __init__(self, status: int, reason: str, detail: str, challenge: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.challenge = status, reason, detail, challenge


def authorization(scope: Scope) -> bytes | None:
    """The raw ``Authorization`` header of an ASGI request (the first one)."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            return bytes(value)
    return None


@dataclass
class RefusalLog:
    """One line per (subject, reason) a minute at most; the rest are only counted."""

    log: FilteringBoundLogger
    clock: Callable[[], float] = time.monotonic
    every: float = LOG_EVERY

    def __post_init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, refusal: AuthRefused, subject: str, scope: Scope) -> bool:
        """Log ``refusal`` unless one like it was logged within ``every``; True if it was."""
        key = (subject, refusal.reason)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every:
            self._last[key] = (last[0], last[1] + 1)
            return False
        self._last[key] = (now, 0)
        client = scope.get("client")
        self.log.warning("request refused", status=refusal.status, reason=refusal.reason,
                         subject=subject, detail=refusal.detail, method=scope.get("method"),
                         path=str(scope.get("path", ""))[:120],
                         peer=client[0] if client else None,
                         suppressed_since_last=last[1] if last is not None else 0)
        return True


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Guard:
    """The registry's access rules over the current token set. ``TokenFileError`` (a
    ``ValueError``) from the constructor: the file cannot be used at start-up."""

    def __init__(self, path: Path, *, require_read: bool, metrics: Metrics,
                 log: FilteringBoundLogger, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.path = path
        self.require_read = require_read
        self.metrics = metrics
        self.log = log
        self.refusals = RefusalLog(log, clock)
        self._signature = _signature(path)  # before reading: a later edit is seen
        self.tokens: TokenSet = tokens.read_file(path)
        metrics.tokens.set(len(self.tokens))

    # -- the file ------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or ``force``); True when a new set is in use.
        Runs in a thread: the swap is one assignment, requests see the old set or the
        new one, never a mixture."""
        signature = _signature(self.path)
        if signature == self._signature and not force:
            return False
        self._signature = signature  # an error is reported once per edit, not per check
        try:
            if signature is None:
                raise TokenFileError(f"--tokens {self.path}: the file is gone")
            fresh = tokens.read_file(self.path)
        except TokenFileError as exc:
            self.metrics.token_reloads.labels("error").inc()
            self.log.error("token file not reloaded; the previous tokens stay in force",
                           error=str(exc), tokens=len(self.tokens))
            return False
        old = set(self.tokens.by_hash)
        self.tokens = fresh
        self.metrics.token_reloads.labels("ok").inc()
        self.metrics.tokens.set(len(fresh))
        self.log.info("token file reloaded", path=str(self.path), tokens=len(fresh),
                      added=len(set(fresh.by_hash) - old), revoked=len(old - set(fresh.by_hash)),
                      subjects=fresh.subjects)
        return True

    # -- requests ------------------------------------------------------------------------

    def authenticate(self, scope: Scope, need: str) -> Identity:
        """The identity of the request's token; ``AuthRefused`` 401 without a known one.
        ``need`` says in the detail what the request would need."""
        header = authorization(scope)
        if header is None:
            raise self._refuse(AuthRefused(
                401, "missing", f"authentication required: send 'Authorization: Bearer "
                                f"<token>' with {need}", REALM), ANONYMOUS, scope)
        token_hash = tokens.header_hash(header)
        if token_hash is None:
            raise self._refuse(AuthRefused(
                401, "malformed", "invalid Authorization header: expected 'Bearer <token>'",
                f'{REALM}, error="invalid_token"'), ANONYMOUS, scope)
        identity = self.tokens.identify(token_hash)
        if identity is None:
            raise self._refuse(AuthRefused(
                401, "unknown", f"invalid token: unknown or revoked (this registry wants "
                                f"{need})", f'{REALM}, error="invalid_token"'), ANONYMOUS, scope)
        return identity

    def permit_write(self, identity: Identity, name: str, action: str, scope: Scope) -> None:
        """403 unless ``identity`` may ``action`` (register, heartbeat, deregister) an
        instance of ``name``."""
        if identity.may_write(name):
            return
        raise self._refuse(AuthRefused(
            403, "scope", f"token of {identity.subject!r} (scopes: "
                          f"{', '.join(identity.scopes)}) may not {action} {name!r}: needs "
                          f"scope register:<glob matching {name!r}> (e.g. register:{name}) "
                          "or admin",
            f'{REALM}, error="insufficient_scope", scope="register:{name}"'),
            identity.subject, scope)

    def check_write(self, scope: Scope, name: str, action: str) -> Identity:
        identity = self.authenticate(scope, f"scope register:<glob matching {name!r}> or "
                                            "admin")
        self.permit_write(identity, name, action, scope)
        return identity

    def check_read(self, scope: Scope) -> None:
        """Nothing without ``--require-read-token``; else 401 / 403 unless the token has
        ``read`` or ``admin``."""
        if not self.require_read:
            return
        identity = self.authenticate(scope, "scope read or admin (this registry runs "
                                            "with --require-read-token)")
        if not identity.may_read():
            raise self._refuse(AuthRefused(
                403, "scope", f"token of {identity.subject!r} (scopes: "
                              f"{', '.join(identity.scopes)}) may not read: needs scope "
                              "read or admin", f'{REALM}, error="insufficient_scope", '
                                               'scope="read"'), identity.subject, scope)

    def _refuse(self, refusal: AuthRefused, subject: str, scope: Scope) -> AuthRefused:
        self.metrics.auth_refusals.labels(refusal.reason).inc()
        self.refusals.refused(refusal, subject, scope)
        return refusal
