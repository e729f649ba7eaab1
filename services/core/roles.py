"""Who may do what in the secure stack (``make up SECURE=1``, ``docker-compose.secure.yml``):
the etcd users, their roles and the prefixes each role may read or write, as data, in one
place. The local launcher and the compose bootstrap both run ``bootstrap_commands()``,
and ``tests/integration/test_security.py`` checks the table against a real etcd.

One etcd user per client identity, named like its certificate's common name (etcd's
``--client-cert-auth`` takes the CN as the user), created without a password: there is
no password to leak and no token that expires. ``root`` holds etcd's built-in ``root``
role (it may do everything, and etcd refuses ``auth enable`` without it).

etcd permissions are key ranges, so a role cannot be limited to one key name under many
prefixes: the heartbeat may write all of ``/chora/capabilities/`` (it needs
``/chora/capabilities/{ns}/health``), including the keys the sync owns. The contract
(the heartbeat writes ``health`` alone) is kept by the programs, not enforced by etcd.

Pure: no I/O. ``bootstrap_commands`` returns etcdctl argument lists for the caller to run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from services.core import keys

ROOT_USER = "root"
ROOT = "/chora/"
READ, WRITE, READWRITE = "read", "write", "readwrite"


@dataclass(frozen=True)
class Grant:
    """``access`` (read, write or readwrite) on every key under ``prefix``."""

    access: str
    prefix: str

    def allows(self, action: str, key: str) -> bool:
        """Would etcd allow ``action`` ("read" or "write") on ``key`` under this grant?"""
        return key.startswith(self.prefix) and self.access in (action, READWRITE)


# user (= role, = certificate CN) -> what it may do. The role has the user's name.
ROLES: dict[str, tuple[Grant, ...]] = {
    # the sync: the capability keys it projects, its inventory, status and checkpoint
    # and its election (every replica campaigns: one leads, the others stand by)
    "gitops-sync": (Grant(READWRITE, keys.CAPABILITIES), Grant(READWRITE, keys.SYNC),
                    Grant(READWRITE, keys.ELECTION + "gitops-sync/")),
    # the heartbeat: reads the capabilities (the service set), writes each `health` key
    # (a range grant: all of /chora/capabilities/, see the docstring), keeps its counts
    "heartbeat": (Grant(READWRITE, keys.CAPABILITIES), Grant(READWRITE, keys.HEARTBEAT),
                  Grant(READWRITE, keys.ELECTION + "heartbeat/")),
    # the registry service: the instances it registers; it reads all of /chora/, not only
    # the capabilities it serves: its view is one range and one watch of /chora/ at one
    # revision (gapless, read-your-writes, and a watch silent while the cluster's
    # revision moves on is detected only if every write is one it can see)
    "registry": (Grant(READWRITE, keys.SERVICES), Grant(READ, ROOT)),
    # status, e2e checks, dashboards, any consumer that only reads
    "reader": (Grant(READ, ROOT),),
}

IDENTITIES: tuple[str, ...] = (ROOT_USER, *ROLES)


def allowed(user: str, action: str, key: str) -> bool:
    """What the table lets ``user`` do: ``action`` is "read" or "write"."""
    if user == ROOT_USER:
        return True
    return any(g.allows(action, key) for g in ROLES.get(user, ()))


def range_end(prefix: str) -> str:
    """The end of etcd's range for ``prefix`` (what ``etcdctl --prefix`` computes): the
    prefix with its last byte incremented. Our prefixes end in "/", so it ends in "0"."""
    last = prefix[-1]
    if ord(last) >= 0x7F:
        raise ValueError(f"prefix {prefix!r} does not end in a plain ASCII character")
    return prefix[:-1] + chr(ord(last) + 1)


def bootstrap_commands(roles: dict[str, tuple[Grant, ...]] | None = None) -> Iterator[list[str]]:
    """etcdctl argument lists (after ``etcdctl`` and its connection flags) that create
    the users and roles and turn auth on, in order: ``root`` first with the ``root``
    role, then each user without a password, its role, its grants, then ``auth enable``.

    Run them with root's certificate. Each one may fail with "already exists" on a
    cluster bootstrapped before; the runner treats that as done, so re-running is safe.
    ``role grant-permission`` of a grant already held changes nothing."""
    roles = ROLES if roles is None else roles
    yield ["user", "add", ROOT_USER, "--no-password"]
    yield ["user", "grant-role", ROOT_USER, "root"]
    for user, grants in roles.items():
        yield ["user", "add", user, "--no-password"]
        yield ["role", "add", user]
        for grant in grants:
            yield ["role", "grant-permission", user, grant.access, grant.prefix,
                   range_end(grant.prefix)]
        yield ["user", "grant-role", user, user]
    yield ["auth", "enable"]


ALREADY_DONE = ("already exists", "already granted", "already enabled")
