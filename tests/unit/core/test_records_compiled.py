"""`validate_record`'s compiled path (core/record_scan.py) against the feature-by-feature
reference (`validate_record_reference`), on random records, valid or not: the same
ValidatedRecord (payload bytes, identifier, times, aggregation inputs), or the same error
message, and the same record afterwards (the reference normalizes in place)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core import records
from tessera.core.aggregation.spec import AggregationDefinition
from tessera.core.errors import InvalidRequestError
from tessera.core.records import validate_record, validate_record_reference
from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.proto.v1 import feature_store_pb2 as pb

TYPES = {
    "id": "String", "ts": "Fractional", "n": "Integral", "x": "Fractional", "s": "String",
    "li": "List[Integral]", "lf": "List[Fractional]", "ls": "List[String]",
    "si": "Set[Integral]", "sf": "Set[Fractional]", "ss": "Set[String]", "v": "Vector[3]",
    "üñí": "String",
}


def _schema(id_type: str = "String", et_type: str = "Fractional", ttl: bool = False,
            aggregations: bool = False) -> CompiledSchema:
    types = dict(TYPES, id=id_type, ts=et_type)
    extra = {}
    if aggregations:
        extra["aggregations"] = [
            AggregationDefinition(name="cnt", function="count", window="1h"),
            AggregationDefinition(name="sx", function="sum", source="x", window="1d"),
            AggregationDefinition(name="ln", function="last_n", source="n", n=3, window="1d",
                                  key="s"),
        ]
    if ttl:
        extra["online_store_config"] = {"ttl_duration": {"unit": "Hours", "value": 2}}
    definition = FeatureGroupDefinition(
        feature_group_name="g", record_identifier_feature_name="id", event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in types.items()], **extra,
    )
    return CompiledSchema.of(FeatureGroup(definition=definition, feature_group_id=3,
                                          creation_time=0.0, last_modified_time=0.0))


SCHEMAS = [_schema(), _schema("Integral", "String", ttl=True), _schema(aggregations=True)]

I64 = st.integers(-(1 << 63), (1 << 63) - 1)
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 1.5])
FLOATS = st.floats(width=64) | ODD_FLOATS
TEXT = st.text(max_size=6) | st.sampled_from(["", "x" * 1100, "2026-01-02T03:04:05Z",
                                              "2026-01-02T03:04:05", "1969-12-31T00:00:00Z"])


def _value(kind: str) -> st.SearchStrategy:  # type: ignore[type-arg]
    return {
        "int_value": I64,
        "float_value": FLOATS | st.floats(0, 2e9),
        "string_value": TEXT,
        "int_list": st.lists(st.integers(-3, 3) | I64, max_size=4),
        "float_list": st.lists(st.sampled_from([0.0, -0.0, 1.0, 2.5]) | FLOATS, max_size=4),
        "string_list": st.lists(st.sampled_from(["a", "b", "é"]) | TEXT, max_size=4),
        "vector_value": st.binary(max_size=16) | st.lists(
            st.floats(width=32), min_size=3, max_size=3).map(
                lambda v: np.array(v, np.float32).tobytes()),
        "none": st.none(),
    }[kind]


KINDS = ["int_value", "float_value", "string_value", "int_list", "float_list", "string_list",
         "vector_value", "none"]


def _valid(spec_name: str, oneof: str, schema: CompiledSchema) -> st.SearchStrategy:  # type: ignore[type-arg]
    if spec_name == schema.event_time.name:
        if oneof == "float_value":
            return st.floats(0, 2e9)
        return st.sampled_from(["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.5+02:00"])
    if spec_name == schema.record_identifier.name and oneof == "string_value":
        return st.text(min_size=1, max_size=8)
    unique = spec_name in ("sf", "si", "ss")
    return {
        "int_value": I64,
        "float_value": st.floats(allow_nan=False, allow_infinity=False),
        "string_value": st.text(max_size=8),
        "int_list": st.lists(I64, max_size=4, unique=unique),
        "float_list": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4,
                               unique=unique),
        "string_list": st.lists(st.text(max_size=3), max_size=4, unique=unique),
        "vector_value": st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False),
                                 min_size=3, max_size=3).map(
                                     lambda v: np.array(v, np.float32).tobytes()),
    }[oneof]


@st.composite
def _records(draw: st.DrawFn) -> tuple[CompiledSchema, pb.Record]:
    schema = draw(st.sampled_from(SCHEMAS))
    names = list(schema.features) + ["unknown", ""]
    record = pb.Record()
    chosen = draw(st.lists(st.sampled_from(names), max_size=16))
    mostly_valid = draw(st.booleans())
    if mostly_valid or draw(st.booleans()):
        # The identifier and event time, each feature once, in any order.
        chosen = [schema.record_identifier.name, schema.event_time.name] + [
            n for n in dict.fromkeys(chosen) if n not in ("id", "ts", "unknown", "")]
        chosen = draw(st.permutations(chosen))
    for name in chosen:
        spec = schema.features.get(name)
        if mostly_valid and spec is not None and draw(st.integers(0, 19)):
            kind, value = spec.oneof, draw(_valid(name, spec.oneof, schema))
        else:
            own = spec is not None and draw(st.booleans())
            kind = spec.oneof if own else draw(st.sampled_from(KINDS))
            value = draw(_value(kind))
        fv = record.features.add(feature_name=name)
        if kind == "none":
            continue
        if kind in ("int_list", "float_list", "string_list"):
            getattr(fv, kind).SetInParent()
            getattr(fv, kind).values.extend(value)
        else:
            setattr(fv, kind, value)
    return schema, record


def _outcome(fn, schema: CompiledSchema, record: pb.Record, ttl_s: float | None):  # type: ignore[no-untyped-def]
    copy = pb.Record()
    copy.CopyFrom(record)
    try:
        result = fn(schema, copy, ttl_s, "records[3]")
    except InvalidRequestError as exc:
        return ("error", exc.message, copy.SerializeToString())
    return ("ok", result, copy.SerializeToString())


@settings(max_examples=1000, deadline=None)
@given(_records(), st.sampled_from([None, 3600.0, -1.0, math.nan]))
def test_compiled_validation_equals_the_reference(
    drawn: tuple[CompiledSchema, pb.Record], ttl_s: float | None
) -> None:
    schema, record = drawn
    assert _outcome(validate_record, schema, record, ttl_s) == _outcome(
        validate_record_reference, schema, record, ttl_s)


def test_the_compiled_path_takes_the_common_case() -> None:
    assert records.load_compiled_validation()
    for schema in SCHEMAS:
        record = pb.Record()
        for name, spec in schema.features.items():
            fv = record.features.add(feature_name=name)
            value = {"int_value": 7, "float_value": 1.7e9, "string_value": "é",
                     "int_list": [1, 2], "float_list": [0.0, -1.5], "string_list": ["a", "b"],
                     "vector_value": np.ones(3, np.float32).tobytes()}[spec.oneof]
            if name == "ts" and spec.oneof == "string_value":
                value = "2026-01-02T03:04:05Z"
            if isinstance(value, list):
                getattr(fv, spec.oneof).values.extend(value)
            else:
                setattr(fv, spec.oneof, value)
        fast = records._validate_common(schema, record, None)
        assert fast is not None
        assert fast == validate_record_reference(schema, record)


@pytest.mark.parametrize("values", [[1.0, -0.0, 0.0], [2.0, 1.0, 2.0]])
def test_a_set_of_equal_fractionals_is_refused_by_both_paths(values: list[float]) -> None:
    schema = SCHEMAS[0]
    record = pb.Record()
    record.features.add(feature_name="id", string_value="a")
    record.features.add(feature_name="ts", float_value=1.0)
    record.features.add(feature_name="sf").float_list.values.extend(values)
    with pytest.raises(InvalidRequestError, match="its values must be distinct"):
        validate_record(schema, record)
