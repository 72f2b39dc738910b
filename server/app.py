"""Running Tessera: the online store, the gRPC server and the HTTP control plane in one process,
on one asyncio loop, with graceful shutdown on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from tessera.core.catalog import Catalog
from tessera.core.schema import FeatureGroup
from tessera.server import metrics
from tessera.server.aggregates import ensure_kernels
from tessera.server.grpc_service import DIAGNOSTICS, FEATURE_STORE, FeatureStoreService, handlers
from tessera.server.http_app import create_app
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import RocksDBOnlineStore, TtlPurger
from tessera.server.outbox import OutboxFlusher
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import open_rocksdb
from tessera.server.settings import Settings

log = logging.getLogger("tessera.server")


class _EmbeddedHTTPServer(uvicorn.Server):
    """uvicorn without signal handling of its own: `serve` owns SIGTERM / SIGINT and stops gRPC
    first (draining in-flight calls, /readyz already failing) and HTTP after it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _StoreHooks:
    """Keeps the stores in step with the registry."""

    def __init__(
        self, store: RocksDBOnlineStore, offline: ParquetOfflineWriter, flusher: OutboxFlusher
    ) -> None:
        self._store, self._offline, self._flusher = store, offline, flusher

    def group_changed(self, group: FeatureGroup) -> None:
        self._offline.publish_group(group)

    def group_deleted(self, group: FeatureGroup) -> None:
        # Every write queued before the delete commits first; then its history is flushed and
        # set aside, so a new group of the same name starts with an empty history.
        self._store.drop_group(group.feature_group_id).result()
        self._flusher.flush_all()
        self._offline.retire_group(group)


@dataclass(frozen=True)
class BoundPorts:
    grpc_port: int
    http_port: int


async def serve(
    settings: Settings,
    ready_file: Path | None = None,
    on_ready: Callable[[BoundPorts], Awaitable[None]] | None = None,
) -> None:
    """Run until SIGTERM / SIGINT (or until `on_ready` returns, if given one that returns)."""
    s = settings.server
    rocks = open_rocksdb(
        settings.data_dir / "online",
        block_cache_mb=settings.online_store.block_cache_mb,
        write_buffer_mb=settings.online_store.write_buffer_mb,
    )
    store = RocksDBOnlineStore(rocks, settings.online_store.max_commit_records)
    registry = FeatureGroupRegistry(rocks)
    offline = ParquetOfflineWriter(settings.offline_root)
    flusher = OutboxFlusher(
        rocks, store, offline, registry.by_id,
        interval_s=settings.offline_store.flush_interval_s,
        max_rows=settings.offline_store.flush_max_rows,
    )
    registry.hooks = _StoreHooks(store, offline, flusher)
    groups = registry.list()
    for group in groups:
        offline.publish_group(group)
    # Before serving: no request pays a compilation, whichever group gets aggregations later
    # (loaded from Numba's cache in ~0.3 s; compiled once after an install, ~20 s).
    await asyncio.to_thread(ensure_kernels)
    flusher.start()
    metrics.FEATURE_GROUPS.set(len(registry.list()))
    purger = TtlPurger(
        store, settings.online_store.ttl_purge_interval_s, settings.online_store.ttl_purge_batch
    )
    purger.start()
    metrics.GROUP_COMMITS.set_function(lambda: store.commits)
    metrics.GROUP_COMMIT_OPS.set_function(lambda: store.committed_ops)
    metrics.TTL_PURGED.set_function(lambda: purger.purged)
    metrics.OUTBOX_PENDING.set_function(flusher.pending)
    metrics.OFFLINE_ROWS.set_function(lambda: offline.rows_written)
    ready = False

    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", s.grpc_max_message_bytes),
            ("grpc.max_send_message_length", s.grpc_max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    grpc_server.add_generic_rpc_handlers(handlers(FeatureStoreService(registry, store)))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
    reflection.enable_server_reflection(
        [FEATURE_STORE, DIAGNOSTICS, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        grpc_server,
    )
    grpc_port = grpc_server.add_insecure_port(f"{s.host}:{s.grpc_port}")
    if grpc_port == 0:
        raise OSError(f"cannot bind gRPC to {s.host}:{s.grpc_port}")

    spill = settings.data_dir / "tmp" / "duckdb"
    shutil.rmtree(spill, ignore_errors=True)  # a killed process's spill files
    spill.mkdir(parents=True)
    catalog = Catalog(settings.offline_root, memory_limit="1GB", restrict_files=True,
                      temp_directory=spill)
    app = create_app(registry, is_ready=lambda: ready, offline=offline, catalog=catalog)
    http = _EmbeddedHTTPServer(
        uvicorn.Config(
            app, host=s.host, port=s.http_port, log_level="warning", lifespan="off",
            access_log=False,
        )
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await grpc_server.start()
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        if http_task.done():
            await http_task  # re-raises the bind error
            raise OSError(f"cannot bind HTTP to {s.host}:{s.http_port}")
        await asyncio.sleep(0.01)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    ports = BoundPorts(grpc_port, http_port)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(FEATURE_STORE, health_pb2.HealthCheckResponse.SERVING)
    ready = True
    log.info("Tessera serving: gRPC %s:%d, HTTP http://%s:%d, data in %s",
             s.host, grpc_port, s.host, http_port, settings.data_dir)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"grpc_port": grpc_port, "http_port": http_port,
                                   "pid": os.getpid()}))
        tmp.replace(ready_file)

    ingest_stop = threading.Event()
    ingest_task = None
    if settings.ingest is not None:
        from tessera.ingest import run_consumers
        from tessera.ingest.metrics import IngestMetrics
        from tessera.server.ingest_sink import EmbeddedSink

        ingest_task = asyncio.ensure_future(asyncio.to_thread(
            run_consumers, settings.ingest, EmbeddedSink(registry, store), ingest_stop,
            IngestMetrics(metrics.REGISTRY),
        ))
        log.info("consuming %d Kafka topic(s) into the store",
                 len(settings.ingest.topics))
    driver = asyncio.ensure_future(on_ready(ports)) if on_ready else None
    try:
        await stop.wait()
    finally:
        log.info("shutting down: finishing in-flight calls")
        ready = False
        if driver is not None and not driver.done():
            driver.cancel()
        if ingest_task is not None:  # drain and commit before the store closes
            ingest_stop.set()
            try:
                await ingest_task
            except Exception:
                log.exception("the embedded Kafka consumer failed")
        await health.enter_graceful_shutdown()
        await grpc_server.stop(s.shutdown_grace_s)
        http.should_exit = True
        await http_task
        purger.stop()
        store.close()  # drains queued writes
        flusher.stop()  # and everything committed reaches Parquet
        catalog.close()
        rocks.close()
        log.info("stopped cleanly")
