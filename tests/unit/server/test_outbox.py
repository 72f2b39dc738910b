"""The outbox flusher: history reaches Parquet exactly once, also when a flush is interrupted."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tessera.core.keys import record_key
from tessera.core.schema import FeatureDefinition, FeatureGroup, FeatureGroupDefinition
from tessera.core.values import to_record
from tessera.server import history
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import PutOp, RocksDBOnlineStore
from tessera.server.outbox import OutboxFlusher
from tessera.server.rocksdb import open_rocksdb

GROUP = FeatureGroup(
    definition=FeatureGroupDefinition(
        feature_group_name="g", record_identifier_feature_name="id", event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of("id", "String"),
                             FeatureDefinition.of("ts", "Fractional"),
                             FeatureDefinition.of("n", "Integral"),
                             FeatureDefinition.of("v", "Vector[2]")],
    ),
    feature_group_id=1, creation_time=0, last_modified_time=0,
)
DAY_US = 86_400_000_000


def put(i: int, day: int = 0) -> PutOp:
    et = day * DAY_US + i
    payload = to_record({"id": f"r{i}", "ts": et / 1e6, "n": i,
                         "v": np.array([i, 0.5], np.float32) if i % 2 else None}).SerializeToString()
    row = history.encode(1, 0, et, None, False, "", payload)
    return PutOp(1, record_key(1, f"r{i}"), et, None, payload, row)


class CrashAfterFiles(ParquetOfflineWriter):
    """Writes the files of a range, then dies before the outbox is trimmed."""

    def write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().write(*args, **kwargs)
        raise RuntimeError("crash")


def read_all(root: Path) -> list[dict]:
    rows = []
    for f in sorted(root.glob("g/event_date=*/*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def test_interrupted_flush_is_replayed_without_duplicates(tmp_path: Path) -> None:
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    store.write([put(i, day=i % 3) for i in range(100)])
    lookup = {1: (GROUP, False)}.get
    crashing = OutboxFlusher(rocks, store, CrashAfterFiles(tmp_path / "off"), lookup, 60, 1000)
    with pytest.raises(RuntimeError):
        crashing.flush_once()
    assert len(read_all(tmp_path / "off")) == 100  # files are there, the outbox was not trimmed
    store.write([put(i) for i in range(100, 120)])  # more commits after the crash
    store.close()
    rocks.close()
    del store, rocks, crashing
    gc.collect()

    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    assert store.last_seq == 120
    flusher = OutboxFlusher(rocks, store, ParquetOfflineWriter(tmp_path / "off"), lookup, 60, 1000)
    flusher.start()  # replays the interrupted range [1, 100], then flushes [101, 120]
    flusher.stop()
    rows = read_all(tmp_path / "off")
    assert sorted(r["tessera_seq"] for r in rows) == list(range(1, 121))
    assert flusher.pending() == 0 and flusher.flushed_seq == 120
    by_seq = {r["tessera_seq"]: r for r in rows}
    assert by_seq[4]["n"] == 3 and by_seq[4]["v"] == [3.0, 0.5] and by_seq[3]["v"] is None
    assert {f.parent.name for f in (tmp_path / "off").glob("g/*/*.parquet")} == {
        "event_date=1970-01-01", "event_date=1970-01-02", "event_date=1970-01-03"}
    assert not list((tmp_path / "off").rglob(".*.tmp"))
    store.close()
    rocks.close()


def test_flush_writes_at_most_max_rows_per_file_range(tmp_path: Path) -> None:
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    store.write([put(i) for i in range(25)])
    flusher = OutboxFlusher(rocks, store, ParquetOfflineWriter(tmp_path / "off"),
                            {1: (GROUP, False)}.get, 60, 10)
    assert flusher.flush_all() == 25
    names = sorted(f.name for f in (tmp_path / "off").glob("g/*/*.parquet"))
    assert names == [f"part-{a:020d}-{b:020d}.parquet" for a, b in ((1, 10), (11, 20), (21, 25))]
    store.close()
    rocks.close()
