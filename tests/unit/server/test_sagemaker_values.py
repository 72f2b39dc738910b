"""SageMaker's text values <-> Tessera's wire records (server/sagemaker_values.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tessera.core.errors import InvalidRequestError
from tessera.core.records import validate_record
from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.server.sagemaker_values import FeatureValue, record_json, to_record

TYPES = {"id": "Integral", "ts": "String", "f": "Fractional", "s": "String",
         "il": "List[Integral]", "fs": "Set[Fractional]", "sl": "List[String]", "v": "Vector[3]"}


def schema() -> CompiledSchema:
    definition = FeatureGroupDefinition(
        feature_group_name="g", record_identifier_feature_name="id", event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in TYPES.items()])
    return CompiledSchema.of(FeatureGroup(definition=definition, feature_group_id=1,
                                          creation_time=0.0, last_modified_time=0.0))


def values(**overrides: object) -> list[FeatureValue]:
    given: dict[str, object] = {"id": "-9223372036854775808", "ts": "2026-01-01T00:00:00Z",
                                "f": "0.1", "s": "ü é", "il": ["1", "-2"], "fs": ["0.5", "1e-3"],
                                "sl": ["", "a b"], "v": ["0.1", "2", "-3.5"]}
    given.update(overrides)
    return [FeatureValue(n, None, v) if isinstance(v, list) else FeatureValue(n, str(v))
            for n, v in given.items()]


def test_every_type_round_trips_through_validation() -> None:
    s = schema()
    record = to_record(s, values())
    payload = validate_record(s, record).payload
    out = {f["FeatureName"]: f.get("ValueAsString", f.get("ValueAsStringList"))
           for f in json.loads(record_json(payload))}
    assert out == {"id": "-9223372036854775808", "ts": "2026-01-01T00:00:00Z", "f": "0.1",
                   "s": "ü é", "il": ["1", "-2"], "fs": ["0.5", "0.001"], "sl": ["", "a b"],
                   "v": ["0.1", "2.0", "-3.5"]}
    vec = np.asarray(out["v"], dtype=np.float32)
    np.testing.assert_array_equal(vec, np.array([0.1, 2, -3.5], dtype=np.float32))


@pytest.mark.parametrize(("override", "message"), [
    ({"id": "9223372036854775808"}, "out of the Integral range"),
    ({"id": "1.0"}, "'1.0' is not an Integral"),
    ({"f": "abc"}, "'abc' is not a Fractional"),
    ({"il": ["1", "x"]}, "'x' is not an Integral"),
    ({"s": ["a"]}, "ValueAsString, not ValueAsStringList"),
    ({"sl": "a"}, "ValueAsStringList, not ValueAsString"),
    ({"nope": "1"}, "feature 'nope' is not in group 'g'"),
])
def test_text_that_is_not_of_the_features_type_is_refused(override: dict[str, object],
                                                          message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        to_record(schema(), values(**override))


def test_a_value_given_both_ways_or_not_at_all_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="both ValueAsString and ValueAsStringList"):
        to_record(schema(), [FeatureValue("s", "a", ["a"])])
    with pytest.raises(InvalidRequestError, match="omit the feature for a null"):
        to_record(schema(), [FeatureValue("s")])


def test_validation_decides_the_rest() -> None:
    s = schema()
    for override, message in [({"v": ["1", "2"]}, "Vector\\[3\\]; got 2 values"),
                              ({"f": "nan"}, "must be finite"),
                              ({"fs": ["1", "1.0"]}, "must be distinct")]:
        with pytest.raises(InvalidRequestError, match=message):
            validate_record(s, to_record(s, values(**override)))
