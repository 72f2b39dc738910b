"""A registry-only secondary (the consumer process's): it follows the registry and the commit
sequence of the primary, and refuses record reads with a StorageError rather than answering
"not found"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.core.errors import StorageError
from tessera.core.keys import record_key
from tessera.core.records import ValidatedRecord
from tessera.server.online_store import RocksDBOnlineStore, now_us
from tessera.server.registry import FeatureGroupRegistry, RegistryView
from tessera.server.rocksdb import open_rocksdb
from tessera.server.secondary import SecondaryReader
from tessera.server.writes import put_op
from tests.unit.server.test_ingest_sink import group_definition


def test_a_registry_only_secondary_follows_the_registry_and_refuses_record_reads(
    tmp_path: Path,
) -> None:
    rocks = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    online = RocksDBOnlineStore(rocks)
    full = only = None
    try:
        registry = FeatureGroupRegistry(rocks)
        only = SecondaryReader(tmp_path / "online", tmp_path / "sec-registry",
                               catch_up_interval_s=60.0, block_cache_mb=8, registry_only=True)
        full = SecondaryReader(tmp_path / "online", tmp_path / "sec-full",
                               catch_up_interval_s=60.0, block_cache_mb=8)
        registry.create(group_definition())
        schema = registry.schema("users")
        rec = ValidatedRecord("u1", 1_700_000_000_000_000, None, b"", None)
        committed = online.submit([put_op(schema, rec, now_us(), "")]).result(10)
        key = record_key(schema.group_id, "u1")
        for reader in (only, full):
            reader.catch_up()
            assert reader.visible_seq() >= committed.seq
            assert RegistryView.load(reader.registry).schema("users") == schema
        assert full.get(key, now_us()) is not None
        for read in (lambda: only.get(key, now_us()), lambda: only.multi_get([key], now_us()),
                     lambda: only.get_aggregates([key]),
                     lambda: only.scan(schema.group_id, None, 10, now_us())):
            with pytest.raises(StorageError, match="only the registry"):
                read()
    finally:
        for reader in (only, full):
            if reader is not None:
                reader.close()
        online.close()
        rocks.close()
