"""The HTTP control plane (FastAPI): feature groups, health, readiness, Prometheus metrics.

Errors leave through one exception handler: `{"error": {"code": ..., "message": ...}}` with the
status of the error class (422 invalid, 404 not found, 409 conflict, 503 unavailable, 401
unauthenticated, 403 permission denied).

Who may call what (server/http_auth.py): the fast router in front of the app authenticates
each request (with --auth) and leaves its principal at `scope["tessera.principal"]`; one
app-wide dependency (`authorize`) checks the rule the matched route declares in
`http_auth.RULES` before the route runs, so every route, included ones too, is checked. The
routes then show only what the caller may read (the group listing) and write each admin action
to the audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tessera.core.catalog import Catalog
from tessera.core.errors import StorageError, TesseraError, UnauthenticatedError
from tessera.core.schema import (
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
    FeatureMetadataUpdate,
)
from tessera.server import http_auth, metrics
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.permissions import LOCAL, Action, Principal
from tessera.server.compaction import Compactor
from tessera.server.grpc_service import FeatureStoreService
from tessera.server.http_fast import ERROR_CODES, FastRouter
from tessera.server.http_keys import register_key_routes
from tessera.server.http_sql import OfflineHealth, register_sql_routes
from tessera.server.http_stats import register_stats_routes
from tessera.server.http_ui import register_ui_routes
from tessera.server.registry import Registry
from tessera.server.sagemaker_control import register as register_sagemaker_control
from tessera.server.sagemaker_runtime import SageMakerRuntime
from tessera.server.sagemaker_runtime import register as register_sagemaker_runtime
from tessera.server.settings import SqlSettings
from tessera.server.sql_worker import SqlWorkers
from tessera.server.storage_health import storage_failure
from tessera.server.store import OnlineStore

log = logging.getLogger(__name__)

_CODES = ERROR_CODES


def _error(status: int, message: str, details: Any = None) -> JSONResponse:
    # A message may quote a lone surrogate sent in JSON: escaped, it still encodes as UTF-8.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body: dict[str, Any] = {"code": _CODES.get(status, "Internal"), "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


def principal_of(request: Request) -> Principal:
    """The caller of a request (LOCAL with authentication off)."""
    principal = request.scope.get("tessera.principal")
    return LOCAL if principal is None else principal


def _authorizer(auth: Authenticator) -> Callable[[Request], Awaitable[None]]:
    """The app-wide dependency (with authentication on): the matched route's rule
    (server/http_auth.py), checked before the route runs."""

    async def authorize(request: Request) -> None:
        method = request.method
        template = getattr(request.scope.get("route"), "path", request.url.path)
        rule = http_auth.rule_for(method, template)
        if rule is not None and not rule.needs_principal:
            return
        principal = request.scope.get("tessera.principal")
        if principal is None:  # the router authenticates every such request: not served
            raise UnauthenticatedError(f"{method} {template} needs credentials", "missing")
        if rule is None:
            http_auth.undeclared(method, template, principal)
        else:
            rule.check(principal, request.path_params, f"{method} {template}")

    return authorize


def create_app(
    registry: Registry,
    is_ready: Callable[[], bool],
    compact: Compactor | None = None,
    catalog: Catalog | None = None,
    sql_workers: SqlWorkers | None = None,
    sql_settings: SqlSettings | None = None,
    scrape: Callable[[], Awaitable[bytes]] | None = None,
    store: OnlineStore | None = None,
    service: FeatureStoreService | None = None,
    fast: FastRouter | None = None,
    auth: Authenticator = OPEN_ACCESS,
) -> FastAPI:
    """The app. `compact` runs `POST .../compact` (None: no offline store, 503); `catalog`
    (the server's own) reports groups without a SQL view in /readyz; `sql_workers` run
    `POST /v1/sql` (see `http_sql`); `scrape` renders /metrics (None: this process's registry;
    with --workers N, every process's: server/process_metrics.py); `store` is the online store
    the REST runtimes read and write (the same one the gRPC servicer uses; None: none of them);
    `service` is the gRPC servicer's FeatureStoreService, `fast` the HTTP fast path in front of
    the app (server/http_fast.py): the app becomes its fallback and the runtimes register
    their routes into it (given both); the router also counts and times the app's requests
    per route (metrics.HTTP_REQUESTS / HTTP_LATENCY)."""
    app = FastAPI(
        title="Tessera control plane",
        summary="Feature groups, health and metrics of a Tessera feature store.",
        version="1",
        # With authentication off there is nothing to check: no dependency, no cost.
        dependencies=[Depends(_authorizer(auth))] if auth.enabled else None,
    )

    @app.exception_handler(TesseraError)
    async def _tessera_error(_: Request, exc: TesseraError) -> JSONResponse:
        return _error(exc.http_status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid body"
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return _error(422, message, details)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:16]
        log.error("HTTP request failed (request id %s)", request_id, exc_info=exc)
        if storage_failure(exc):  # disk full, I/O error: retryable, like a StorageError
            return _error(503, f"storage unavailable (disk full or I/O error); retry later; "
                               f"request id {request_id}")
        return _error(500, f"internal error; request id {request_id}")

    def described(group: FeatureGroup) -> dict[str, Any]:
        out = group.describe()
        reason = registry.quarantined().get(group.name)
        if reason is not None:
            out["quarantined"] = reason  # made under an older rule: delete or rename it
        return out

    @app.post("/v1/feature-groups", status_code=201, tags=["feature groups"])
    async def create_feature_group(
        definition: FeatureGroupDefinition, request: Request
    ) -> dict[str, Any]:
        """Create a feature group (SageMaker CreateFeatureGroup, snake_case). All or nothing:
        a refused or failed creation leaves no trace. Needs admin."""
        with http_auth.admin_action(principal_of(request), "CreateFeatureGroup",
                                    definition.feature_group_name):
            group = await asyncio.to_thread(registry.create, definition)
        metrics.FEATURE_GROUPS.set(len(registry.list()))
        return described(group)

    @app.get("/v1/feature-groups", tags=["feature groups"])
    async def list_feature_groups(
        request: Request, name_contains: str | None = None
    ) -> dict[str, Any]:
        """The feature groups the caller may read, by name; optionally those whose name
        contains a string. A group made under an older name rule carries `quarantined`: the
        reason."""
        principal = principal_of(request)
        return {"feature_groups": [described(g) for g in registry.list(name_contains)
                                   if principal.can(Action.READ, g.name)]}

    @app.get("/v1/feature-groups/{name}", tags=["feature groups"])
    async def describe_feature_group(name: str) -> dict[str, Any]:
        """A feature group's definition, version and timestamps. Needs read on it."""
        return described(registry.describe(name))

    @app.patch("/v1/feature-groups/{name}", tags=["feature groups"])
    async def update_feature_group(
        name: str, update: FeatureGroupUpdate, request: Request
    ) -> dict[str, Any]:
        """Add features (a new schema version) or change the description. Features are never
        removed or retyped. All or nothing, like a creation. Needs admin."""
        with http_auth.admin_action(principal_of(request), "UpdateFeatureGroup", name):
            group = await asyncio.to_thread(registry.update, name, update)
        return described(group)

    @app.patch("/v1/feature-groups/{name}/features/{feature}", tags=["feature groups"])
    async def update_feature_metadata(
        name: str, feature: str, change: FeatureMetadataUpdate, request: Request
    ) -> dict[str, Any]:
        """Change a feature's metadata: `description` ("" clears it), `parameter_additions`
        (key/value), `parameter_removals` (keys). Answers the group's description. Needs
        admin."""
        update = FeatureGroupUpdate(feature_metadata={feature: change})
        with http_auth.admin_action(principal_of(request), "UpdateFeatureMetadata", name):
            group = await asyncio.to_thread(registry.update, name, update)
        return described(group)

    @app.delete("/v1/feature-groups/{name}", status_code=204, tags=["feature groups"])
    async def delete_feature_group(name: str, request: Request) -> Response:
        """Delete a feature group and every online record of it (also a quarantined group,
        whatever its name). Needs admin."""
        with http_auth.admin_action(principal_of(request), "DeleteFeatureGroup", name):
            await asyncio.to_thread(registry.delete, name)
        metrics.FEATURE_GROUPS.set(len(registry.list()))
        return Response(status_code=204)

    @app.post("/v1/feature-groups/{name}/compact", tags=["offline store"])
    async def compact_feature_group(
        name: str, request: Request, min_files: Annotated[int, Query(ge=2, le=10_000)] = 2
    ) -> dict[str, Any]:
        """Merge each offline partition's small files into one, clustered by record id and
        event time. Query results do not change. Needs admin."""
        group = registry.describe(name)
        if compact is None:
            raise StorageError("this server has no offline store")
        with http_auth.admin_action(principal_of(request), "CompactFeatureGroup", name):
            return dataclasses.asdict(await compact(group, min_files))

    register_sql_routes(app, sql_workers, sql_settings or SqlSettings())
    register_key_routes(app, auth)  # /v1/keys: server/http_keys.py
    register_stats_routes(app, registry, catalog)  # statistics, drift: server/http_stats.py
    register_sagemaker_control(app, registry)  # POST /, X-Amz-Target: SageMaker.<Op>
    register_ui_routes(app, registry, catalog)  # /ui, /v1/whoami: server/http_ui.py
    offline_health = OfflineHealth(catalog, registry)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """Readiness: the store is open and the gRPC server is accepting calls. The detail lists
        offline groups without a SQL view and quarantined groups: they do not make the server
        unready, the other groups are served."""
        detail = await offline_health.detail()
        if is_ready():
            return JSONResponse({"status": "ready", **detail})
        return _error(503, "not ready: starting up or shutting down", detail)

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: request counts and latency histograms per RPC and route; with
        --workers N, every process's, each sample labelled with its `process`."""
        body = generate_latest(metrics.REGISTRY) if scrape is None else await scrape()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    if fast is not None:
        fast.app = app
        if store is not None:
            register_sagemaker_runtime(fast, SageMakerRuntime(registry, store))
    if auth.enabled:
        _document_auth(app)
    return app


def _document_auth(app: FastAPI) -> None:
    """/openapi.json (and /docs' Authorize button) says every call takes `Authorization: Bearer
    <API key or JWT>`; the probes and the documentation need none (server/http_auth.py)."""
    previous = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = previous()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer",
            "description": "an API key (tessera keys create) or a JWT of the configured issuer"}
        schema["security"] = [{"apiKey": []}]
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                rule = http_auth.rule_for(method.upper(), path)
                if rule is not None and not rule.needs_principal:
                    operation["security"] = []  # open: no credentials
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
