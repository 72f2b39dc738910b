"""Registries for tests, local and remote, on real RocksDB in tmp_path: `FeatureGroupRegistry`
with the hooks of the process owning the primary, and `RemoteRegistry` in this process over a
real writer process (tests/writerproc.py) and a secondary of its own. Always closed and reaped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tessera.core.records import validate_record
from tessera.core.schema import CompiledSchema, FeatureGroupDefinition
from tessera.core.values import to_record
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.outbox import OutboxFlusher
from tessera.server.process_store import ProcessOnlineStore
from tessera.server.registry import FeatureGroupRegistry, Registry
from tessera.server.registry_client import RemoteRegistry
from tessera.server.rocksdb import RocksDB, open_rocksdb
from tessera.server.settings import Settings
from tessera.server.store import PutOp, now_us
from tessera.server.store_hooks import StoreHooks, publish_groups
from tessera.server.writes import put_op
from tests.writerproc import WriterProcess

Prepare = Callable[[RocksDB], None]


def definition(name: str = "users", **overrides: Any) -> FeatureGroupDefinition:
    body: dict[str, Any] = {
        "feature_group_name": name,
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "clicks", "feature_type": "Integral"},
        ],
    }
    body.update(overrides)
    return FeatureGroupDefinition.model_validate(body)


def put(schema: CompiledSchema, rid: str, clicks: int = 1, ts: float = 1.0) -> PutOp:
    """A validated put of record `rid`, as the servicer makes it."""
    record = to_record({"id": rid, "ts": ts, "clicks": clicks})
    return put_op(schema, validate_record(schema, record), now_us(), "")


def small_settings(data_dir: Path, **offline: Any) -> Settings:
    return Settings.model_validate({
        "data_dir": data_dir,
        "online_store": {"block_cache_mb": 8, "write_buffer_mb": 4},
        "offline_store": {"flush_interval_s": 30.0, **offline},
    })


def _prepared(data_dir: Path, prepare: Prepare | None) -> None:
    if prepare is None:
        return
    rocks = open_rocksdb(data_dir / "online", block_cache_mb=8, write_buffer_mb=4)
    try:
        prepare(rocks)
    finally:
        rocks.close()


@contextlib.contextmanager
def local_registry(data_dir: Path, prepare: Prepare | None = None) -> Iterator[Registry]:
    """FeatureGroupRegistry as the single-process server composes it (hooks, folders)."""
    _prepared(data_dir, prepare)
    rocks = open_rocksdb(data_dir / "online", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    try:
        registry = FeatureGroupRegistry(rocks)
        offline = ParquetOfflineWriter(data_dir / "offline")
        flusher = OutboxFlusher(rocks, store, offline, registry.by_id, 30.0, 10_000)
        registry.hooks = StoreHooks(store, offline, flusher)
        publish_groups(registry, offline)
        yield registry
    finally:
        store.close()
        rocks.close()


@contextlib.contextmanager
def writer_and_store(
    data_dir: Path, scratch: Path, settings: Settings | None = None,
    prepare: Prepare | None = None, catch_up_interval_s: float = 0.010,
) -> Iterator[tuple[WriterProcess, ProcessOnlineStore, RemoteRegistry]]:
    """A writer process on `data_dir`, and this process's store and registry over it."""
    _prepared(data_dir, prepare)
    with WriterProcess(data_dir, settings=settings or small_settings(data_dir)) as writer:
        store = ProcessOnlineStore(data_dir, scratch, catch_up_interval_s=catch_up_interval_s,
                                   block_cache_mb=8)
        try:
            yield writer, store, RemoteRegistry(store.reader, store.writer)
        finally:
            store.close()


@contextlib.contextmanager
def remote_registry(data_dir: Path, scratch: Path,
                    prepare: Prepare | None = None) -> Iterator[Registry]:
    with writer_and_store(data_dir, scratch, prepare=prepare) as (_, _, registry):
        yield registry
