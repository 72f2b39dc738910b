"""The SDK's value codec and the server's record validation, against each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.core.errors import InvalidRequestError
from tessera.core.records import MAX_RECORD_BYTES, validate_record
from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb

TYPES = {"id": "String", "ts": "Fractional", "i": "Integral", "f": "Fractional", "s": "String",
         "li": "List[Integral]", "lf": "List[Fractional]", "ls": "List[String]",
         "si": "Set[Integral]", "v": "Vector[3]"}


def schema(ttl_s: int | None = None) -> CompiledSchema:
    d = FeatureGroupDefinition(
        feature_group_name="g", record_identifier_feature_name="id", event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in TYPES.items()],
        online_store_config={"ttl_duration": {"unit": "Seconds", "value": ttl_s}} if ttl_s else {},
    )
    d.check()
    return CompiledSchema.of(
        FeatureGroup(definition=d, feature_group_id=1, creation_time=0, last_modified_time=0))


finite = st.floats(allow_nan=False, allow_infinity=False)
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
records = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=40), "ts": st.floats(min_value=0, max_value=4e9)},
    optional={
        "i": int64, "f": finite, "s": st.text(max_size=30),
        "li": st.lists(int64, max_size=5), "lf": st.lists(finite, max_size=5),
        "ls": st.lists(st.text(max_size=5), max_size=5),
        "si": st.sets(int64, max_size=5),
        "v": st.lists(f32, min_size=3, max_size=3).map(lambda x: np.array(x, dtype=np.float32)),
    },
)


@given(records)
def test_any_valid_record_validates_and_round_trips(values: dict) -> None:
    rec = validate_record(schema(), to_record(values))
    assert rec.record_id == values["id"]
    assert rec.event_time_us == round(values["ts"] * 1e6)
    back = from_record(pb.Record.FromString(rec.payload))
    for name, value in values.items():
        if name == "si":
            assert back[name] == sorted(value)
        elif name == "v":
            np.testing.assert_array_equal(back[name], value)
        elif name in ("li", "lf", "ls") and not value:
            assert back[name] == []
        else:
            assert back[name] == value


def test_ttl_sets_expiry_from_event_time() -> None:
    rec = validate_record(schema(ttl_s=60), to_record({"id": "a", "ts": 100.0}))
    assert rec.expires_at_us == 160_000_000
    rec = validate_record(schema(ttl_s=60), to_record({"id": "a", "ts": 100.0}), ttl_s=0.5)
    assert rec.expires_at_us == 100_500_000
    assert validate_record(schema(), to_record({"id": "a", "ts": 1.0})).expires_at_us is None


def test_ints_in_a_fractional_list_are_normalized() -> None:
    rec = validate_record(schema(), to_record({"id": "a", "ts": 1.0, "lf": [1, 2]}))
    fv = pb.Record.FromString(rec.payload).features[2]
    assert fv.WhichOneof("value") == "float_list" and list(fv.float_list.values) == [1.0, 2.0]


def test_empty_list_fits_any_list_type() -> None:
    rec = validate_record(schema(), to_record({"id": "a", "ts": 1.0, "li": []}))
    assert pb.Record.FromString(rec.payload).features[2].WhichOneof("value") == "int_list"


def test_record_at_the_size_limit_passes_and_over_it_fails() -> None:
    def values(n: int) -> dict:
        return {"id": "a", "ts": 1.0, "s": "x" * n}

    n = MAX_RECORD_BYTES
    while len(to_record(values(n)).SerializeToString()) > MAX_RECORD_BYTES:
        n -= 1
    assert len(validate_record(schema(), to_record(values(n))).payload) == MAX_RECORD_BYTES
    with pytest.raises(InvalidRequestError, match="358401 bytes; the limit is 358400"):
        validate_record(schema(), to_record(values(n + 1)))


@pytest.mark.parametrize("value", [True, {"a": 1}, [1, "a"], object()])
def test_sdk_codec_refuses_what_has_no_feature_type(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="feature 'x'"):
        to_record({"x": value})


def test_none_means_absent() -> None:
    assert [f.feature_name for f in to_record({"a": 1, "b": None}).features] == ["a"]


def test_float32_vector_keeps_its_bits() -> None:
    v = np.array([math.pi, -0.0, 1e-30], dtype=np.float32)
    rec = validate_record(schema(), to_record({"id": "a", "ts": 1.0, "v": v}))
    out = from_record(pb.Record.FromString(rec.payload))["v"]
    assert out.tobytes() == v.tobytes()
