"""The aggregation inputs of many records from their wire bytes (record_inputs.py): the same as
`aggregation_input_of_values` per record, and refusals where the bytes cannot be read."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation.inputs import aggregation_input_of_values
from tessera.core.aggregation.record_inputs import (
    RecordInputsError,
    aggregate_columns,
    scan_inputs,
)
from tessera.core.aggregation.spec import AggregationDefinition, check
from tessera.core.schema import FeatureType
from tessera.core.values import to_record

TYPES = {
    "id": FeatureType.parse("String"),
    "ts": FeatureType.parse("Fractional"),
    "x": FeatureType.parse("Fractional"),
    "n": FeatureType.parse("Integral"),
    "shop": FeatureType.parse("Integral"),
    "city": FeatureType.parse("String"),
    "tags": FeatureType.parse("List[String]"),
}
PLAN = check(
    [
        AggregationDefinition(name="x_sum", function="sum", source="x", window="1h"),
        AggregationDefinition(name="n_last", function="last", source="n", window="1h"),
        AggregationDefinition(name="shop_x", function="max", source="x", window="1h", key="shop"),
        AggregationDefinition(name="city_n", function="min", source="n", window="1h", key="city"),
        AggregationDefinition(name="city_events", function="count", window="1h", key="city"),
    ],
    TYPES,
    record_identifier="id",
)

records = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=8)},
    optional={
        "ts": st.floats(0, 2e9),
        "x": st.floats(allow_nan=False, allow_infinity=False),
        "n": st.integers(-(2**63), 2**63 - 1),
        "shop": st.integers(-(2**63), 2**63 - 1),
        "city": st.text(max_size=6),
        "tags": st.lists(st.text(max_size=3), max_size=3),
    },
)


def _batch(rows: list[dict[str, Any]]) -> tuple[list[str], bytes, np.ndarray]:
    payloads = [to_record(r).SerializeToString() for r in rows]
    off = np.zeros(len(payloads) + 1, np.int64)
    np.cumsum([len(p) for p in payloads], out=off[1:])
    return [r["id"] for r in rows], b"".join(payloads), off


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=60, deadline=None)
@given(st.lists(records, max_size=30))
def test_columns_equal_each_records_inputs(rows: list[dict[str, Any]]) -> None:
    ids, payloads, off = _batch(rows)
    cols = aggregate_columns("g", PLAN, ids, payloads, off)
    assert len(cols) == len(rows)
    for i, row in enumerate(rows):
        one = aggregation_input_of_values(PLAN, row["id"], row)
        assert tuple(keys[i] for keys in cols.keys) == one.keys
        for values, want in zip(cols.values, one.values, strict=True):
            assert all(_same(float(g), w) for g, w in zip(values[i], want, strict=True))


def test_a_feature_given_twice_reads_as_its_last_entry() -> None:
    record = to_record({"id": "a", "x": 1.0})
    record.features.add(feature_name="x", float_value=2.5)
    payload = record.SerializeToString()
    cols = aggregate_columns("g", PLAN, ["a"], payload, np.array([0, len(payload)]))
    assert cols.values[0][0, 0] == 2.5


def test_unreadable_bytes_and_values_of_another_form_are_refused() -> None:
    good = to_record({"id": "a", "x": 1.0}).SerializeToString()
    cut = good[:-3]
    with pytest.raises(RecordInputsError, match="record 1"):
        aggregate_columns("g", PLAN, ["a", "b"], good + cut,
                          np.array([0, len(good), len(good) + len(cut)]))
    text_source = to_record({"id": "a", "x": "1.0"}).SerializeToString()
    with pytest.raises(RecordInputsError, match="source feature 'x'"):
        aggregate_columns("g", PLAN, ["a"], text_source, np.array([0, len(text_source)]))
    float_key = to_record({"id": "a", "shop": 1.5}).SerializeToString()
    with pytest.raises(RecordInputsError, match="key feature 'shop'"):
        aggregate_columns("g", PLAN, ["a"], float_key, np.array([0, len(float_key)]))


def test_scan_matches_its_py_func() -> None:
    rows = [{"id": "a", "x": -0.0, "n": -1, "city": "é", "tags": ["t"]}, {"id": "b"}]
    _, payloads, off = _batch(rows)
    names = np.frombuffer(b"cityntagsx", np.uint8)
    name_off = np.array([0, 4, 5, 9, 10], np.int64)
    buf = np.frombuffer(payloads, np.uint8)
    off.flags.writeable = False
    name_off.flags.writeable = False
    got = scan_inputs(buf, off, names, name_off)
    want = scan_inputs.py_func(buf, off, names, name_off)
    for g, w in zip(got[:5], want[:5], strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[5] == want[5] == -1
    assert got[0].tolist() == [[3, 1, 4, 2], [0, 0, 0, 0]]  # string, int, other (a list), float
    assert got[1][0, 1] == -1
