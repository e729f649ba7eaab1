"""The secure cluster shared by the security tests: TLS on client and peer ports, client
certificates of a CA made for the session, etcd's auth on with the users and roles of
``services/core/roles.py``. Tokens of password users expire after 2 s without use, so
the re-authentication is seen in seconds (certificate users have no token)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.core.localcluster import LocalCluster
from services.core.store import Store
from tests.conftest import _wipe

TOKEN_TTL = 2  # etcd's --auth-token-ttl on the shared secure cluster, seconds


@pytest.fixture(scope="session")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster.secure(tmp_path_factory.mktemp("etcd-secure"),
                                  extra_flags={"auth-token-ttl": str(TOKEN_TTL)}).start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def root_store(secure_etcd: LocalCluster) -> Iterator[Store]:
    """``root`` on the secure cluster; every key wiped before and after the test."""
    s = Store(secure_etcd.endpoints, timeout=3.0, access=secure_etcd.access("root"))
    _wipe(s)
    yield s
    _wipe(s)
    s.close()

