"""The consumer process of `tessera serve --workers N` (the layout: server/supervisor.py): the
embedded Kafka ingest (`TESSERA_INGEST`), in a process of its own so decoding and validating
messages never competes with the serving processes' interpreters.

`python -m tessera.server.consumer_process --settings FILE --ready-file F`, started by the
supervisor once the serving processes serve. Roles: the online store (`ProcessOnlineStore`:
writes through the writer process, a secondary in `<data_dir>/run/secondary-consumer`), the
registry (`RemoteRegistry` over that secondary, which opens only the registry's column family:
its catch-ups skip the records' WAL entries), then the consumers (`run_consumers` with the
`EmbeddedSink`, as in the single process), the metrics endpoint (server/process_metrics.py),
then the ready file. Offsets are committed only
once the writer acknowledged a batch; while the writer is down the sink fails with
StorageError and consumption pauses, nothing committed. SIGTERM: the consumers drain and
commit, then the store closes. A consumer that fails exits the process with 1 (the supervisor
restarts it, and stops the server if it keeps failing).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from tessera.ingest import run_consumers
from tessera.ingest.metrics import IngestMetrics
from tessera.server import metrics
from tessera.server.ingest_sink import EmbeddedSink
from tessera.server.process_metrics import CONSUMER, MetricsEndpoint, endpoint_path
from tessera.server.registry_client import RemoteRegistry
from tessera.server.roles import (
    IngestRole,
    ProcessStoreRole,
    ReadyFileRole,
    RoleFailedError,
    Roles,
    run_child,
)
from tessera.server.settings import Settings, run_dir

log = logging.getLogger("tessera.server.consumer_process")


async def consume(settings: Settings, ready_file: Path) -> None:
    config = settings.ingest
    if config is None:
        raise RoleFailedError("no Kafka topics are configured (TESSERA_INGEST)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    roles = Roles()
    died: str | None = None
    try:
        online = await roles.start(ProcessStoreRole(
            settings.data_dir, run_dir(settings.data_dir) / "secondary-consumer",
            settings.online_store.block_cache_mb, settings.online_store.catch_up_interval_s,
            registry_only=True))
        store = online.store
        registry = await asyncio.to_thread(RemoteRegistry, store.reader, store.writer)
        sink = EmbeddedSink(registry, store)
        ingest_metrics = IngestMetrics(metrics.REGISTRY)
        # Every process reports its own view of the registry (a gauge left at 0 would read as
        # a disagreement in /metrics).
        metrics.FEATURE_GROUPS.set_function(lambda: len(registry.list()))
        metrics.FEATURE_GROUPS_QUARANTINED.set_function(lambda: len(registry.quarantined()))
        await roles.start(IngestRole(
            lambda ev: run_consumers(config, sink, ev, ingest_metrics), config))
        # Its ingest metrics reach /metrics through this (server/process_metrics.py).
        await roles.start(MetricsEndpoint(
            endpoint_path(run_dir(settings.data_dir), CONSUMER), metrics.REGISTRY))
        await roles.start(ReadyFileRole(ready_file))
        dead = await roles.run_until(stop)
        if dead is not None:
            died = f"the {dead[0].name} died: {dead[1]}"
            log.error("%s: stopping the consumer process", died)
    finally:
        failures = await roles.stop_all()
    if died is not None:
        raise RoleFailedError(died)
    if failures:
        raise RoleFailedError("stopped with errors: " + "; ".join(failures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the Tessera consumer process")
    parser.add_argument("--settings", type=Path, required=True, help="the settings, as JSON")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings.model_validate_json(args.settings.read_text())
    return run_child("consumer", lambda: consume(settings, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
