"""Validation of aggregation definitions: one precise message per mistake."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.core.aggregation.spec import (
    AggregationConfig,
    AggregationDefinition,
    check,
    default_tile_us,
    parse_duration_us,
)
from tessera.core.errors import InvalidRequestError
from tessera.core.schema import FeatureType

TYPES = {
    "id": FeatureType.parse("String"),
    "ts": FeatureType.parse("Fractional"),
    "clicks": FeatureType.parse("Integral"),
    "price": FeatureType.parse("Fractional"),
    "name": FeatureType.parse("String"),
    "tags": FeatureType.parse("List[Integral]"),
    "emb": FeatureType.parse("Vector[4]"),
}
M = 60_000_000


def _check(config: AggregationConfig | None = None, **fields: Any) -> Any:
    spec = {"name": "agg", "function": "sum", "source": "clicks", "window": "1h"} | fields
    return check([AggregationDefinition(**spec)], TYPES, record_identifier="id", config=config)


def _refused(message: str, config: AggregationConfig | None = None, **fields: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _check(config, **fields)
    assert info.value.message == message


def test_a_valid_aggregation_compiles_with_the_default_tile_and_lateness() -> None:
    plan = _check()
    assert plan.tile_us == 5 * M and plan.lateness_us == 65 * M
    agg = plan.aggregations["agg"]
    assert (agg.function, agg.window_us, agg.output_type) == ("sum", 60 * M, "Integral")


def test_unknown_source_feature() -> None:
    _refused(
        "aggregation 'agg': source feature 'clics' is not in the group; "
        "known: id, ts, clicks, price, name, tags, emb",
        source="clics",
    )


@pytest.mark.parametrize(
    ("source", "type_text"), [("name", "String"), ("tags", "List[Integral]"), ("emb", "Vector[4]")]
)
def test_non_numeric_source(source: str, type_text: str) -> None:
    _refused(
        f"aggregation 'agg': source feature '{source}' has type {type_text}; allowed: an "
        "Integral or Fractional scalar feature (ts, clicks, price)",
        source=source,
    )


def test_unknown_function_lists_the_allowed_ones() -> None:
    _refused(
        "aggregation 'agg': function 'avg' is not known; "
        "allowed: count, sum, mean, min, max, last, last_n",
        function="avg",
    )


def test_only_count_goes_without_a_source() -> None:
    assert _check(function="count", source=None).aggregations["agg"].output_type == "Integral"
    _refused(
        "aggregation 'agg': function 'max' needs a source feature; only 'count' counts events "
        "without one",
        function="max",
        source=None,
    )


@pytest.mark.parametrize("n", [None, 0, 101])
def test_last_n_needs_n_in_range(n: int | None) -> None:
    _refused(
        f"aggregation 'agg': function 'last_n' needs n, a whole number from 1 to 100; got {n}",
        function="last_n",
        n=n,
    )


def test_n_is_only_for_last_n() -> None:
    _refused("aggregation 'agg': n is only for function 'last_n', not 'sum'", n=3)


@pytest.mark.parametrize("window", ["1w", "1.5h", "h", "-1h", "10 minutes"])
def test_window_must_be_a_duration(window: str) -> None:
    _refused(
        f"aggregation 'agg': window '{window}' is not a duration; allowed: a whole number and "
        "a unit s, m, h or d, e.g. 10m, 1h, 7d",
        window=window,
    )


def test_window_must_be_a_multiple_of_the_tile_size() -> None:
    _refused(
        "aggregation 'agg': window '90s' is not a multiple of the tile size '1m'; allowed: "
        "windows that are whole numbers of tiles",
        config=AggregationConfig(tile_size="1m"),
        window="90s",
    )


def test_window_of_too_many_tiles() -> None:
    _refused(
        "aggregation 'agg': window '60d' spans 86400 tiles of '1m'; the limit is 50000: choose "
        "a larger aggregation_config.tile_size",
        config=AggregationConfig(tile_size="1m"),
        window="60d",
    )


@pytest.mark.parametrize("window", ["0s", "367d"])
def test_window_out_of_range(window: str) -> None:
    _refused(
        f"aggregation 'agg': window '{window}' is out of range; allowed: 1s to 366d", window=window
    )


def test_bad_tile_size_and_lateness() -> None:
    _refused(
        "aggregation_config.tile_size '1 min' is not a duration; allowed: a whole number and a "
        "unit s, m, h or d, e.g. 10m, 1h, 7d",
        config=AggregationConfig(tile_size="1 min"),
    )
    _refused(
        "aggregation_config.lateness 'soon' is not a duration; allowed: a whole number and a "
        "unit s, m, h or d, e.g. 10m, 1h, 7d",
        config=AggregationConfig(lateness="soon"),
    )


def test_names_must_not_collide_with_features_or_each_other() -> None:
    _refused(
        "aggregation 'price' has the name of a feature of the group; aggregation names must "
        "differ from feature names",
        name="price",
    )
    with pytest.raises(InvalidRequestError, match="aggregation 'a' is defined twice"):
        d = AggregationDefinition(name="a", function="count", window="1h")
        check([d, d], TYPES, record_identifier="id")
    with pytest.raises(InvalidRequestError, match="is reserved for the offline store"):
        _check(name="write_time")
    with pytest.raises(InvalidRequestError, match="aggregation name 'a b' is not valid"):
        _check(name="a b")


def test_key_must_be_an_integral_or_string_feature() -> None:
    _refused(
        "aggregation 'agg': key feature 'shop' is not in the group; "
        "known: id, ts, clicks, price, name, tags, emb",
        key="shop",
    )
    _refused(
        "aggregation 'agg': key feature 'price' has type Fractional; allowed: Integral or String",
        key="price",
    )
    assert _check(key="id").streams[0].key is None  # the record identifier: the default stream
    assert _check(key="name").streams[0].key == "name"


def test_default_tile_size_is_a_tenth_of_the_smallest_window_at_most() -> None:
    def tile(*windows: str) -> int:
        return default_tile_us([parse_duration_us(w, "w") for w in windows])

    assert tile("10m", "1h", "1d", "7d", "30d") == M
    assert tile("1h") == 5 * M
    assert tile("1d") == tile("7d") == 60 * M
    assert tile("30d") == 24 * 60 * M
    assert tile("90s") == 1_000_000
    assert tile("7s") == 1_000_000  # nothing finer than a second


def test_no_aggregations_is_an_empty_plan() -> None:
    assert check([], TYPES, record_identifier="id").streams == ()
