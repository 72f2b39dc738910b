"""A group with aggregations on the PutRecords bulk path (server/put_batch.py): its PutBatch carries
the records' aggregation inputs in columns, and the store's commit folds them exactly as it folds
the same records put one by one (`put_op`, one AggregateEvent each): the same results, the same
bytes in every column family (tiles included), the same aggregate reads. Records older than the
stored one (still events), expired stored records, events too late for the lateness bound (dropped
by the fold), a record id twice in one batch, null key features and null sources, history on and
off; in this process (the writer thread) and through a real writer process (the batch crosses its
socket as a WireBatch naming its plan; the writer rebuilds the columns)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation.plan import AggregationPlan
from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition
from tessera.core.keys import aggregate_key
from tessera.core.records import load_compiled_validation, validate_record
from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import online_store, put_batch
from tessera.server import writer_ipc as ipc
from tessera.server.aggregates import TileCache, ensure_kernels, read_features
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.rocksdb import open_rocksdb
from tessera.server.store import OnlineStore, Op, PutBatch
from tessera.server.writes import put_op
from tests.unit.server.test_online_store_contract import process_store

G = 7
API_US = 1_700_000_000_000_000
NOW_S = 1_800_000_000.0  # the commits' "now" in this process (online_store.now_us patched)
NOW_US = int(NOW_S * 1e6)
IDS = ("a", "b", "c", "d")
KEYS = ("k1", "k2")


def _schema(offline: bool, ttl: bool, online: bool = True) -> CompiledSchema:
    extra: dict[str, object] = {}
    if not online:
        extra["online_store_config"] = {"enable_online_store": False}
    if ttl:  # 1 minute: a record 2 minutes older than now is stored expired
        extra["online_store_config"] = {"ttl_duration": {"unit": "Minutes", "value": 1}}
    definition = FeatureGroupDefinition(
        feature_group_name="agg", record_identifier_feature_name="id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in (
            ("id", "String"), ("ts", "Fractional"), ("x", "Fractional"), ("n", "Integral"),
            ("s", "String"), ("note", "String"))],
        offline_store_config={"enable_offline_store": offline},
        aggregations=[
            AggregationDefinition(name="cnt_1h", function="count", window="1h"),
            AggregationDefinition(name="x_sum_1d", function="sum", source="x", window="1d"),
            AggregationDefinition(name="x_mean_1d", function="mean", source="x", window="1d"),
            AggregationDefinition(name="x_min_1h", function="min", source="x", window="1h"),
            AggregationDefinition(name="n_max_1h", function="max", source="n", window="1h"),
            AggregationDefinition(name="x_last_1d", function="last", source="x", window="1d"),
            AggregationDefinition(name="n_last3_1d", function="last_n", source="n", n=3,
                                  window="1d", key="s"),
            AggregationDefinition(name="s_cnt_1h", function="count", window="1h", key="s"),
        ],
        aggregation_config=AggregationConfig(tile_size="1m", lateness="1h"),
        **extra,  # type: ignore[arg-type]
    )
    return CompiledSchema.of(FeatureGroup(definition=definition, feature_group_id=G,
                                          creation_time=0.0, last_modified_time=0.0))


#: One put: (record id, seconds before now: 0-10,000 s, so some are past the 1 h lateness
#: bound and some stored records expire, x (None: absent), n (None: absent), key s (None: absent)).
_PUT = st.tuples(
    st.sampled_from(IDS), st.integers(0, 10_000),
    st.none() | st.sampled_from([0.0, -1.5, 2.25, 1e6]),
    st.none() | st.integers(-3, 3),
    st.none() | st.sampled_from(KEYS),
)


_Put = tuple[str, int, float | None, int | None, str | None]


def _request(puts: list[_Put], now_s: float = NOW_S) -> bytes:
    req = pb.PutRecordsRequest(feature_group_name="agg")
    for rid, age_s, x, n, s in puts:
        record = req.records.add()
        record.features.add(feature_name="id", string_value=rid)
        record.features.add(feature_name="ts", float_value=now_s - age_s - 0.25)
        if x is not None:
            record.features.add(feature_name="x", float_value=x)
        if n is not None:
            record.features.add(feature_name="n", int_value=n)
        if s is not None:
            record.features.add(feature_name="s", string_value=s)
        record.features.add(feature_name="note", string_value="é" * (age_s % 3))
    return req.SerializeToString()


def _one_by_one(schema: CompiledSchema, data: bytes) -> list[Op]:
    req = pb.PutRecordsRequest.FromString(data)
    return [put_op(schema, validate_record(schema, r), API_US, "") for r in req.records]


def _batch(schema: CompiledSchema, data: bytes) -> PutBatch:
    request = put_batch.scan(data)
    assert request is not None
    batch = put_batch.encode(schema, data, request, API_US)
    assert batch is not None and batch.aggregates is not None
    return batch


@contextlib.contextmanager
def _rocksdb_store(path: Path) -> Iterator[RocksDBOnlineStore]:
    rocks = open_rocksdb(path, block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    try:
        yield store
    finally:
        store.close()
        rocks.close()


def _aggregate_keys(schema: CompiledSchema) -> list[bytes]:
    return ([aggregate_key(G, 0, rid) for rid in IDS]
            + [aggregate_key(G, 1, k) for k in KEYS])


def _reads(schema: CompiledSchema, tiles: list[bytes | None], now_us: int) -> list[bytes]:
    """Every aggregation of every record id and key as of now, encoded (the read path's form)."""
    plan = schema.aggregations
    assert plan is not None
    by_id, by_key = tiles[: len(IDS)], tiles[len(IDS):]
    n = len(IDS)
    return (read_features(plan, [by_id, [by_key[0]] * n], [[True] * n, [True] * n], now_us)
            + read_features(plan, [[by_id[0]] * len(KEYS), by_key],
                            [[True] * len(KEYS)] * 2, now_us))


def test_an_aggregation_group_takes_the_bulk_path_with_its_inputs() -> None:
    assert load_compiled_validation()
    schema = _schema(offline=True, ttl=False)
    data = _request([("a", 5, 1.5, 2, "k1"), ("b", 7, None, None, None), ("a", 9, -1.5, 3, "k2")])
    batch = _batch(schema, data)
    columns = batch.aggregates
    assert columns is not None and columns.group_name == "agg"
    events = [op.aggregate for op in _one_by_one(schema, data)]  # type: ignore[union-attr]
    for sid, stream in enumerate(columns.plan.streams):
        assert list(columns.keys[sid]) == [e.inputs.keys[sid] for e in events if e]
        expected = np.array([e.inputs.values[sid] for e in events if e], np.float64)
        np.testing.assert_array_equal(columns.values[sid], expected.reshape(-1, stream.n_sources))


def test_a_group_without_an_online_store_carries_no_inputs() -> None:
    offline_only = _schema(offline=True, ttl=False, online=False)
    data = _request([("a", 5, 1.5, 2, "k1")])
    request = put_batch.scan(data)
    assert request is not None
    batch = put_batch.encode(offline_only, data, request, API_US)
    assert batch is not None and batch.aggregates is None and not batch.online


@settings(max_examples=15, deadline=None)
@given(commits=st.lists(st.lists(_PUT, min_size=1, max_size=12), min_size=1, max_size=4),
       offline=st.booleans(), ttl=st.booleans())
def test_a_batch_folds_as_its_records_one_by_one(
    commits: list[list[_Put]], offline: bool,
    ttl: bool, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ensure_kernels()
    schema = _schema(offline, ttl)
    commits = [[("d", 1, 1.0, 1, "k1"), *commits[0]], *commits[1:]]  # one event surely kept
    runs = []
    for as_batch in (False, True):
        path = tmp_path_factory.mktemp("db")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(online_store, "now_us", lambda: NOW_US)
            with _rocksdb_store(path) as store:
                results = []
                for puts in commits:
                    data = _request(puts)
                    ops: list[Op] = ([_batch(schema, data)] if as_batch
                                     else _one_by_one(schema, data))
                    results.append(store.write(ops))
                rocks = store._rocks
                contents = {name: list(getattr(rocks, name).items())
                            for name in ("records", "expiry", "outbox", "aggregates")}
                tiles = store.get_aggregates(_aggregate_keys(schema))
                runs.append((results, contents, _reads(schema, tiles, NOW_US)))
    assert runs[0] == runs[1]
    assert runs[0][1]["aggregates"]


def test_a_batch_through_the_writer_process_folds_as_one_by_one(tmp_path: Path) -> None:
    """The batch crosses the writer socket (WireBatch + WirePlan); event times sit far from
    tile and lateness boundaries, so two commits a few milliseconds apart fold alike."""
    ensure_kernels()
    schema = _schema(offline=True, ttl=False)
    now_s = math.floor(online_store.now_us() / 60e6) * 60 + 30  # mid-minute
    commits: list[list[_Put]] = [
        [("a", 100, 1.0, 1, "k1"), ("b", 200, 2.0, None, "k2"), ("a", 50, None, 2, "k1")],
        [("a", 300, 5.0, 3, None), ("c", 7200, 9.0, 4, "k1"), ("a", 100, 1.0, 1, "k2"),
         ("d", 10, None, None, None)],
    ]
    got = []
    for as_batch in (False, True):
        stores: contextlib.AbstractContextManager[OnlineStore] = process_store(
            tmp_path / ("batch" if as_batch else "ops"))
        with stores as store:
            results = []
            seq = 0
            for puts in commits:
                data = _request(puts, now_s)
                ops: list[Op] = ([_batch(schema, data)] if as_batch
                                 else _one_by_one(schema, data))
                committed = store.submit(ops).result(timeout=30)
                results.append(committed.results)
                seq = committed.seq
            assert store.wait_visible(seq, 10)
            tiles = store.get_aggregates(_aggregate_keys(schema))
            got.append((results, tiles, _reads(schema, tiles, int(now_s * 1e6))))
    assert got[0] == got[1]
    assert got[0][0] == [[True, True, True], [False, True, False, True]]
    # c's only event is past the lateness bound: dropped, no tiles
    assert [t is not None for t in got[0][1]] == [True, True, False, True, True, True]


def test_a_batchs_inputs_are_rebuilt_by_the_writer_from_its_payloads() -> None:
    """A WireBatch carries no inputs, only its plan's number; the plan crosses once per
    connection; the writer's columns equal the serving side's."""
    schema = _schema(offline=True, ttl=False)
    batch = _batch(schema, _request([("a", 5, 1.5, 2, "k1"), ("b", 7, None, None, None)]))
    numbers, sent = ipc.PlanNumbers(), set[int]()
    plans: dict[int, tuple[str, AggregationPlan]] = {}
    for round_ in range(2):
        msg = ipc.request_decoder.decode(ipc.encode_submit(round_, [batch], numbers, sent)[4:])
        assert isinstance(msg, ipc.Submit) and len(msg.plans) == (1 if round_ == 0 else 0)
        (got,) = ipc.decode_ops(msg, plans)
        assert isinstance(got, PutBatch) and got.aggregates is not None
        assert batch.aggregates is not None
        assert got.aggregates.group_name == "agg"
        assert [list(k) for k in got.aggregates.keys] == [list(k) for k in batch.aggregates.keys]
        for a, b in zip(got.aggregates.values, batch.aggregates.values, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_batch_naming_a_plan_never_sent_is_refused() -> None:
    batch = _batch(_schema(offline=False, ttl=False), _request([("a", 5, 1.5, 2, "k1")]))
    wire = ipc.batch_to_wire(batch)
    wire.plan_no = 9
    with pytest.raises(ValueError, match="plan 9"):
        ipc.batch_from_wire(wire, {})


# --- the writer's tile cache ---------------------------------------------------------------------


def test_the_tile_cache_reads_what_it_holds_and_loads_the_rest_in_one_call() -> None:
    cache = TileCache(max_bytes=3 * (TileCache.ENTRY_OVERHEAD + 2 + 10))
    cache.update({b"k1": b"1" * 10, b"k2": b"2" * 10, b"gone": None})
    calls: list[list[bytes]] = []

    def load(keys: list[bytes]) -> list[bytes | None]:
        calls.append(keys)
        return [b"db:" + k if k != b"k4" else None for k in keys]

    assert cache.read([b"k3", b"k1", b"k4", b"k2"], load) == [
        b"db:k3", b"1" * 10, None, b"2" * 10]
    assert calls == [[b"k3", b"k4"]] and (cache.hits, cache.misses) == (2, 2)
    cache.update({b"k3": b"3" * 10, b"k1": b"x" * 10})  # k2 is now the least recently written
    cache.update({b"k5": b"5" * 10})
    assert len(cache) == 3 and cache.size_bytes <= cache.max_bytes
    assert cache.read([b"k2"], load) == [b"db:k2"]  # evicted
    cache.update({b"k1": None})  # deleted
    assert cache.read([b"k1", b"k3", b"k5"], load) == [b"db:k1", b"3" * 10, b"5" * 10]
    cache.clear()
    assert len(cache) == 0 and cache.size_bytes == 0


def test_folds_through_the_tile_cache_equal_folds_without_it(tmp_path: Path) -> None:
    """Several commits over the same keys (the later ones read their tiles from the cache),
    a group dropped in between (the cache forgets, the tiles are gone), a cache too small for
    every key: the same stored tiles as a writer that reads every tile from RocksDB."""
    ensure_kernels()
    schema = _schema(offline=True, ttl=False)
    commits: list[list[_Put]] = [
        [("a", 10, 1.0, 1, "k1"), ("b", 20, 2.0, 2, "k2")],
        [("a", 5, 3.0, 3, "k2"), ("c", 30, None, None, "k1")],
        [("b", 1, 4.0, 4, None), ("a", 2, 5.0, 5, "k1"), ("d", 3, 6.0, 6, "k2")],
    ]
    got = []
    for label, cache_mb in (("none", 0), ("small", 1), ("default", 128)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(online_store, "now_us", lambda: NOW_US)
            rocks = open_rocksdb(tmp_path / label, block_cache_mb=8, write_buffer_mb=4)
            store = RocksDBOnlineStore(rocks, tile_cache_mb=cache_mb)
            if label == "small":
                store.tiles.max_bytes = 3_000  # about one key's tiles
            try:
                states = []
                for round_ in range(2):
                    for puts in commits:
                        store.write([_batch(schema, _request(puts))])
                        states.append(list(rocks.aggregates.items()))
                    if round_ == 0:
                        store.drop_group(G).result(timeout=30)
                        assert len(store.tiles) == 0 and list(rocks.aggregates.items()) == []
                if cache_mb:
                    assert store.tiles.hits > 0 and store.tiles.misses > 0
                    assert store.tiles.size_bytes <= store.tiles.max_bytes
                got.append(states)
            finally:
                store.close()
                rocks.close()
    assert got[0] == got[1] == got[2]
