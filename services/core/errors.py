"""The errors of the etcd adapter, sorted the way a caller must react to them.

``transient`` errors (``Unavailable`` and its ``NoSpace``) go away by themselves or by an
operator's hand: back off and retry. The others are terminal for the request that got
them: retrying the same request cannot help (``TooLarge``), or the caller must first do
something else (``Compacted``: re-read, then watch again; ``LeaseNotFound``: grant a new
lease and re-put).
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

