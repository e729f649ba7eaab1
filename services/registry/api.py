"""The HTTP API (contract section 3): routes, their status codes, and errors as
``{"detail": ...}``. Reads answer from the view's pre-encoded bytes; writes go through
``instances.py``. A client's mistake is a 4xx naming the field, never a 500, and is
refused before anything reaches etcd.

Routes (401 / 403 too when guarded): POST /v1/services 201 | 413 | 422 | 503;
PUT /v1/services/{name}/{id}/heartbeat 204 | 404 | 422 | 503; DELETE
/v1/services/{name}/{id} 204 | 422 | 503;
GET /v1/services/{name} 200 | 404 | 422 | 503 (answered by ``asgi.ServiceLookup``);
GET /v1/services, GET /v1/capabilities 200 | 422 | 503; GET /v1/capabilities/{namespace}
200 | 404 | 422 | 503; GET /v1/watch (SSE) 200 | 422 | 503; GET /v1/health 200 | 503
(starting); GET /metrics; GET /openapi.json. The dashboard's reads (``overview.py``:
/v1/dependencies, /v1/sync, /v1/cluster) and pages (``pages.py``: /ui/...).

With a token file (``guard.py``) every write answers 401 before anything else is looked
at, and 403 as soon as the service name is known and checked (the path of a heartbeat
or a deregistration, the body of a registration); with ``--require-read-token`` the
reads of data answer 401 / 403 first too. Health, metrics and the documents stay open.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.routing import Route
from structlog.typing import FilteringBoundLogger

from services.core.errors import StoreError
from services.registry import VERSION, changes, overview, pages
from services.registry.asgi import Edge, ServiceLookup, registry_headers
from services.registry.guard import AuthRefused, Guard
from services.registry.hub import Hub
from services.registry.instances import Instances, NotFound, Refused
from services.registry.metrics import Metrics
from services.registry.records import (
    NAME_RULE,
    STATUSES,
    BadInput,
    ServiceCreate,
    check_capability,
    check_instance_id,
    check_name,
    check_reference,
    from_validation,
    parse_registration,
)
from services.registry.settings import Settings
from services.registry.streaming import changes_after
from services.registry.tokens import Identity

SEND_TIMEOUT = 30.0  # a subscriber that takes no bytes for this long is dropped
STARTING = "registry starting: the first read of etcd is not done yet"
BEARER = "bearerAuth"
WRITES = (("/v1/services", "post"), ("/v1/services/{name}/{id}/heartbeat", "put"),
          ("/v1/services/{name}/{id}", "delete"))
READS = (("/v1/services", "get"), ("/v1/services/{name}", "get"), ("/v1/capabilities", "get"),
         ("/v1/capabilities/{namespace}", "get"), ("/v1/watch", "get"),
         ("/v1/dependencies", "get"), ("/v1/sync", "get"), ("/v1/cluster", "get"))
REFUSALS = {"401": {"description": "no token, or an unknown one (WWW-Authenticate: Bearer)",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Detail"}}}},
            "403": {"description": "the token's scopes do not cover this; the detail names "
                                   "the scope needed",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Detail"}}}}}


class Registered(BaseModel):
    id: str
    name: str
    version: str
    status: str
    registered_at: str
    heartbeat_interval: float
    heartbeat_timeout: float
    removal_timeout: float


class Detail(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": Detail, "description": "bad input; the detail names the field"},
    503: {"model": Detail, "description": "etcd quorum unavailable, or starting"},
}


def _headers(hub: Hub) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in registry_headers(hub)}


def _only(request: Request, allowed: tuple[str, ...]) -> None:
    """Unknown or repeated query parameters are mistakes worth naming, not ignoring."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise BadInput(key, f"unknown query parameter (known: {known})")
        if key in seen:
            raise BadInput(key, "given more than once")
        seen.add(key)


def build(hub: Hub, instances: Instances, metrics: Metrics, settings: Settings,
          log: FilteringBoundLogger, guard: Guard | None = None) -> Edge:
    app = FastAPI(title="chora registry (SAP-044 Manifest)", version=VERSION,
                  description="Service instances on etcd leases, and the capabilities the "
                              "gitops sync declares. Every answer carries X-Registry-Index.",
                  docs_url="/docs", redoc_url=None)
    view = hub.view

    def ready() -> None:
        if not view.ready:
            raise Refused(STARTING)

    def body(content: bytes, status: int = 200) -> Response:
        return Response(content, status_code=status, media_type="application/json",
                        headers=_headers(hub))

    async def read_access(request: Request) -> None:
        assert guard is not None
        guard.check_read(request.scope)

    # Open reads carry no dependency at all: they cost what they did before tokens.
    reads = [Depends(read_access)] if guard is not None and guard.require_read else []

    def writer(request: Request, need: str) -> Identity | None:
        return None if guard is None else guard.authenticate(request.scope, need)

    def permit(request: Request, identity: Identity | None, name: str, action: str) -> None:
        if guard is not None and identity is not None:
            guard.permit_write(identity, name, action, request.scope)

    @app.exception_handler(AuthRefused)
    async def auth_refused(_: Request, exc: AuthRefused) -> Response:
        return JSONResponse({"detail": exc.detail}, exc.status,
                            headers={**_headers(hub), "WWW-Authenticate": exc.challenge})

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> Response:
        return JSONResponse(exc.body(), exc.status, headers=_headers(hub))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        found = from_validation(exc.errors(), skip=("body", "query", "path", "header"))
        return JSONResponse(found.body(), 422, headers=_headers(hub))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> Response:
        return JSONResponse({"detail": str(exc)}, 404, headers=_headers(hub))

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> Response:
        return JSONResponse({"detail": str(exc)}, 503,
                            headers={**_headers(hub), "Retry-After": "1"})

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> Response:
        log.warning("etcd refused a request", error=str(exc))
        return JSONResponse({"detail": f"etcd: {exc}"}, 503,
                            headers={**_headers(hub), "Retry-After": "1"})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("request failed", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": "internal error (logged)"}, 500, headers=_headers(hub))

    # -- instances -------------------------------------------------------------------

    @app.post("/v1/services", status_code=201, responses={201: {"model": Registered},
                                                           413: {"model": Detail}, **ERRORS},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {
                      "$ref": "#/components/schemas/ServiceCreate"}}}}})
    async def register(request: Request) -> Response:
        """Register one running instance; its id is chosen here. Keep it alive with a
        heartbeat every ``heartbeat_interval`` seconds."""
        identity = writer(request, "scope register:<glob> covering the service name, or "
                                   "admin")
        _only(request, ())
        registration = parse_registration(await request.body())
        permit(request, identity, registration.name, "register")
        answer = await instances.register(registration)
        return JSONResponse(answer, 201, headers=_headers(hub))

    @app.put("/v1/services/{name}/{id}/heartbeat", status_code=204,
             responses={404: {"model": Detail}, **ERRORS})
    async def heartbeat(request: Request, name: str, id: str) -> Response:
        """One lease keep-alive. 404: removed or never registered, register again."""
        identity = writer(request, f"scope register:<glob matching {name[:80]!r}> or admin")
        check_instance_id(check_name(name), id)
        permit(request, identity, name, "heartbeat")
        await instances.heartbeat(name, id)
        return Response(status_code=204, headers=_headers(hub))

    @app.delete("/v1/services/{name}/{id}", status_code=204, responses=ERRORS)
    async def deregister(request: Request, name: str, id: str) -> Response:
        """Remove the instance now (also 204 when it is already gone)."""
        identity = writer(request, f"scope register:<glob matching {name[:80]!r}> or admin")
        check_instance_id(check_name(name), id)
        permit(request, identity, name, "deregister")
        await instances.deregister(name, id)
        return Response(status_code=204, headers=_headers(hub))

    @app.get("/v1/services/{name}", responses={
        200: {"description": "the record when one instance, a list of records when "
                             "several"}, 404: {"model": Detail}, **ERRORS},
        dependencies=reads)
    async def get_service(name: str = Path(description=NAME_RULE)) -> Response:
        """Answered by a plain ASGI route with the same behaviour (this one documents
        it, and serves it if that route is ever removed)."""
        check_name(name)
        ready()
        found = view.service(name)
        if found is None:
            raise NotFound(f"service {name!r} not found: no instance registered")
        return body(found)

    @app.get("/v1/services", responses=ERRORS, dependencies=reads)
    async def list_services(
        request: Request,
        status: Literal["up", "unhealthy", "unknown", "down"] | None = Query(None),
        tag: str | None = Query(None, max_length=256),
        dependency: str | None = Query(None, description="instances whose "
                                       "metadata.dependencies lists this name"),
    ) -> Response:
        """Every instance, sorted by name and id; the filters combine."""
        _only(request, ("status", "tag", "dependency"))
        check_reference(dependency, "dependency")
        ready()
        return body(view.services(status, tag, dependency))

    # -- capabilities ----------------------------------------------------------------

    @app.get("/v1/capabilities", responses=ERRORS, dependencies=reads)
    async def list_capabilities(
        request: Request,
        type: Literal["service", "pattern"] | None = Query(None),
        dependency: str | None = Query(None, description="capabilities whose "
                                       "dependencies list this namespace"),
    ) -> Response:
        """The capabilities the gitops sync declares, each with its health and the
        instances registered under its namespace."""
        _only(request, ("type", "dependency"))
        check_reference(dependency, "dependency")
        ready()
        return body(view.capabilities(type, dependency))

    @app.get("/v1/capabilities/{namespace}", responses={404: {"model": Detail}, **ERRORS},
             dependencies=reads)
    async def get_capability(namespace: str) -> Response:
        check_capability(namespace)
        ready()
        found = view.capability(namespace)
        if found is None:
            raise NotFound(f"capability {namespace!r} not found")
        return body(found)

    overview.add_routes(app, hub, reads=reads, ready=ready, answer=body)
    pages.add_routes(app)

    # -- change stream, health, metrics ----------------------------------------------

    @app.get("/v1/watch", response_class=EventSourceResponse, responses=ERRORS,
             dependencies=reads)
    async def watch(
        request: Request,
        name: str | None = Query(None, description="only changes of this service name "
                                 "or capability namespace"),
        last_event_id: str | None = Query(None, description="as the Last-Event-ID header"),
        last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
        include: str | None = Query(None, description="comma-separated extra events: "
                                    "sync (sync_changed), cluster (cluster_changed), beats"),
    ) -> Response:
        """Server-Sent Events: registered, status_changed, updated, deregistered (data
        status "down"), capability_changed, resync. id = etcd revision; send it back as
        Last-Event-ID to resume exactly where the stream stopped. ``include=sync,cluster,
        beats`` adds sync_changed (data as GET /v1/sync), cluster_changed (as GET
        /v1/cluster, sent at once and on every change; no id) and beats (every 2 s
        while any moved: ``{instances: [[name, id, last_heartbeat]], health: {namespace:
        record}}``; no id)."""
        _only(request, ("name", "last_event_id", "include"))
        check_reference(name, "name")
        extras = frozenset(part.strip() for part in (include or "").split(",") if part.strip())
        if unknown := sorted(extras - changes.OPTIONAL.keys()):
            raise BadInput("include", f"unknown extra {unknown[0][:40]!r} (known: "
                           + ", ".join(changes.OPTIONAL) + ")")
        raw = last_event_id_header if last_event_id_header is not None else last_event_id
        position = None
        if raw is not None and raw.strip() != "":
            if not raw.strip().isdigit() or len(raw.strip()) > 20:
                raise BadInput("Last-Event-ID", f"{raw[:40]!r} is not a revision")
            position = int(raw.strip())
        ready()
        return EventSourceResponse(changes_after(hub, metrics, position, name, extras),
                                   ping=settings.stream_ping, send_timeout=SEND_TIMEOUT,
                                   headers=_headers(hub))

    @app.get("/v1/health")
    async def health() -> Response:
        """200 healthy or degraded (answering from memory, no etcd quorum); 503 while
        starting."""
        status = ("starting" if not view.ready else "degraded" if view.degraded
                  else "healthy")
        reached = hub.etcd_reached
        answer: dict[str, Any] = {
            "status": status,
            "version": VERSION,
            "services_registered": len(view.state.instances),
            "instances": view.counts(),
            "capabilities": len(view.state.capabilities),
            "revision": view.revision,
            "etcd_last_reached_seconds": None if reached is None
            else round(hub.clock() - reached, 3),
            "watch_subscribers": hub.subscribers,
        }
        if status != "healthy":
            answer["reason"] = STARTING if status == "starting" else hub.degraded_reason
        return JSONResponse(answer, 503 if status == "starting" else 200,
                            headers=_headers(hub))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        counts = view.counts()
        for status in (*STATUSES, *counts):
            metrics.instances.labels(status).set(counts.get(status, 0))
        metrics.revision.set(view.revision)
        metrics.degraded.set(1 if view.degraded else 0)
        metrics.ready.set(1 if view.ready else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST,
                        headers=_headers(hub))

    # The hot route first, so it answers before FastAPI's declaration of it.
    lookup = ServiceLookup(hub, guard if guard is not None and guard.require_read else None)
    app.router.routes.insert(0, Route(lookup.path, lookup, methods=["GET"],
                                      include_in_schema=False))
    app.openapi = lambda: _openapi(app, guard)  # type: ignore[method-assign]
    return Edge(app, hub, metrics, lookup)


def _openapi(app: FastAPI, guard: Guard | None) -> dict[str, Any]:
    """FastAPI's document, plus the registration body (read by hand, so that its size
    is capped and its errors name the field, FastAPI does not see it), and the bearer
    scheme: declared always, required by the operations this server guards."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    body = ServiceCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = body.pop("$defs", {})
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update({**nested, "ServiceCreate": body})
    schema["components"]["securitySchemes"] = {BEARER: {
        "type": "http", "scheme": "bearer",
        "description": "A token of the registry's --tokens file. Scopes: read, "
                       "register:<glob> (names matching it), admin."}}
    guarded = [] if guard is None else [*WRITES, *(READS if guard.require_read else ())]
    for path, method in guarded:
        operation = schema["paths"].get(path, {}).get(method)
        if operation is not None:
            operation["security"] = [{BEARER: []}]
            operation.setdefault("responses", {}).update(REFUSALS)
    app.openapi_schema = schema
    return schema
