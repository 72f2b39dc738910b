"""Opening Tessera's RocksDB: one DB per data directory, a column family per concern."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import rocksdict

from tessera.core.errors import StorageError

RECORDS = "records"  # group_id | record_id -> header + Record wire bytes
EXPIRY = "expiry"  # expires_at_us | group_id | record_id -> b"" (the TTL purge's index)
REGISTRY = "registry"  # feature group definitions
OUTBOX = "outbox"  # b"r" | seq -> history row, until flushed to Parquet; b"m/..." its marks
AGGREGATES = "aggregates"  # group_id | stream id | key text -> tile state (core/aggregation)
COLUMN_FAMILIES = ("default", RECORDS, EXPIRY, REGISTRY, OUTBOX, AGGREGATES)


@dataclass
class RocksDB:
    """The open database and its column families."""

    db: rocksdict.Rdict
    records: rocksdict.Rdict
    expiry: rocksdict.Rdict
    registry: rocksdict.Rdict
    outbox: rocksdict.Rdict
    aggregates: rocksdict.Rdict

    def handle(self, name: str) -> rocksdict.ColumnFamily:
        return self.db.get_column_family_handle(name)

    def close(self) -> None:
        """Sync the WAL and close. RocksDB releases its lock once every Python reference to the
        DB, its column families and their handles is gone."""
        self.db.flush_wal(True)
        for view in (self.records, self.expiry, self.registry, self.outbox, self.aggregates):
            view.close()
        self.db.close()


def _options(block_cache_mb: int, write_buffer_mb: int) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(write_buffer_mb * 1024 * 1024)
    opts.set_max_background_jobs(2)
    opts.set_compression_type(rocksdict.DBCompressionType.lz4())
    table = rocksdict.BlockBasedOptions()
    # Bloom filters make misses cheap; the block cache keeps hot records decoded in memory.
    table.set_bloom_filter(10, False)
    table.set_block_cache(rocksdict.Cache(block_cache_mb * 1024 * 1024))
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


def open_rocksdb(path: Path, block_cache_mb: int = 512, write_buffer_mb: int = 64) -> RocksDB:
    """Open (or create) the DB at `path`.

    Every column family's options are passed explicitly: reopening with `Rdict(path, options)`
    alone silently takes the options stored in the directory, losing the bloom filter and cache.
    """
    path.mkdir(parents=True, exist_ok=True)
    opts = _options(block_cache_mb, write_buffer_mb)
    try:
        db = rocksdict.Rdict(
            str(path), opts, column_families={name: opts for name in COLUMN_FAMILIES}
        )
    except Exception as exc:  # rocksdict raises plain Exception for I/O and lock errors
        raise StorageError(f"cannot open the online store at {path}: {exc}") from exc
    return RocksDB(
        db=db,
        records=db.get_column_family(RECORDS),
        expiry=db.get_column_family(EXPIRY),
        registry=db.get_column_family(REGISTRY),
        outbox=db.get_column_family(OUTBOX),
        aggregates=db.get_column_family(AGGREGATES),
    )
