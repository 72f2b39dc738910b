"""A serving process of `tessera serve --workers N` (the layout: server/supervisor.py).

`python -m tessera.server.serving --settings FILE --index I --ready-file F`, started by the
supervisor (through server/child.py). Its roles (server/roles.py), started in this order and
stopped in reverse:

1. online store: `ProcessOnlineStore` (reads from a RocksDB secondary in
   `<data_dir>/run/secondary-<I>`, writes through the writer process's socket), the registry,
   and the aggregation kernels (loaded before serving, as in the single process);
2. the front (server/front.py): offline catalog, SQL workers (the `sql` settings per serving
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
from typing import Any

from tessera.core.errors import StorageError
from tessera.core.schema import FeatureGroup
from tessera.server.aggregates import ensure_kernels
from tessera.server.front import start_front
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import REGISTRY, open_secondary
from tessera.server.roles import ClosingRole, ProcessStoreRole, RoleFailedError, Roles
from tessera.server.settings import Settings

log = logging.getLogger("tessera.server.serving")


def run_dir(data_dir: Path) -> Path:
    """Where the supervisor and its children keep their run-time files (settings, ready
    files, secondaries): scratch, rebuilt at every start."""
    return data_dir / "run"


class _SecondaryRegistryDB:
    """What `FeatureGroupRegistry` reads, from a RocksDB secondary (its `registry` family)."""

    def __init__(self, primary: Path, secondary: Path) -> None:
        self.db = open_secondary(primary, secondary, 8)
        self.registry = self.db.get_column_family(REGISTRY)

    def close(self) -> None:
        self.db.close()


class SnapshotRegistry(FeatureGroupRegistry):
    """The groups as they were when this process started, read-only: the stand-in for the
    writer process's registry service until serving processes have one. Creating, updating
    or deleting a group answers UNAVAILABLE."""

    def _refuse(self, *_: Any, **__: Any) -> FeatureGroup:
        raise StorageError("feature groups cannot be created, changed or deleted while serving "
                           "with --workers > 1 yet; restart with --workers 1 to do so")

    create = update = _refuse

    def delete(self, name: str) -> None:
        self._refuse()


async def serve(settings: Settings, index: int, ready_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    roles = Roles()
    died: str | None = None
    try:
        if await _start(settings, index, roles, ready_file, stop):
            death = asyncio.ensure_future(roles.wait_for_death())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([death, stopping], return_when=asyncio.FIRST_COMPLETED)
            if death.done():
                role, reason = death.result()
                died = f"the {role.name} died: {reason}"
                log.error("%s: stopping this serving process", died)
            death.cancel()
            stopping.cancel()
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
    registry_db = await asyncio.to_thread(
        _SecondaryRegistryDB, data_dir / "online", scratch / f"registry-{index}")
    await roles.start(ClosingRole("registry", registry_db.close))
    registry = SnapshotRegistry(registry_db)  # type: ignore[arg-type]
    await asyncio.to_thread(ensure_kernels)
    if stop.is_set():
        return False
    front = await start_front(
        settings, roles, registry, online.store, ParquetOfflineWriter(settings.offline_root),
        ready_file, spill=data_dir / "tmp" / f"duckdb-{index}", reuse_port=True,
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
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s serving-{args.index} %(name)s: "
                               "%(message)s")
    settings = Settings.model_validate_json(args.settings.read_text())
    try:
        asyncio.run(serve(settings, args.index, args.ready_file))
    except (OSError, RoleFailedError, StorageError) as exc:
        log.error("serving process %d failed: %s: %s", args.index, type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
