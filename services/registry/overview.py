"""Reads the dashboard stands on, beside the contract's: the dependencies checked
(``GET /v1/dependencies``), the sync's status (``GET /v1/sync``) and the cluster's
members (``GET /v1/cluster``). Guarded like every read of data (``--require-read-token``)
and answered from memory: the view (kept by the watch) and the hub (the cluster check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Response

from services.registry.hub import Hub
from services.registry.records import encode


def add_routes(app: FastAPI, hub: Hub, *, reads: Sequence[Any], ready: Callable[[], None],
               answer: Callable[[bytes], Response]) -> None:
    view = hub.view

    @app.get("/v1/dependencies", dependencies=list(reads))
    async def dependencies() -> Response:
        """Every declared dependency checked against the version the registry holds
        (``satisfied``, ``unsatisfied``, ``missing``, ``invalid``, with the reason), and
        the dependency cycles: ``{revision, edges: [{from, to, relationship, range,
        held, status, reason}], cycles: [[ns, ..., ns]]}``. The rules of ``manifest
        deps``."""
        ready()
        return answer(view.dependencies())

    @app.get("/v1/sync", dependencies=list(reads))
    async def sync() -> Response:
        """The gitops sync's status (``/chora/sync/status``) as it wrote it: the git
        commit, the files it rejected and why, capabilities it will not prune; with
        ``revision``, the etcd revision of that write. ``{"present": false}`` before
        any sync ran. ``GET /v1/watch?include=sync`` announces each new one."""
        ready()
        return answer(encode(view.state.sync()))

    @app.get("/v1/cluster", dependencies=list(reads))
    async def cluster() -> Response:
        """The etcd members as this registry last saw them (every few seconds): name,
        endpoint, healthy (and the error when not), leader, version, database size;
        the leader's name (null: none) and the alarms raised.
        ``GET /v1/watch?include=cluster`` announces each change."""
        return answer(encode(hub.cluster))
