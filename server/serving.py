"""A serving process of `tessera serve --workers N` (the layout: server/supervisor.py).

`python -m tessera.server.serving --settings FILE --index I --ready-file F`, started by the
supervisor (through server/child.py). Its roles (server/roles.py), started in this order and
stopped in reverse:

1. online store: `ProcessOnlineStore` (reads from a RocksDB secondary in
   `<data_dir>/run/secondary-<I>`, writes through the writer process's socket), the registry
   (`RemoteRegistry`, server/registry_client.py: reads from that secondary, mutations in the
   writer process), and the aggregation kernels (loaded before serving, as in the single
   process);
2. the metrics endpoint (server/process_metrics.py: the other processes' /metrics read it;
   this process's /metrics reads theirs);
3. the front (server/front.py): offline catalog, SQL workers (the `sql` settings per serving
   process), HTTP and gRPC on the shared ports (SO_REUSEPORT), then readiness: the ready file
   `F` names this process's pid, which tells the supervisor it serves.

SIGTERM / SIGINT: readiness off, gRPC drains the calls in flight (`shutdown_grace_s`), HTTP
stops, then the store. Exit 0 when stopped cleanly, 1 on a start-up failure or a dead role.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from tessera.core.schema import FeatureGroup
from tessera.server import metrics
from tessera.server.aggregates import ensure_kernels
from tessera.server.compaction import CompactionResult
from tessera.server.front import start_front
from tessera.server.process_metrics import (
    MetricsEndpoint,
    ServiceMetrics,
    endpoint_path,
    serving_name,
)
from tessera.server.registry_client import RemoteRegistry
from tessera.server.roles import ProcessStoreRole, RoleFailedError, Roles, run_child
from tessera.server.settings import Settings, run_dir

log = logging.getLogger("tessera.server.serving")


async def serve(settings: Settings, index: int, ready_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    roles = Roles()
    died: str | None = None
    try:
        if await _start(settings, index, roles, ready_file, stop):
            dead = await roles.run_until(stop)
            if dead is not None:
                died = f"the {dead[0].name} died: {dead[1]}"
                log.error("%s: stopping this serving process", died)
    finally:
        failures = await roles.stop_all()
    if died is not None:
        raise RoleFailedError(died)
    if failures:
        raise RoleFailedError("stopped with errors: " + "; ".join(failures))


async def _start(
    settings: Settings, index: int, roles: Roles, ready_file: Path, stop: asyncio.Event
) -> bool:
    data_dir = settings.data_dir
    scratch = run_dir(data_dir)
    online = await roles.start(ProcessStoreRole(
        data_dir, scratch / f"secondary-{index}", settings.online_store.block_cache_mb,
        settings.online_store.catch_up_interval_s))
    store = online.store
    # Reads from the store's secondary (reloaded when the registry's version key moves),
    # mutations in the writer process.
    registry = await asyncio.to_thread(RemoteRegistry, store.reader, store.writer)
    metrics.FEATURE_GROUPS.set_function(lambda: len(registry.list()))
    metrics.FEATURE_GROUPS_QUARANTINED.set_function(lambda: len(registry.quarantined()))
    await asyncio.to_thread(ensure_kernels)
    if stop.is_set():
        return False
    # Seen by the other processes' scrapes; this process's scrapes gather theirs.
    await roles.start(MetricsEndpoint(
        endpoint_path(scratch, serving_name(index)), metrics.REGISTRY))
    service_metrics = ServiceMetrics.for_serving(settings, scratch, index, metrics.REGISTRY)
    writer = store.writer

    async def compact(group: FeatureGroup, min_files: int) -> CompactionResult:
        # In the writer process: compaction swaps folders under the flusher's lock, there.
        return await asyncio.wrap_future(writer.compact_group(group.name, min_files))

    front = await start_front(
        settings, roles, registry, store, compact, ready_file,
        spill=data_dir / "tmp" / f"duckdb-{index}", reuse_port=True,
        scrape=service_metrics.scrape,
    )
    if stop.is_set():
        return False
    await roles.start(front.readiness)
    log.info("serving process %d ready: gRPC %d, HTTP %d", index, front.grpc.port,
             front.http.port)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a Tessera serving process")
    parser.add_argument("--settings", type=Path, required=True, help="the settings, as JSON")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings.model_validate_json(args.settings.read_text())
    return run_child(f"serving-{args.index}", lambda: serve(settings, args.index, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
