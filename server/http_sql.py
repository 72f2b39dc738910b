"""`POST /v1/sql` and the offline store's part of `/readyz`.

A query is checked for size before anything parses it (the body is read in bounded chunks and
refused past the limit: 413), then runs in a SQL worker process (`tessera.server.sql_worker`)
under `sql.timeout_s` (504), and is cancelled when its client goes away. The serving process
only waits on a socket: GetRecord and the probes keep their latency while a query runs.

A query sees the views of the groups its caller may read (the principal the HTTP edge left at
`scope["tessera.principal"]`; everyone is LOCAL, an admin, with authentication off): a view it
may not read answers 403 naming the group, written to the audit log (action "POST /v1/sql")
with the request id the message names. No caller may call a table function that reads files.
See `sql_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.core.catalog import Catalog
from tessera.core.errors import StorageError, TesseraError
from tessera.core.sql_sandbox import QueryTooLargeError, check_query_size
from tessera.server import metrics
from tessera.server.auth import audit
from tessera.server.auth.permissions import LOCAL, Principal
from tessera.server.settings import SqlSettings
from tessera.server.sql_worker import SqlPermissionDeniedError, SqlWorkers

#: Room for the JSON around the query, and for escapes (\uXXXX: 6 bytes for one character).
_BODY_FACTOR = 6
_BODY_SLACK = 64 * 1024
_OUTCOMES = {413: "too_large", 504: "timeout", 422: "invalid", 503: "cancelled", 403: "denied"}


class SqlQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="one SELECT over the views (one per feature group)")
    format: Literal["json", "csv", "parquet"] = "json"
    max_rows: int = Field(10_000, ge=1, le=1_000_000, description="json: rows returned at most")
    timeout_s: float | None = Field(
        None, gt=0, description="stop the query after this long (at most sql.timeout_s)"
    )


async def _bounded_body(request: Request, limit: int, query_limit: int) -> bytes:
    def refuse(size: str) -> QueryTooLargeError:
        return QueryTooLargeError(
            f"sql: the request body is {size}, more than a query of at most {query_limit} "
            "bytes can need (sql.max_query_bytes)"
        )

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise refuse(f"{declared} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refuse(f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _principal_of(request: Request) -> Principal:
    """Who asks: the HTTP edge authenticated the request (with --auth a request without a
    principal never reaches a route); LOCAL with authentication off."""
    principal: Principal | None = request.scope.get("tessera.principal")
    return LOCAL if principal is None else principal


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    """Set `gone` when the client disconnects. (`request.is_disconnected()` polls with a
    cancelled receive, which never sees the disconnect through Starlette's BaseHTTPMiddleware:
    a receive left waiting does.)"""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


def register_sql_routes(app: FastAPI, workers: SqlWorkers | None, settings: SqlSettings) -> None:
    """Add `POST /v1/sql` to `app`; without workers (no offline store) it answers 503."""
    body_limit = settings.max_query_bytes * _BODY_FACTOR + _BODY_SLACK

    @app.post(
        "/v1/sql",
        tags=["offline store"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SqlQuery.model_json_schema()}},
            }
        },
    )
    async def run_sql(request: Request) -> Response:
        """Run one read-only SELECT over the offline store's views (one per feature group), in
        the SQL sandbox. `format`: json (at most `max_rows` rows), csv, or parquet. Limits:
        `sql.max_query_bytes` of query text (413), `sql.timeout_s` of run time (504),
        `sql.max_result_bytes` of result (422). The query sees the views of the groups the
        caller may read (403 naming any other group); table functions that read files
        (read_parquet, read_csv, glob, ...) are refused for every caller (422)."""
        try:
            if workers is None:
                raise StorageError("this server has no offline store")
            raw = await _bounded_body(request, body_limit, settings.max_query_bytes)
            try:
                body = SqlQuery.model_validate_json(raw)
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
                ) from exc
            check_query_size(body.query, settings.max_query_bytes)
            timeout = min(body.timeout_s or settings.timeout_s, settings.timeout_s)
            gone = asyncio.Event()
            watcher = asyncio.create_task(_watch_disconnect(request, gone))

            async def is_disconnected() -> bool:
                return gone.is_set()

            principal = _principal_of(request)
            try:
                media, payload = await workers.run(
                    body.query, body.format, body.max_rows, is_disconnected, timeout,
                    principal=principal,
                )
            except SqlPermissionDeniedError as exc:
                request_id = uuid.uuid4().hex[:16]
                audit.record(principal, "POST /v1/sql", exc.group, audit.DENIED, request_id,
                             reason=exc.message)
                exc.message = f"{exc.message} (request id {request_id})"
                exc.args = (exc.message,)
                raise
            finally:
                watcher.cancel()
        except TesseraError as exc:
            metrics.SQL_QUERIES.labels(_OUTCOMES.get(exc.http_status, "error")).inc()
            raise
        except RequestValidationError:
            metrics.SQL_QUERIES.labels("invalid").inc()
            raise
        metrics.SQL_QUERIES.labels("ok").inc()
        return Response(payload, media_type=media)


class OfflineHealth:
    """What /readyz says about the offline store: groups without a SQL view (from the server's
    catalog, refreshed at most every `refresh_s`) and groups the registry quarantined."""

    def __init__(self, catalog: Catalog | None, registry: Any, refresh_s: float = 5.0) -> None:
        self._catalog = catalog
        self._registry = registry
        self._refresh_s = refresh_s
        self._last = 0.0
        if catalog is not None:
            metrics.OFFLINE_VIEWS_BROKEN.set_function(lambda: len(catalog.broken()))

    async def detail(self) -> dict[str, dict[str, str]]:
        broken: dict[str, str] = {}
        if self._catalog is not None:
            if time.monotonic() - self._last > self._refresh_s:
                self._last = time.monotonic()
                # The offline root unreadable: the last state is reported.
                with contextlib.suppress(TesseraError):
                    await asyncio.to_thread(self._catalog.refresh)
            broken = self._catalog.broken()
        # The registry's own list of groups that break today's naming rules.
        quarantined = getattr(self._registry, "quarantined", None)
        q: dict[str, str] = dict(quarantined()) if callable(quarantined) else {}
        return {"offline_views_broken": broken, "quarantined_groups": q}
