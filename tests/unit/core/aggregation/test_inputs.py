"""What a validated put contributes to its group's aggregations (inputs.py)."""

from __future__ import annotations

import math

from tessera.core.aggregation.inputs import aggregation_input_of_values
from tessera.core.aggregation.spec import AggregationDefinition, check
from tessera.core.schema import FeatureType

TYPES = {
    "id": FeatureType.parse("String"),
    "x": FeatureType.parse("Fractional"),
    "n": FeatureType.parse("Integral"),
    "shop": FeatureType.parse("Integral"),
}
PLAN = check(
    [
        AggregationDefinition(name="x_sum", function="sum", source="x", window="1h"),
        AggregationDefinition(name="n_max", function="max", source="n", window="1h"),
        AggregationDefinition(name="shop_n", function="count", window="1h", key="shop"),
        AggregationDefinition(name="shop_x", function="min", source="x", window="1h", key="shop"),
    ],
    TYPES,
    record_identifier="id",
)


def test_inputs_follow_the_plans_streams_and_sources() -> None:
    assert PLAN.input_layout == ((None, ("x", "n")), ("shop", ("x",)))
    got = aggregation_input_of_values(PLAN, "u1", {"x": 1.5, "n": 7, "shop": 42})
    assert got.keys == ("u1", "42")  # an Integral key as its decimal digits
    assert got.values == ((1.5, 7.0), (1.5,))
    assert all(type(v) is float for row in got.values for v in row)


def test_null_sources_are_nan_and_a_null_key_is_in_no_key() -> None:
    got = aggregation_input_of_values(PLAN, "u2", {"x": None})
    assert got.keys == ("u2", None)
    assert [[math.isnan(v) for v in row] for row in got.values] == [[True, True], [True]]
