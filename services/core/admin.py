"""Cluster administration that only the scripts need (``make status``, ``make backup``):
members, one member's status, a snapshot. Part of the etcd adapter, kept apart from
``store.py`` so the daemons' client stays small."""

from __future__ import annotations

import grpc
from etcd3 import etcdrpc

from services.core.channel import translate_error
from services.core.store import Store


def members(store: Store) -> list[dict[str, object]]:
    resp = store.call(store.cluster.MemberList, etcdrpc.MemberListRequest(),
                      what="listing members")
    return [
        {"id": m.ID, "name": m.name, "client_urls": list(m.clientURLs),
         "peer_urls": list(m.peerURLs)}
        for m in resp.members  # type: ignore[attr-defined]
    ]


def member_status(store: Store) -> dict[str, object]:
    """Status of whichever member the store reaches: give it one endpoint."""
    resp = store.call(store.maintenance.Status, etcdrpc.StatusRequest(),
                      what="reading member status")
    return {
        "member_id": resp.header.member_id,  # type: ignore[attr-defined]
        "leader": resp.leader,  # type: ignore[attr-defined]
        "is_leader": resp.leader == resp.header.member_id,  # type: ignore[attr-defined]
        "version": resp.version,  # type: ignore[attr-defined]
        "db_size": resp.dbSize,  # type: ignore[attr-defined]
        "raft_term": resp.raftTerm,  # type: ignore[attr-defined]
        "revision": resp.header.revision,  # type: ignore[attr-defined]
    }


def snapshot(store: Store, path: str, timeout: float = 120.0) -> None:
    """Stream a snapshot of the reached member's database into ``path``."""
    try:
        with open(path, "wb") as out:
            for chunk in store.maintenance.Snapshot(etcdrpc.SnapshotRequest(), timeout):
                out.write(chunk.blob)
    except grpc.RpcError as exc:  # etcd allows a snapshot to root only
        raise translate_error(exc, who=store.identity, what="taking a snapshot") from exc
