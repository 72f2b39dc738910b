"""The outbox -> Parquet conversion: the compiled column-wise decoder (`batch_to_table`) gives
the same Arrow table and the same Parquet bytes as the per-row protobuf reference
(`rows_to_table`), on random rows: nulls, empty and non-empty lists, vectors, int64 extremes,
unicode, deletes, sources, expiries; and payloads it leaves to protobuf fall back to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core.schema import FeatureDefinition, FeatureGroup, FeatureGroupDefinition
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import history
from tessera.server.offline_writer import (
    ParquetOfflineWriter,
    _compiled_table,
    batch_to_table,
    rows_to_table,
    write_parquet_atomically,
)

TYPES = {
    "id": "String", "ts": "Fractional", "n": "Integral", "x": "Fractional", "s": "String",
    "li": "List[Integral]", "lf": "List[Fractional]", "ls": "List[String]",
    "si": "Set[Integral]", "v": "Vector[3]", "üñí": "String",
}
GROUP = FeatureGroup(
    definition=FeatureGroupDefinition(
        feature_group_name="g", record_identifier_feature_name="id", event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in TYPES.items()],
    ),
    feature_group_id=7, creation_time=0, last_modified_time=0,
)
DAY_US = 86_400_000_000
MAX_TIME_US = 253_402_300_799_000_000  # 9999-12-31: Python's datetime reads it (to_pylist)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)
F64 = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=12)


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.none() | strategy


ROW_VALUES = st.fixed_dictionaries({
    "id": TEXT.filter(bool),
    "n": _maybe(I64),
    "x": _maybe(F64),
    "s": _maybe(TEXT),
    "li": _maybe(st.lists(I64, max_size=4)),
    "lf": _maybe(st.lists(F64, max_size=4)),
    "ls": _maybe(st.lists(TEXT, max_size=4)),
    "si": _maybe(st.lists(I64, max_size=4, unique=True)),
    "v": _maybe(st.lists(st.floats(width=32, allow_nan=False), min_size=3, max_size=3)),
    "üñí": _maybe(TEXT),
})
ROW_META = st.tuples(
    st.integers(-3 * DAY_US, 3 * DAY_US),  # event time: several days, before and after 1970
    st.integers(0, MAX_TIME_US),  # write time
    st.integers(0, MAX_TIME_US),  # api invocation time
    _maybe(st.integers(0, MAX_TIME_US)),  # expires at
    st.booleans(),  # deleted
    TEXT,  # source ("" reads as null)
)


def _payload(values: dict, et_us: int, shuffle: int) -> bytes:
    rec = dict(values, ts=et_us / 1e6)
    if rec["v"] is not None:
        rec["v"] = np.array(rec["v"], np.float32)
    for name in ("li", "lf", "ls", "si"):  # an empty list stays a list of the schema's type
        if rec[name] == []:
            rec[name] = None
    record = to_record(rec)
    for name, kind in (("li", "int_list"), ("lf", "float_list"), ("ls", "string_list"),
                       ("si", "int_list")):
        if values[name] == []:
            getattr(record.features.add(feature_name=name), kind).SetInParent()
    features = list(record.features)
    if shuffle:  # features in any order
        features = features[shuffle % len(features):] + features[: shuffle % len(features)]
    out = pb.Record()
    out.features.extend(features)
    return out.SerializeToString()


def _batch(rows: list[tuple[dict, tuple, int]], first_seq: int = 1) -> history.HistoryBatch:
    stored = []
    for values, (et, wt, api, exp, deleted, source), shuffle in rows:
        row = history.encode(GROUP.feature_group_id, api, et, exp, deleted, source,
                             _payload(values, et, shuffle))
        stored.append(history.with_write_time(wt, row))
    return history.decode_batch(list(range(first_seq, first_seq + len(rows))), stored)


def _parquet_bytes(table, path: Path) -> bytes:  # type: ignore[no-untyped-def]
    write_parquet_atomically(table, path)
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(ROW_VALUES, ROW_META, st.integers(0, 20)), min_size=1, max_size=25))
def test_compiled_conversion_equals_the_protobuf_reference(tmp_path: Path, rows: list) -> None:
    batch = _batch(rows)
    picked = np.arange(len(batch))
    reference = rows_to_table(GROUP, batch.rows())
    compiled = _compiled_table(GROUP, batch, picked)  # raises if it fell back
    assert compiled.schema == reference.schema
    assert compiled.equals(reference)
    assert compiled.to_pylist() == reference.to_pylist()
    assert _parquet_bytes(compiled, tmp_path / "a.parquet") == _parquet_bytes(
        reference, tmp_path / "b.parquet")
    # A subset (as the writer picks a group's rows of one day), in commit order.
    some = picked[::2]
    assert batch_to_table(GROUP, batch, some).equals(rows_to_table(GROUP, batch.rows(some)))


def test_batch_rows_equal_decode_of_each_row() -> None:
    values = {"id": "a", "n": 1, "x": None, "s": "é", "li": [], "lf": None, "ls": ["x"],
              "si": None, "v": None, "üñí": None}
    stored = [history.with_write_time(5, history.encode(7, 1, 2, None, False, "kafka:t/0/1",
                                                        _payload(values, 2, 0))),
              history.with_write_time(6, history.encode(7, 3, 4, 99, True, "", b""))]
    batch = history.decode_batch([10, 11], stored)
    assert batch.rows() == [history.decode(10, stored[0]), history.decode(11, stored[1])]
    assert batch.source_lengths.tolist() == [11, 0]
    assert batch.is_deleted.tolist() == [False, True]


def _raw(record: pb.Record) -> bytes:
    return record.SerializeToString()


@pytest.mark.parametrize("payload", [
    # a feature given twice: protobuf's reading (the last value wins) decides
    _raw(pb.Record(features=[pb.FeatureValue(feature_name="n", int_value=1),
                             pb.FeatureValue(feature_name="id", string_value="a"),
                             pb.FeatureValue(feature_name="n", int_value=2)])),
    # an int where the schema has a Fractional
    _raw(pb.Record(features=[pb.FeatureValue(feature_name="id", string_value="a"),
                             pb.FeatureValue(feature_name="x", int_value=3)])),
    # an unpacked repeated field (protobuf reads both encodings)
    _raw(pb.Record(features=[pb.FeatureValue(feature_name="id", string_value="a")]))
    + b"\x0a\x08\x0a\x02li\x2a\x02\x08\x05",
    # a feature this schema version does not have, and one without a value
    _raw(pb.Record(features=[pb.FeatureValue(feature_name="gone", int_value=1),
                             pb.FeatureValue(feature_name="s"),
                             pb.FeatureValue(feature_name="id", string_value="a")])),
])
def test_payloads_left_to_protobuf_give_the_reference_table(payload: bytes) -> None:
    stored = [history.with_write_time(1, history.encode(7, 1, 2, None, False, "", payload))]
    batch = history.decode_batch([1], stored)
    picked = np.arange(1)
    assert batch_to_table(GROUP, batch, picked).equals(rows_to_table(GROUP, batch.rows()))


def test_writer_splits_groups_and_days_like_the_reference(tmp_path: Path) -> None:
    values = {"id": "a", "n": 1, "x": 0.5, "s": None, "li": None, "lf": [1.5], "ls": None,
              "si": None, "v": [1, 2, 3], "üñí": "ü"}
    rows = [(dict(values, id=f"r{i}"), (i % 3 * DAY_US + i, i, i, None, False, ""), i)
            for i in range(30)]
    batch = _batch(rows, first_seq=5)
    writer = ParquetOfflineWriter(tmp_path / "new")
    assert writer.write(batch, 5, 34, {7: (GROUP, False)}) == 3
    files = sorted((tmp_path / "new").rglob("*.parquet"))
    assert [f.parent.name for f in files] == [
        "event_date=1970-01-01", "event_date=1970-01-02", "event_date=1970-01-03"]
    assert {f.name for f in files} == {files[0].name}
    all_rows = batch.rows()
    for day, f in enumerate(files):  # each day's rows in commit order, as the reference has them
        expected = rows_to_table(GROUP, [r for r in all_rows if r.event_time_us // DAY_US == day])
        assert f.read_bytes() == _parquet_bytes(expected, tmp_path / f"ref{day}.parquet")
        assert pq.read_table(f).num_rows == 10
