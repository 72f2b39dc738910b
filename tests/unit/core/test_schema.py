from __future__ import annotations

import pytest

from tessera.core.errors import ConflictError, InvalidRequestError
from tessera.core.schema import (
    CollectionType,
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureType,
    ScalarType,
    TtlDuration,
    check_feature_definitions,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Integral", FeatureType(ScalarType.INTEGRAL)),
        ("Fractional", FeatureType(ScalarType.FRACTIONAL)),
        ("String", FeatureType(ScalarType.STRING)),
        ("List[String]", FeatureType(ScalarType.STRING, CollectionType.LIST)),
        ("Set[Integral]", FeatureType(ScalarType.INTEGRAL, CollectionType.SET)),
        ("Vector[ 4 ]", FeatureType(ScalarType.FRACTIONAL, CollectionType.VECTOR, 4)),
    ],
)
def test_feature_type_parses_and_prints_back(text: str, expected: FeatureType) -> None:
    assert FeatureType.parse(text) == expected
    assert FeatureType.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["Int", "List[Vector[3]]", "Vector[0]", "Vector[9000]", "Set[]"])
def test_feature_type_refuses_what_is_not_a_type(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        FeatureType.parse(text)


def _definition(**kw: object) -> FeatureGroupDefinition:
    base: dict[str, object] = {
        "feature_group_name": "users",
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [FeatureDefinition.of("id", "String"),
                                FeatureDefinition.of("ts", "Fractional"),
                                FeatureDefinition.of("emb", "Vector[3]")],
    }
    base.update(kw)
    return FeatureGroupDefinition.model_validate(base)


def test_valid_definition_compiles_to_lookups() -> None:
    d = _definition(online_store_config={"ttl_duration": {"unit": "Hours", "value": 2}})
    d.check()
    schema = CompiledSchema.of(
        FeatureGroup(definition=d, feature_group_id=7, creation_time=0, last_modified_time=0))
    assert schema.group_id == 7 and schema.default_ttl_s == 7200
    assert schema.record_identifier.name == "id" and schema.event_time.oneof == "float_value"
    assert schema.features["emb"].oneof == "vector_value"
    assert schema.features["emb"].type.dimension == 3


def test_both_stores_disabled_is_refused() -> None:
    d = _definition(online_store_config={"enable_online_store": False},
                    offline_store_config={"enable_offline_store": False})
    with pytest.raises(InvalidRequestError, match="enable at least one"):
        d.check()


def test_adding_an_existing_feature_is_a_conflict() -> None:
    with pytest.raises(ConflictError, match="feature 'ts' already exists"):
        check_feature_definitions([FeatureDefinition.of("ts", "String")], existing=["id", "ts"])


def test_ttl_duration_in_seconds() -> None:
    assert TtlDuration(unit="Weeks", value=1).seconds == 604800
    assert TtlDuration.of_seconds(90).seconds == 90
    with pytest.raises(InvalidRequestError):
        TtlDuration.of_seconds(1.5)
