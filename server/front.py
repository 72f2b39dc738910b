"""The serving front of a Tessera process: offline catalog, SQL workers, HTTP and gRPC servers and
readiness, started as roles (server/roles.py) over a registry and an online store.

One composition for both layouts: the single process (server/app.py, over the RocksDB primary)
and each serving process of `--workers N` (server/serving.py, over a secondary and the writer
process). There the ports are shared with the other serving processes (`reuse_port`:
SO_REUSEPORT on the HTTP socket, grpc's `grpc.so_reuseport`) and the ports are concrete (the
supervisor picked them once).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from tessera.core.catalog import Catalog
from tessera.core.errors import UnauthenticatedError
from tessera.server import rest_runtime
from tessera.server.auth.authn import Authenticator
from tessera.server.auth.factory import authenticator_for
from tessera.server.compaction import Compactor
from tessera.server.grpc_service import (
    DIAGNOSTICS,
    FEATURE_STORE,
    FeatureStoreService,
    authorization,
    handlers,
)
from tessera.server.http_app import create_app
from tessera.server.http_fast import FastRouter
from tessera.server.registry import Registry
from tessera.server.roles import ClosingRole, GrpcRole, HttpRole, ReadinessRole, Roles
from tessera.server.settings import Settings
from tessera.server.sql_worker import SqlWorkers
from tessera.server.store import OnlineStore

#: A diagnostic of the multi-process layout: the pid of the process that answered (raw bytes,
#: no protobuf), so a client can tell the serving processes behind one port apart.
PROCESS_SERVICE = "tessera.server.Process"
PID_HEADER = "x-tessera-pid"


@dataclass
class Front:
    """The started front: its ports, and the readiness role the caller starts last."""

    http: HttpRole
    grpc: GrpcRole
    readiness: ReadinessRole


def _pid_handler(auth: Authenticator) -> grpc.GenericRpcHandler:
    """The Pid diagnostic; with authentication on, for any authenticated caller."""

    async def pid(_: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if auth.enabled:
            try:
                auth.authenticate(authorization(context))
            except UnauthenticatedError as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        return str(os.getpid()).encode()

    return grpc.method_handlers_generic_handler(
        PROCESS_SERVICE, {"Pid": grpc.unary_unary_rpc_method_handler(pid)}
    )


async def start_front(
    settings: Settings, roles: Roles, registry: Registry, store: OnlineStore,
    compact: Compactor | None, ready_file: Path | None, spill: Path,
    reuse_port: bool = False, scrape: Callable[[], Awaitable[bytes]] | None = None,
) -> Front:
    """Start the catalog, SQL workers, HTTP and gRPC (not readiness: see `Front`). `compact`
    and `scrape`: see `create_app`."""
    s = settings.server
    shutil.rmtree(spill, ignore_errors=True)  # a killed process's spill files
    spill.mkdir(parents=True)
    catalog = Catalog(settings.offline_root, memory_limit="1GB", temp_directory=spill)
    await roles.start(ClosingRole("offline catalog", catalog.close))

    health = HealthServicer()
    http: HttpRole | None = None
    rpc: GrpcRole | None = None

    def ports() -> dict[str, int]:
        return {"grpc_port": rpc.port if rpc else 0, "http_port": http.port if http else 0}

    readiness = ReadinessRole(health, ["", FEATURE_STORE], ready_file, ports)
    sql_workers = SqlWorkers.for_settings(settings.offline_root, spill, settings.sql)
    # One service for both APIs: the HTTP runtimes answer what the gRPC servicer would.
    service = FeatureStoreService(registry, store)
    auth = authenticator_for(settings)
    fast = FastRouter(
        max_body_bytes=s.grpc_max_message_bytes,
        response_headers=[(PID_HEADER.encode(), str(os.getpid()).encode())] if reuse_port else [],
        auth=auth,
        protect_metrics=settings.auth.protect_metrics,
    )
    # The FastAPI app becomes the router's fallback; the runtimes register into the router.
    app = create_app(registry, is_ready=lambda: readiness.ready, compact=compact, catalog=catalog,
                     sql_workers=sql_workers, sql_settings=settings.sql, scrape=scrape,
                     store=store, service=service, fast=fast, auth=auth)
    rest_runtime.register(fast, app, service, registry, store)
    app.state.ingest = settings.ingest  # the UI's latest dead letters (server/http_ui.py)
    http = await roles.start(
        HttpRole(fast, s.host, s.http_port, reuse_port=reuse_port, grace_s=s.shutdown_grace_s,
                 tls=settings.tls))
    # Stopped before HTTP: a running query answers 503 at once instead of holding the stop.
    await roles.start(ClosingRole("SQL workers", sql_workers.close))

    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", s.grpc_max_message_bytes),
            ("grpc.max_send_message_length", s.grpc_max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    grpc_server.add_generic_rpc_handlers(handlers(service, auth))
    if reuse_port:
        grpc_server.add_generic_rpc_handlers([_pid_handler(auth)])
    health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
    reflection.enable_server_reflection(
        [FEATURE_STORE, DIAGNOSTICS, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        grpc_server,
    )
    rpc = await roles.start(GrpcRole(grpc_server, f"{s.host}:{s.grpc_port}", s.shutdown_grace_s,
                                     tls=settings.tls))
    return Front(http, rpc, readiness)

