"""What can go wrong when talking to the registry, as exceptions a caller can tell apart.

Callers act differently on each: a missing service is retried with backoff (seed 001,
pitfall 6), an unreachable registry is served from a cache, a rejected request is a bug
in the caller, a refused token is a deployment's mistake. The CLI maps them to exit
codes (1 not found / rejected / refused, 2 unreachable).
"""

from __future__ import annotations


class ManifestError(Exception):
    """Any failure of a registry call. ``status_code`` is the HTTP status when the
    registry answered (``None`` when no registry could be reached)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class NotFoundError(ManifestError):
    """The registry answered 404: the thing asked for does not exist (now)."""


class ServiceNotFoundError(NotFoundError):
    """No instance of the service (or not this instance) is registered: never registered,
    deregistered, or removed after missing heartbeats."""


class CapabilityNotFoundError(NotFoundError):
    """No capability of that namespace is declared in the registry."""


class ManifestAuthError(ManifestError):
    """The registry answered 401 (no token, or one it does not know: see
    ``auth_token`` / ``MANIFEST_TOKEN``) or 403 (the token's scopes do not cover this
    service name, or reads). The message carries the registry's reason, which names the
    scope needed. Retrying will not help until the token changes."""


class RegistryUnavailableError(ManifestError):
    """No registry URL gave an answer: every one refused the connection, timed out, or
    answered 5xx. ``attempts`` lists ``(url, reason)`` for each try, for the log."""

    def __init__(self, message: str, *, attempts: list[tuple[str, str]] | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.attempts = attempts or []
