"""The embedded ingest sink's columnar write: a prepared batch becomes ONE PutBatch whose keys,
payloads and history rows are, record for record, what the per-record `put_op` makes; and in a
real RocksDB store a batch mixing good and bad messages, several key orders and per-message
records writes exactly its good records (readable, in order), its history rows carrying their
Kafka sources."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition
from tessera.core.keys import record_key
from tessera.core.schema import CompiledSchema, FeatureDefinition, FeatureGroupDefinition
from tessera.core.values import from_record
from tessera.ingest import config_from_dict, json_batch
from tessera.ingest.batch import Preparer
from tessera.ingest.columns import RecordColumns
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.ingest_sink import EmbeddedSink, put_batch
from tessera.server.online_store import RocksDBOnlineStore, now_us
from tessera.server.outbox import read_rows
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import RocksDB, open_rocksdb
from tessera.server.store import PutBatch, PutOp
from tessera.server.writes import put_op
from tests.unit.ingest.fakes import FakeMessage
from tests.unit.ingest.test_json_batch import SCHEMAS, TOPIC, group_schema, mixed_batch, objects

pytestmark = pytest.mark.skipif(not json_batch.load(), reason="needs Numba")

KEYED = config_from_dict({"bootstrap_servers": "x", "topics": [
    {"topic": "t", "feature_group": "users", "record_id": "key"}]}).topics[0]


def split(blob: bytes | None, offsets: Any) -> list[bytes]:
    assert blob is not None and offsets is not None
    bounds = offsets.tolist()
    return [blob[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def assert_same_writes(batch: PutBatch, ops: list[PutOp]) -> None:
    assert len(batch) == len(ops)
    assert split(batch.keys, batch.key_offsets) == [op.key for op in ops]
    assert split(batch.payloads, batch.payload_offsets) == [op.payload for op in ops]
    assert batch.event_time_us.tolist() == [op.event_time_us for op in ops]
    if batch.expires_at_us is None:
        assert all(op.expires_at_us is None for op in ops)
    else:
        assert batch.expires_at_us.tolist() == [op.expires_at_us for op in ops]
    if batch.history is None:
        assert all(op.history is None for op in ops)
    else:
        assert split(batch.history, batch.history_offsets) == [op.history for op in ops]
    assert {batch.group_id} == {op.group_id for op in ops} and batch.online


def messages_of(objs: list[dict[str, Any]]) -> list[FakeMessage]:
    return [FakeMessage(json.dumps(o).encode(), partition=i % 3, offset=1000 + i)
            for i, o in enumerate(objs)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(objects, st.integers(0, 3)), min_size=1, max_size=40),
       st.sampled_from(sorted(SCHEMAS)), st.sampled_from([None, 60.0]))
def test_a_batch_is_one_put_batch_writing_what_put_op_writes_record_by_record(
        batch: list[tuple[dict[str, Any], int]], which: str, ttl_s: float | None) -> None:
    schema = SCHEMAS[which]
    objs = []
    for obj, seed in batch:  # a few key orders in one batch
        keys = list(obj)
        random.Random(seed).shuffle(keys)
        objs.append({k: obj[k] for k in keys})
    topic = TOPIC.model_copy(update={"ttl_s": ttl_s})
    prepared = Preparer(topic, 1 << 20).prepare(messages_of(objs), schema)
    if not len(prepared.records):
        return
    api_us = now_us()
    assert_same_writes(put_batch(schema, prepared.records, api_us),
                       [put_op(schema, r.validated, api_us, r.source) for r in prepared.records])


def test_records_given_one_by_one_make_the_same_put_batch() -> None:
    """The per-message path (a topic taking the record identifier from the message key) and
    a batch without history."""
    no_history = dataclasses.replace(group_schema(), offline=False)
    msgs = [FakeMessage(json.dumps({"ts": 1.7e9 + i, "clicks": i}).encode(), offset=i,
                        key=f"k{i % 7}".encode()) for i in range(30)]
    for schema in (group_schema(), no_history):
        prepared = Preparer(KEYED, 1 << 20).prepare(msgs, schema)
        assert len(prepared.records) == 30 and not prepared.dead
        api_us = now_us()
        batch = put_batch(schema, prepared.records, api_us)
        assert_same_writes(batch, [put_op(schema, r.validated, api_us, r.source)
                                   for r in prepared.records])
        again = RecordColumns.of(list(prepared.records))  # the columns of the records
        assert_same_writes(put_batch(schema, again, api_us),
                           [put_op(schema, r.validated, api_us, r.source)
                            for r in prepared.records])


# --- into a real RocksDB store ------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[FeatureGroupRegistry, RocksDBOnlineStore, RocksDB]]:
    rocks = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    online = RocksDBOnlineStore(rocks)
    registry = FeatureGroupRegistry(rocks)
    yield registry, online, rocks
    online.close()
    rocks.close()


class CountingStore:
    """The store, counting the operations submitted to it."""

    def __init__(self, inner: RocksDBOnlineStore) -> None:
        self.inner = inner
        self.ops: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def submit(self, ops: list[Any]) -> Any:
        self.ops += ops
        return self.inner.submit(ops)


def read(online: RocksDBOnlineStore, schema: CompiledSchema, rid: str) -> dict[str, Any] | None:
    hit = online.get(record_key(schema.group_id, rid), now_us())
    return None if hit is None else from_record(pb.Record.FromString(bytes(hit[0])))


def group_definition() -> FeatureGroupDefinition:
    """`group_schema()`'s group, to create in a registry."""
    return FeatureGroupDefinition(
        feature_group_name="users", record_identifier_feature_name="user_id",
        event_time_feature_name="ts", feature_definitions=[
            FeatureDefinition.of(n, t) for n, t in (
                ("user_id", "String"), ("ts", "Fractional"), ("clicks", "Integral"),
                ("ctr", "Fractional"), ("country", "String"))])


def test_a_mixed_batch_writes_its_good_records_in_one_operation_and_leaves_the_bad_ones(
    store: tuple[FeatureGroupRegistry, RocksDBOnlineStore, RocksDB],
) -> None:
    registry, online, rocks = store
    registry.create(group_definition())
    schema = registry.schema("users")
    msgs = mixed_batch()  # 40 good (two partitions) and 10 bad, interleaved
    # Two more key orders in the same batch, and a record written twice (the later one wins).
    extra = [{"ts": 1.7e9 + 100, "user_id": "v1", "clicks": 1},
             {"country": "de", "user_id": "v2", "ts": 1.7e9 + 100},
             {"user_id": "u3", "ts": 1.7e9 + 3, "clicks": 333, "ctr": 0.5, "country": "fr"}]
    msgs += [FakeMessage(json.dumps(o).encode(), partition=1, offset=100 + i)
             for i, o in enumerate(extra)]
    prepared = Preparer(TOPIC, max_message_bytes=1500).prepare(msgs, schema)
    assert len(prepared.records) == 43 and len(prepared.dead) == 10
    counting = CountingStore(online)
    EmbeddedSink(registry, counting).write(schema, prepared.records, None)  # type: ignore[arg-type]
    assert len(counting.ops) == 1 and isinstance(counting.ops[0], PutBatch)
    for i in range(40):
        want_clicks = 333 if i == 3 else i
        assert read(online, schema, f"u{i}") == {
            "user_id": f"u{i}", "ts": 1.7e9 + i, "clicks": want_clicks, "ctr": 0.5,
            "country": "fr"}
    assert read(online, schema, "v1") == {"ts": 1.7e9 + 100, "user_id": "v1", "clicks": 1}
    assert read(online, schema, "v2") == {"country": "de", "user_id": "v2", "ts": 1.7e9 + 100}
    assert read(online, schema, "x") is None  # every bad message used that id
    # The history rows: one per good record, in the batch's order, with its Kafka source.
    rows = read_rows(rocks.outbox, 1, 1000).rows()
    assert [(r.source, r.payload, r.event_time_us) for r in rows] == [
        (r.source, r.validated.payload, r.validated.event_time_us) for r in prepared.records]
    assert [r.source for r in rows][:3] == ["kafka:t/0/0", "kafka:t/1/2", "kafka:t/0/4"]


def test_an_aggregated_group_is_one_put_batch_folding_what_records_one_by_one_fold(
    tmp_path: Path,
) -> None:
    definition = FeatureGroupDefinition(
        feature_group_name="agg", record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in (
            ("user_id", "String"), ("ts", "Fractional"), ("clicks", "Integral"),
            ("country", "String"))],
        aggregations=[
            AggregationDefinition(name="cnt_1h", function="count", window="1h"),
            AggregationDefinition(name="clicks_sum_1d", function="sum", source="clicks",
                                  window="1d"),
            AggregationDefinition(name="clicks_last3_1d", function="last_n", source="clicks",
                                  n=3, window="1d", key="country"),
        ],
        aggregation_config=AggregationConfig(tile_size="1m", lateness="1h"),
    )
    t0 = time.time() - 600  # recent: no event is past the lateness bound
    msgs = [FakeMessage(json.dumps({"user_id": f"u{i % 7}", "ts": t0 + i, "clicks": i,
                                    "country": "fr" if i % 3 else "de"}).encode(), offset=i)
            for i in range(60)]
    topic = TOPIC.model_copy(update={"feature_group": "agg"})
    stored = {}
    for columnar in (True, False):
        rocks = open_rocksdb(tmp_path / f"db-{columnar}", block_cache_mb=8, write_buffer_mb=4)
        online = RocksDBOnlineStore(rocks)
        try:
            registry = FeatureGroupRegistry(rocks)
            registry.create(definition)
            schema = registry.schema("agg")
            prepared = Preparer(topic, 1 << 20).prepare(msgs, schema)
            assert len(prepared.records) == 60
            counting = CountingStore(online)
            records = prepared.records if columnar else list(prepared.records)
            EmbeddedSink(registry, counting).write(  # type: ignore[arg-type]
                schema, records, None)
            assert [type(op) for op in counting.ops] == (
                [PutBatch] if columnar else [PutOp] * 60)
            stored[columnar] = (dict(rocks.records.items()), dict(rocks.aggregates.items()))
        finally:
            online.close()
            rocks.close()
    assert stored[True] == stored[False]
    assert len(stored[True][0]) == 7 and len(stored[True][1]) >= 3  # tiles were folded
