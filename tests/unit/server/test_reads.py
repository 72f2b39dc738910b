"""The read path on domain types (server/reads.py) over a real registry and RocksDB store: stored
bytes returned as stored, the feature filter, and per-id errors of a batch read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core.errors import (
    FeatureGroupNotFoundError,
    InvalidRequestError,
    PreconditionFailedError,
)
from tessera.core.records import validate_record
from tessera.core.schema import FeatureDefinition, FeatureGroupDefinition, OnlineStoreConfig
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.reads import OnlineReader, feature_filter
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import RocksDB, open_rocksdb
from tessera.server.store import now_us
from tessera.server.writes import put_op

FEATURES = {"user_id": "Integral", "ts": "Fractional", "clicks": "Integral", "name": "String"}


def definition(name: str, online: bool = True) -> FeatureGroupDefinition:
    return FeatureGroupDefinition(
        feature_group_name=name, record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in FEATURES.items()],
        online_store_config=OnlineStoreConfig(enable_online_store=online),
    )


@pytest.fixture
def rocks(tmp_path: Path) -> Iterator[RocksDB]:
    db = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    yield db
    db.close()


@pytest.fixture
def registry(rocks: RocksDB) -> FeatureGroupRegistry:
    return FeatureGroupRegistry(rocks)


@pytest.fixture
def reader(rocks: RocksDB, registry: FeatureGroupRegistry) -> Iterator[OnlineReader]:
    store = RocksDBOnlineStore(rocks)
    registry.create(definition("users"))
    registry.create(definition("archive", online=False))
    schema = registry.schema("users")
    ops = [
        put_op(schema, validate_record(schema, to_record(
            {"user_id": uid, "ts": 1.7e9, "clicks": uid * 10, "name": f"n{uid}"})), 0, "")
        for uid in (1, 2, 3)
    ]
    store.write(list(ops))
    try:
        yield OnlineReader(registry, store)
    finally:
        store.close()


def features(payload: memoryview) -> dict[str, object]:
    record = pb.Record.FromString(bytes(payload))
    return {fv.feature_name: getattr(fv, fv.WhichOneof("value")) for fv in record.features}


def test_get_record_returns_the_stored_bytes_untouched(reader: OnlineReader) -> None:
    hit = reader.get_record("users", "2", [], now_us())
    assert hit is not None and hit[1] is None
    assert features(hit[0]) == {"user_id": 2, "ts": 1.7e9, "clicks": 20, "name": "n2"}
    assert reader.get_record("users", "9", [], now_us()) is None


def test_get_record_normalizes_the_record_id(reader: OnlineReader) -> None:
    hit = reader.get_record("users", "002", [], now_us())
    assert hit is not None and features(hit[0])["user_id"] == 2


def test_a_feature_filter_keeps_only_the_named_features(reader: OnlineReader) -> None:
    hit = reader.get_record("users", "1", ["clicks", "name"], now_us())
    assert hit is not None and features(hit[0]) == {"clicks": 10, "name": "n1"}


def test_get_record_refusals(reader: OnlineReader) -> None:
    with pytest.raises(FeatureGroupNotFoundError):
        reader.get_record("nope", "1", [], now_us())
    with pytest.raises(PreconditionFailedError, match="no online store"):
        reader.get_record("archive", "1", [], now_us())
    with pytest.raises(InvalidRequestError, match="not an Integral"):
        reader.get_record("users", "x", [], now_us())
    with pytest.raises(InvalidRequestError, match="feature 'ctr' is not in group 'users'"):
        reader.get_record("users", "1", ["ctr"], now_us())


def test_batch_get_record_answers_found_ids_in_order_and_errors_per_id(
    reader: OnlineReader,
) -> None:
    read = reader.batch_get_record("users", ["3", "x", "9", "1"], ["clicks"], now_us())
    assert [(rid, features(hit[0])) for rid, hit in read.found] == [
        ("3", {"clicks": 30}), ("1", {"clicks": 10})
    ]
    assert [(rid, exc.grpc_code) for rid, exc in read.errors] == [("x", "INVALID_ARGUMENT")]


@pytest.mark.parametrize(
    ("group", "names", "code"),
    [("nope", [], "NOT_FOUND"), ("archive", [], "FAILED_PRECONDITION"),
     ("users", ["ctr"], "INVALID_ARGUMENT")],
)
def test_a_group_level_refusal_fails_every_id_of_the_group(
    reader: OnlineReader, group: str, names: list[str], code: str
) -> None:
    read = reader.batch_get_record(group, ["1", "2"], names, now_us())
    assert read.found == []
    assert [(rid, exc.grpc_code) for rid, exc in read.errors] == [("1", code), ("2", code)]


def test_the_filter_of_a_group_without_aggregations(
    registry: FeatureGroupRegistry, reader: OnlineReader
) -> None:
    schema = registry.schema("users")
    assert feature_filter(schema, []).plain
    filt = feature_filter(schema, ["clicks"])
    assert filt.names == {"clicks"} and filt.aggregates is None and not filt.plain
