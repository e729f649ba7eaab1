"""The etcd cluster as the dashboard shows it: each member's status, which one leads,
the alarms. A thread asks every ``period`` seconds and hands the answer to the hub,
which tells the change streams that asked (``?include=cluster``) when it changed.

Each member is asked through a store of its own: through the shared round-robin
channel a member that does not answer would only be skipped, and the point is to
name it. A member's question is bounded by ``timeout`` (1 s at most), so a frozen
member delays a check by that much and is shown unhealthy with the reason.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from structlog.typing import FilteringBoundLogger

from services.core import admin
from services.core.access import EtcdAccess
from services.core.errors import StoreError
from services.core.store import Store
from services.registry.hub import Hub
from services.registry.records import iso

MEMBER_TIMEOUT = 1.0


class ClusterCheck(threading.Thread):
    def __init__(self, store: Store, hub: Hub, log: FilteringBoundLogger, *,
                 endpoints: tuple[str, ...], access: EtcdAccess, period: float,
                 timeout: float) -> None:
        super().__init__(name="registry-cluster-check", daemon=True)
        self.store, self.hub, self.log = store, hub, log
        self.endpoints, self.access = endpoints, access
        self.period, self.timeout = period, min(timeout, MEMBER_TIMEOUT)
        self._halt = threading.Event()
        self._stores: dict[str, Store] = {}

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    self.hub.post_cluster(self.look())
                except Exception as exc:  # a bug here must not end the check for good
                    self.log.exception("cluster check failed", error=str(exc))
                self._halt.wait(self.period)
        finally:
            for one in self._stores.values():
                one.close()

    def look(self) -> dict[str, Any]:
        """One check: ``GET /v1/cluster``'s answer."""
        members = [self._member(endpoint) for endpoint in self.endpoints]
        names: dict[int, str] = {}
        by_url: dict[str, int] = {}  # names a member that does not answer, too
        alarms: list[str] = []
        try:
            for listed in admin.members(self.store):
                member_id = int(str(listed["id"]))
                names[member_id] = str(listed["name"])
                for url in listed["client_urls"]:  # type: ignore[attr-defined]
                    by_url[url.split("://", 1)[-1]] = member_id
            alarms = self.store.alarms(retry=False)
        except StoreError as exc:  # no quorum: the members' own answers still say a lot
            self.log.debug("cluster check: member list unavailable", error=str(exc))
        votes = Counter(m["_leader"] for m in members if m.get("_leader"))
        leader_id = votes.most_common(1)[0][0] if votes else 0
        for m in members:
            said = m.pop("_leader", None)
            member_id = m.pop("_id", None) or by_url.get(m["endpoint"])
            if member_id is None:
                continue
            m["id"] = f"{member_id:x}"
            m["name"] = names.get(member_id, m["endpoint"])
            m["leader"] = member_id == leader_id
            if m["healthy"] and not said:  # it answers but knows no leader: no quorum reads
                m.update(healthy=False, error="answers but has no leader (no quorum)")
        leader = next((m["name"] for m in members if m.get("leader")), None)
        return {"checked_at": iso(), "leader": leader, "alarms": alarms, "members": members}

    def _member(self, endpoint: str) -> dict[str, Any]:
        found: dict[str, Any] = {"name": endpoint, "id": None, "endpoint": endpoint,
                                 "healthy": False, "leader": False, "version": None,
                                 "db_size": None, "raft_term": None, "error": None}
        try:
            one = self._stores.get(endpoint)
            if one is None:
                one = self._stores[endpoint] = Store([endpoint], timeout=self.timeout,
                                                     access=self.access)
            status = admin.member_status(one)
        except (StoreError, OSError, ValueError) as exc:
            found["error"] = str(exc)
            return found
        found.update(healthy=True, version=status["version"], db_size=status["db_size"],
                     raft_term=status["raft_term"], _id=status["member_id"],
                     _leader=status["leader"])
        return found
