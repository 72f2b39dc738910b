"""A batch's records in columns (ingest/columns.py) read back as the records they were built
from; the column-at-a-time helpers of the whole-batch path agree with the per-message ones."""

from __future__ import annotations

import json
import random

import pytest

from tessera.core.aggregation.inputs import AggregationInput
from tessera.core.records import ValidatedRecord
from tessera.ingest.batch import _Sources
from tessera.ingest.columns import ColumnsBuilder, RecordColumns
from tessera.ingest.decode import decode_json_objects
from tessera.ingest.sinks import SinkRecord
from tests.unit.ingest.fakes import FakeMessage


def record(i: int, expires: bool = True) -> SinkRecord:
    et = 1_700_000_000_000_000 + i
    return SinkRecord(
        ValidatedRecord(f"id-{i}-é" if i % 2 else str(i), et, et + 60 if expires else None,
                        bytes([i % 256]) * (i % 5), None),
        f"kafka:t/{i % 3}/{i}")


def test_columns_read_back_as_the_records_they_were_built_from() -> None:
    records = [record(i) for i in range(25)]
    columns = RecordColumns.of(records)
    assert len(columns) == 25
    assert list(columns) == records
    assert [columns[i] for i in range(25)] == records and columns[-1] == records[-1]
    assert list(columns[3:9]) == records[3:9]
    assert list(columns.take([7, 2, 2])) == [records[7], records[2], records[2]]
    assert columns.payloads() == [r.validated.payload for r in records]
    assert columns.sources() == [r.source for r in records]
    assert columns.event_time_us.tolist() == [r.validated.event_time_us for r in records]
    with pytest.raises(IndexError):
        columns[25]


def test_records_without_expiry_or_with_aggregation_inputs_keep_them() -> None:
    agg = AggregationInput(("k",), ((1.0,),))
    records = [record(i, expires=False) for i in range(3)]
    records[1] = SinkRecord(ValidatedRecord("x", 5, None, b"p", agg), "kafka:t/0/9")
    columns = RecordColumns.of(records)
    assert columns.expires_at_us is None and columns.aggregations == [None, agg, None]
    assert list(columns) == records


def test_a_batch_whose_records_disagree_on_expiry_is_refused() -> None:
    builder = ColumnsBuilder(2)
    builder.add_record(0, record(0).validated)
    with pytest.raises(ValueError, match="expiry"):
        builder.add_record(1, record(1, expires=False).validated)


def test_positions_without_a_record_are_left_out_in_order() -> None:
    builder = ColumnsBuilder(5)
    for i in (4, 0, 2):
        builder.add_record(i, record(i).validated)
    columns, positions = builder.build([f"kafka:t/0/{i}" for i in range(5)])
    assert positions.tolist() == [0, 2, 4]
    assert [r.validated for r in columns] == [record(i).validated for i in (0, 2, 4)]
    assert columns.sources() == ["kafka:t/0/0", "kafka:t/0/2", "kafka:t/0/4"]


def test_sources_of_a_batch_match_the_per_message_ones() -> None:
    rng = random.Random(3)
    msgs = [FakeMessage(b"{}", topic=rng.choice(["a", "b"]), partition=rng.randrange(3),
                        offset=rng.randrange(10_000)) for _ in range(300)]
    whole = _Sources.of(msgs)
    each = _Sources(len(msgs))
    for i, msg in enumerate(msgs):
        each.add(i, msg)
    assert whole.texts == each.texts and whole.next_offsets == each.next_offsets
    one = _Sources.of(msgs[:1] * 3)
    assert one.next_offsets == {(msgs[0].topic(), msgs[0].partition()): msgs[0].offset() + 1}


def test_a_batch_is_decoded_whole_only_when_every_value_is_a_json_object() -> None:
    values: list[bytes | None] = [json.dumps({"a": i}).encode() for i in range(5)]
    assert decode_json_objects(values, 100) == [{"a": i} for i in range(5)]
    for bad in (None, b"[1]", b"{nope", b"NaN", b'{"a": "' + b"x" * 200 + b'"}'):
        assert decode_json_objects([*values, bad], 100) is None, bad
    assert decode_json_objects([], 100) == []
