"""Running Tessera: the composition root.

`serve` builds the server's roles (server/roles.py) and starts them in this order, each only
once the one before it is up:

1. online store: RocksDB and the writer thread that owns every mutation; then the registry
   and the offline writer (no threads of their own), and the aggregation kernels are loaded;
2. history flusher (outbox -> Parquet), 3. TTL purger, 4. offline catalog (DuckDB);
5. HTTP server (granian, embedded on this event loop: the REST runtimes' fast path in front
   of the FastAPI control plane), 6. gRPC server (grpc.aio on the same loop; ports bound here:
   a port in use fails the start-up);
7. embedded Kafka consumer (only when configured), 8. readiness (/readyz, gRPC health, the
   ready file).

It then runs until SIGTERM / SIGINT or until a role dies, and stops the started roles in
reverse order: readiness first (load balancers look away), the consumer drains and commits,
gRPC drains the calls in flight, HTTP stops, then the writer drains, the flusher writes every
committed row to Parquet, and RocksDB closes. A start-up that fails half way stops what it had
started the same way and raises, so `tessera serve` exits non-zero within seconds with every
thread stopped and every port released; a role that died, or a stop that failed, raises
RoleFailedError after the others stopped. Only this process's roles exist today; the roles
are shaped to be placed in separate processes later (DESIGN.md, Processes).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.server import metrics
from tessera.server.aggregates import ensure_kernels
from tessera.server.compaction import local_compactor
from tessera.server.front import start_front
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import TtlPurger
from tessera.server.outbox import OutboxFlusher
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.roles import (
    HistoryRole,
    IngestRole,
    OnlineStoreRole,
    RoleFailedError,
    Roles,
    TtlPurgeRole,
)
from tessera.server.settings import Settings
from tessera.server.store_hooks import StoreHooks, publish_groups

log = logging.getLogger("tessera.server")


@dataclass(frozen=True)
class BoundPorts:
    grpc_port: int
    http_port: int


async def serve(
    settings: Settings,
    ready_file: Path | None = None,
    on_ready: Callable[[BoundPorts], Awaitable[None]] | None = None,
) -> None:
    """Run until SIGTERM / SIGINT; `on_ready` runs once serving (the server keeps serving after
    it returns). Raises the start-up error, or RoleFailedError when a role died or a stop
    failed, always after stopping every role that had started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    roles = Roles()
    waits: list[asyncio.Future[Any]] = []
    died: tuple[str, str] | None = None
    try:
        ports = await _start(settings, roles, ready_file, stop)
        if ports is not None:
            if on_ready is not None:
                waits.append(asyncio.ensure_future(_drive(on_ready, ports)))
            dead = await roles.run_until(stop)
            if dead is not None:
                died = (dead[0].name, dead[1])
                log.error("the %s died (%s): stopping the server", *died)
    finally:
        for w in waits:
            w.cancel()
        log.info("shutting down: finishing in-flight calls")
        failures = await roles.stop_all()
        for sig in signals:
            loop.remove_signal_handler(sig)
    if died is not None:
        raise RoleFailedError(f"the {died[0]} died: {died[1]}")
    if failures:
        raise RoleFailedError("stopped with errors: " + "; ".join(failures))
    log.info("stopped cleanly")


async def _drive(on_ready: Callable[[BoundPorts], Awaitable[None]], ports: BoundPorts) -> None:
    try:
        await on_ready(ports)
    except Exception:
        log.exception("the on-ready task failed; the server keeps serving")


async def _start(
    settings: Settings, roles: Roles, ready_file: Path | None, stop: asyncio.Event
) -> BoundPorts | None:
    """Build and start every role in order (None: SIGTERM arrived during start-up)."""
    s = settings.server
    online = await roles.start(OnlineStoreRole(
        settings.data_dir / "online",
        block_cache_mb=settings.online_store.block_cache_mb,
        write_buffer_mb=settings.online_store.write_buffer_mb,
        max_commit_records=settings.online_store.max_commit_records,
    ))
    rocks, store = online.rocks, online.store
    registry = FeatureGroupRegistry(rocks)
    offline = ParquetOfflineWriter(settings.offline_root)
    flusher = OutboxFlusher(
        rocks, store, offline, registry.by_id,
        interval_s=settings.offline_store.flush_interval_s,
        max_rows=settings.offline_store.flush_max_rows,
    )
    registry.hooks = StoreHooks(store, offline, flusher)
    publish_groups(registry, offline)
    metrics.FEATURE_GROUPS_QUARANTINED.set_function(lambda: len(registry.quarantined()))
    # Before serving: no request pays a compilation, whichever group gets aggregations later
    # (loaded from Numba's cache in under a second; compiled once after an install, ~35 s).
    await asyncio.to_thread(ensure_kernels)
    if stop.is_set():
        return None
    await roles.start(HistoryRole(flusher, store))
    metrics.FEATURE_GROUPS.set(len(registry.list()))
    purger = TtlPurger(
        store, settings.online_store.ttl_purge_interval_s, settings.online_store.ttl_purge_batch
    )
    await roles.start(TtlPurgeRole(purger))
    metrics.GROUP_COMMITS.set_function(lambda: store.commits)
    metrics.GROUP_COMMIT_OPS.set_function(lambda: store.committed_ops)
    metrics.TTL_PURGED.set_function(lambda: purger.purged)
    metrics.OUTBOX_PENDING.set_function(flusher.pending)
    metrics.OFFLINE_ROWS.set_function(lambda: offline.rows_written)

    if stop.is_set():
        return None
    front = await start_front(settings, roles, registry, store, local_compactor(offline),
                              ready_file, spill=settings.data_dir / "tmp" / "duckdb")

    if settings.ingest is not None:
        # Imported only when configured: running a consumer needs the `ingest` extra.
        from tessera.ingest import run_consumers
        from tessera.ingest.metrics import IngestMetrics
        from tessera.server.ingest_sink import EmbeddedSink

        config = settings.ingest
        sink = EmbeddedSink(registry, store)
        ingest_metrics = IngestMetrics(metrics.REGISTRY)
        await roles.start(IngestRole(
            lambda ev: run_consumers(config, sink, ev, ingest_metrics), config
        ))
    if stop.is_set():
        return None
    await roles.start(front.readiness)
    log.info("Tessera serving: gRPC %s:%d, HTTP %s://%s:%d, data in %s",
             s.host, front.grpc.port, settings.http_scheme, s.host, front.http.port,
             settings.data_dir)
    return BoundPorts(front.grpc.port, front.http.port)
