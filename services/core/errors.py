"""The errors of the etcd adapter, sorted the way a caller must react to them.

``transient`` errors (``Unavailable`` and its ``NoSpace``) go away by themselves or by an
operator's hand: back off and retry. The others are terminal for the request that got
them: retrying the same request cannot help (``TooLarge``), or the caller must first do
something else (``Compacted``: re-read, then watch again; ``LeaseNotFound``: grant a new
lease and re-put). The refusals of the secure stack (``PermissionDenied``, ``AuthFailed``,
``TlsRefused``) are terminal too: only an operator can change a role or a certificate,
so they name the identity refused and what it tried.

``classify`` sorts a failed call by its gRPC status code's name and detail, so the
sorting is tested without gRPC; ``store.translate_error`` hands it the two.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors this adapter raises."""

    transient = False


class Unavailable(StoreError):
    """No member answered in time, or the cluster has no quorum. Transient."""

    transient = True


class NoSpace(Unavailable):
    """etcd's NOSPACE alarm is raised: the database reached its quota and every write is
    refused until an operator frees space and disarms the alarm. Transient for a daemon
    (it keeps retrying), but it names the cause and the cure instead of "unreachable"."""

    HOW_TO_CLEAR = (
        "etcd NOSPACE alarm: the database reached --quota-backend-bytes and etcd refuses "
        "writes. Free space, then disarm: etcdctl compact <current revision>; etcdctl "
        "defrag --cluster; etcdctl alarm disarm. If live keys fill the quota, delete some "
        "first with etcdctl del (a txn is refused over quota) or raise the quota (see "
        "infrastructure/etcd/README.md)"
    )

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.HOW_TO_CLEAR} [{detail}]" if detail else self.HOW_TO_CLEAR)


class Compacted(StoreError):
    """The watch's start revision was compacted away; re-read at ``revision``."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {revision}")
        self.revision = revision


class LeaseNotFound(StoreError):
    """etcd no longer knows the lease (expired, revoked, or restored from a snapshot)."""


class TooLarge(StoreError):
    """A request would exceed etcd's request size or operation count limits."""



class Fenced(StoreError):
    """A write refused because this process does not lead its program (any more): its
    election key is gone or was replaced (``leadership.py``). Terminal for the term:
    the daemon stops its work and campaigns again as a standby."""


class PermissionDenied(StoreError):
    """etcd's auth refused this identity the operation (its role does not allow the
    key). Terminal: retrying cannot help until an operator changes the role."""


class AuthFailed(StoreError):
    """etcd did not accept who we say we are: a wrong password, an unknown user, a token
    still invalid after re-authenticating, or no identity given while auth is on."""


class TlsRefused(StoreError):
    """The TLS handshake failed on a certificate: ours (another CA, expired, missing)
    or the member's (not signed by ``--cacert``, not valid for the server name).
    Terminal: a configuration error, not an outage."""


# gRPC status codes (by name, so this module needs no gRPC) that mean "try again".
TRANSIENT_CODES = frozenset({
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "UNKNOWN",  # e.g. "etcdserver: leader changed", "no leader"
    "CANCELLED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
})
# What gRPC reports when a handshake failed on a certificate (ours refused by the member,
# or the member's refused by us); a connection reset mid-handshake says none of these.
_TLS_REFUSAL = ("CERTIFICATE", "Hostname Verification", "WRONG_VERSION_NUMBER",
                "UNKNOWN_CA", "BAD_SIGNATURE", "certificate")
STALE_TOKEN = "invalid auth token"
_AUTH_FAILURES = ("authentication failed", "user name is empty", "user name not found",
                  STALE_TOKEN, "authentication is not enabled")


def _subject(who: str | None) -> str:
    return f"etcd refused user {who}" if who else "etcd refused this client"


def classify(code: str, detail: str, *, who: str | None = None, what: str = "") -> StoreError:
    """The error a failed etcd call becomes, from its gRPC status code name and detail.
    ``who`` (the etcd user or certificate name) and ``what`` ("writing /chora/sync/x")
    go into the message of a refusal, so a log line says whose access to change."""
    if code == "NOT_FOUND" and "lease" in detail:
        return LeaseNotFound(detail)
    if "database space exceeded" in detail:
        return NoSpace(detail)
    if "too many operations in txn request" in detail:
        return TooLarge(detail)
    if code == "OUT_OF_RANGE" and "compacted" in detail:
        return Compacted(0)
    if code == "PERMISSION_DENIED" or "permission denied" in detail:
        return PermissionDenied(f"{_subject(who)}: permission denied {what}".rstrip())
    if any(text in detail for text in _AUTH_FAILURES):
        hint = ""
        if "user name is empty" in detail:
            hint = " (auth is on: give --cert/--key, or --user/--password-file)"
        return AuthFailed(f"{_subject(who)}: {detail}{hint}" + (f" ({what})" if what else ""))
    if code == "UNAVAILABLE" and any(text in detail for text in _TLS_REFUSAL):
        return TlsRefused(
            f"TLS handshake with etcd failed{f' for user {who}' if who else ''} (check "
            f"--cacert, --cert/--key and --tls-server-name): {detail}")
    if code in TRANSIENT_CODES:
        return Unavailable(f"{code}: {detail}")
    return StoreError(f"{code}: {detail}")
