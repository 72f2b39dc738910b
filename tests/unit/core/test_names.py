"""One name rule: full match, 1-64 characters, compared case-insensitively (as DuckDB compares
identifiers), never an offline store column; and every duration a user gives is bounded."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition
from tessera.core.catalog import quote_ident
from tessera.core.errors import ConflictError, InvalidRequestError
from tessera.core.offline_layout import RESERVED_NAMES
from tessera.core.records import validate_record
from tessera.core.schema import (
    MAX_TTL_S,
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
    TtlDuration,
    check_feature_definitions,
    check_name,
    fold_name,
    is_valid_name,
    show_name,
)
from tessera.core.values import to_record


def _definition(**overrides: Any) -> FeatureGroupDefinition:
    body: dict[str, Any] = {
        "feature_group_name": "g",
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "clicks", "feature_type": "Integral"},
        ],
    }
    body.update(overrides)
    return FeatureGroupDefinition.model_validate(body)


def _with_feature(name: str, **overrides: Any) -> FeatureGroupDefinition:
    return _definition(feature_definitions=[
        {"feature_name": "id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "clicks", "feature_type": "Integral"},
        {"feature_name": name, "feature_type": "Integral"},
    ], **overrides)


def _refused(definition: FeatureGroupDefinition, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        definition.check()
    assert message in info.value.message, info.value.message


# --- the rule, name by name -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A1", "users", "user-features_v2", "a" * 64,
                                  "a" + "-_" * 31 + "b"])
def test_names_within_the_rule_are_accepted(name: str) -> None:
    check_name("feature_group_name", name)
    assert is_valid_name(name)


@pytest.mark.parametrize("name", ["", "users\n", "v\n", "\nusers", "a b", "-a", "a-", "a_",
                                  "é", "a" * 65, "a" + "_" * 4998 + "b", "users\ud800", "a/b",
                                  "ａ"])
def test_names_outside_the_rule_are_refused(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidRequestError, match="is not valid; allowed: 1-64 characters"):
        check_name("feature_group_name", name)


def test_a_refusal_quotes_the_name_so_that_it_encodes_as_utf8() -> None:
    for name, shown in [("users\n", r"'users\n'"), ("x\ud800", r"'x\ud800'"),
                        ("a" + "_" * 4998 + "b", f"'{'a' + '_' * 63}...' (5,000 characters)")]:
        with pytest.raises(InvalidRequestError) as info:
            check_name("feature_group_name", name)
        assert info.value.message.startswith(f"feature_group_name {shown} is not valid")
        info.value.message.encode("utf-8")  # no lone surrogate left
    assert show_name("users") == "'users'"


@pytest.mark.parametrize("name", ["clicks", "Clicks", "CLICKS"])
def test_features_differing_only_in_case_collide(name: str) -> None:
    if name == "clicks":
        _refused(_with_feature(name), "feature 'clicks' is defined twice")
    else:
        _refused(_with_feature(name), f"feature '{name}' and feature 'clicks' differ only in case")


def test_a_feature_named_like_the_record_identifier_in_another_case_is_refused() -> None:
    _refused(_with_feature("ID"), "feature 'ID' and feature 'id' differ only in case")
    _refused(_with_feature("Ts"), "feature 'Ts' and feature 'ts' differ only in case")


@pytest.mark.parametrize("name", ["WRITE_TIME", "IS_DELETED", "Event_Date", "TESSERA_SEQ",
                                  "Tessera_anything", "Api_Invocation_Time", "event_date"])
def test_reserved_columns_are_refused_in_any_case(name: str) -> None:
    _refused(_with_feature(name), f"feature_name '{name}' is reserved for the offline store")


def test_added_features_follow_the_same_rule() -> None:
    existing = ["id", "ts", "clicks"]
    with pytest.raises(ConflictError, match="feature 'clicks' already exists"):
        check_feature_definitions([FeatureDefinition.of("clicks", "String")], existing=existing)
    with pytest.raises(ConflictError, match="'Clicks' differs from the group's feature 'clicks'"):
        check_feature_definitions([FeatureDefinition.of("Clicks", "String")], existing=existing)
    with pytest.raises(ConflictError, match="aggregation feature of the group \\('n7d'"):
        check_feature_definitions([FeatureDefinition.of("N7D", "Integral")], existing=existing,
                                  aggregations=["n7d"])
    with pytest.raises(InvalidRequestError, match="differ only in case"):
        check_feature_definitions(
            [FeatureDefinition.of("x", "String"), FeatureDefinition.of("X", "String")],
            existing=existing,
        )
    with pytest.raises(InvalidRequestError, match="is reserved"):
        check_feature_definitions([FeatureDefinition.of("Write_Time", "String")], existing=[])
    assert list(check_feature_definitions([FeatureDefinition.of("country", "String")],
                                          existing=existing)) == ["country"]


def test_aggregation_names_collide_with_features_and_each_other_in_any_case() -> None:
    count = {"function": "count", "window": "1h"}
    _refused(_definition(aggregations=[{"name": "Clicks", **count}]),
             "aggregation 'Clicks' differs from feature 'clicks' only in case")
    _refused(_definition(aggregations=[{"name": "n", **count}, {"name": "N", **count}]),
             "aggregation 'N' and aggregation 'n' differ only in case")
    _refused(_definition(aggregations=[{"name": "Tessera_n", **count}]),
             "aggregation name 'Tessera_n' is reserved")
    _refused(_definition(aggregations=[{"name": "n\n", **count}]),
             r"aggregation name 'n\n' is not valid")


def test_a_stored_group_still_compiles_when_it_predates_the_rule() -> None:
    """CompiledSchema.of trusts a registered group (the registry quarantines it instead)."""
    old = _definition().model_copy(update={  # no validation: as an older rule stored it
        "aggregations": [AggregationDefinition(name="Clicks", function="count", window="1h")],
        "aggregation_config": AggregationConfig(lateness="999999d"),
    })
    with pytest.raises(InvalidRequestError):
        old.check()
    group = FeatureGroup(definition=old, feature_group_id=1, creation_time=0,
                         last_modified_time=0)
    assert CompiledSchema.of(group).aggregations is not None
    assert group.describe()["aggregation_resolved"]["lateness"] == "999999d"


# --- properties ---------------------------------------------------------------------------------

_ALNUM = st.sampled_from("abcXYZ019")
valid_names = st.builds(
    lambda first, rest: first + "".join(rest),
    _ALNUM,
    st.lists(st.tuples(st.sampled_from(["", "-", "_", "__"]), _ALNUM).map("".join), max_size=20),
).filter(lambda n: len(n) <= 64)


@given(valid_names.filter(lambda n: n.lower() != n.upper()), st.randoms())
def test_names_differing_only_in_case_always_collide(name: str, rnd: Any) -> None:
    other = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in name)
    if other == name:
        other = name.swapcase()
    assert fold_name(other) == fold_name(name)
    definitions = [FeatureDefinition.of(name, "String"), FeatureDefinition.of(other, "String")]
    with pytest.raises(InvalidRequestError, match="differ only in case"):
        check_feature_definitions(definitions, existing=[])
    with pytest.raises(ConflictError):
        check_feature_definitions(definitions[1:], existing=[name])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.sampled_from("aAbB09-_\n é"), min_size=1, max_size=70), max_size=8))
def test_whatever_the_rule_accepts_is_a_distinct_duckdb_identifier(names: list[str]) -> None:
    """Accepted feature names, with the offline store's own columns, make one DuckDB table,
    and an accepted group name makes a view: no collision, no quoting trouble."""
    definitions = [FeatureDefinition.of(n, "Integral") for n in names]
    try:
        check_feature_definitions(definitions, existing=[])
    except InvalidRequestError:
        return
    columns = [*names, *RESERVED_NAMES]
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE t ({', '.join(f'{quote_ident(c)} BIGINT' for c in columns)})")
        for n in names:
            con.execute(f"CREATE VIEW {quote_ident(n)} AS SELECT 1 AS x")
            # DuckDB resolves a name in any case to the same view: as fold_name compares.
            assert con.execute(f"SELECT x FROM {quote_ident(n.swapcase())}").fetchone() == (1,)


# --- durations ----------------------------------------------------------------------------------


def test_ttl_duration_is_bounded() -> None:
    _refused(
        _definition(online_store_config={"ttl_duration": {"unit": "Seconds", "value": 10**30}}),
        f"online_store_config.ttl_duration {10**30} Seconds is out of range; allowed: 1 second "
        f"to {MAX_TTL_S:,} seconds",
    )
    _refused(
        _definition(online_store_config={"ttl_duration": {"unit": "Weeks", "value": 52_143}}),
        "online_store_config.ttl_duration 52143 Weeks is out of range",
    )
    _definition(online_store_config={"ttl_duration": {"unit": "Days", "value": 365_000}}).check()
    with pytest.raises(InvalidRequestError, match="ttl_s must be a whole number of seconds from"):
        TtlDuration.of_seconds(1e30)


def test_a_records_ttl_is_bounded() -> None:
    group = FeatureGroup(definition=_definition(), feature_group_id=1, creation_time=0,
                         last_modified_time=0)
    schema = CompiledSchema.of(group)
    record = to_record({"id": "a", "ts": 1.0})
    with pytest.raises(InvalidRequestError, match="ttl_s 1e\\+30 is out of range; allowed: 1"):
        validate_record(schema, record, ttl_s=1e30)
    rec = validate_record(schema, record, ttl_s=MAX_TTL_S)
    assert rec.expires_at_us == 1_000_000 + MAX_TTL_S * 1_000_000


@pytest.mark.parametrize(("config", "message"), [
    ({"lateness": "999999999d"},
     "aggregation_config.lateness '999999999d' is out of range; allowed: 0s to 365000d"),
    ({"tile_size": "999999999d"},
     "aggregation_config.tile_size '999999999d' is out of range; allowed: 1s to 366d"),
])
def test_aggregation_durations_are_bounded(config: dict[str, str], message: str) -> None:
    _refused(_definition(aggregations=[{"name": "n", "function": "count", "window": "1h"}],
                         aggregation_config=config), message)
    _refused(_definition(aggregations=[{"name": "n", "function": "count", "window": "999999999d"}]),
             "aggregation 'n': window '999999999d' is out of range; allowed: 1s to 366d")
