"""SageMaker's control-plane shapes <-> Tessera's model (server/sagemaker_shapes.py): the type
mapping both ways, what is kept, what is refused, and the one error mapping."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.core.errors import (
    ConflictError,
    FeatureGroupNotFoundError,
    InvalidRequestError,
    PreconditionFailedError,
    StorageError,
)
from tessera.core.schema import FeatureDefinition, FeatureGroup, FeatureType
from tessera.server import sagemaker_shapes as shapes
from tessera.server.sagemaker_common import AwsError

SAGEMAKER_TYPES = [
    ({"FeatureType": "Integral"}, "Integral"),
    ({"FeatureType": "Fractional"}, "Fractional"),
    ({"FeatureType": "String"}, "String"),
    ({"FeatureType": "Integral", "CollectionType": "List"}, "List[Integral]"),
    ({"FeatureType": "Fractional", "CollectionType": "List"}, "List[Fractional]"),
    ({"FeatureType": "String", "CollectionType": "Set"}, "Set[String]"),
    ({"FeatureType": "Fractional", "CollectionType": "Vector",
      "CollectionConfig": {"VectorConfig": {"Dimension": 8}}}, "Vector[8]"),
]


@pytest.mark.parametrize(("sagemaker", "tessera"), SAGEMAKER_TYPES)
def test_feature_types_map_one_to_one(sagemaker: dict[str, Any], tessera: str) -> None:
    shape = {"FeatureName": "f", **sagemaker}
    fd = shapes.feature_definition_of(shape, "FeatureDefinitions[0]")
    assert fd.type() == FeatureType.parse(tessera)
    assert shapes.feature_definition_shape(fd) == shape
    assert shapes.feature_definition_shape(FeatureDefinition.of("f", tessera)) == shape


@pytest.mark.parametrize(("shape", "message"), [
    ({"FeatureName": "f", "FeatureType": "Boolean"}, "FeatureType 'Boolean' is not valid"),
    ({"FeatureName": "f", "FeatureType": "String", "CollectionType": "Map"},
     "CollectionType 'Map' is not valid"),
    ({"FeatureName": "f"}, "Value null at 'FeatureDefinitions[0].FeatureType'"),
    ({"FeatureName": "f", "FeatureType": "String", "Nullable": True}, "unknown member(s)"),
    ({"FeatureName": "f", "FeatureType": "Fractional", "CollectionType": "Vector",
      "CollectionConfig": {"VectorConfig": {"Dimension": "8"}}}, "must be a integer"),
])
def test_a_bad_feature_definition_is_a_validation_exception(
    shape: dict[str, Any], message: str
) -> None:
    with pytest.raises(AwsError) as exc:
        shapes.feature_definition_of(shape, "FeatureDefinitions[0]")
    assert exc.value.code == "ValidationException" and exc.value.status == 400
    assert message in exc.value.message


def _request(**extra: Any) -> dict[str, Any]:
    return {"FeatureGroupName": "users", "RecordIdentifierFeatureName": "id",
            "EventTimeFeatureName": "ts", "FeatureDefinitions": [
                {"FeatureName": "id", "FeatureType": "String"},
                {"FeatureName": "ts", "FeatureType": "Fractional"}], **extra}


def test_stores_are_on_only_when_asked_for_and_kept_fields_are_echoed() -> None:
    d = shapes.definition_of(_request(OnlineStoreConfig={"EnableOnlineStore": True}))
    assert d.online_store_config.enable_online_store
    assert not d.offline_store_config.enable_offline_store
    kept = {"RoleArn": "arn:aws:iam::123456789012:role/r",
            "ThroughputConfig": {"ThroughputMode": "OnDemand"},
            "OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": "s3://b/p"},
                                   "TableFormat": "Glue"}}
    d = shapes.definition_of(_request(
        OnlineStoreConfig={"StorageType": "Standard", "TtlDuration": {"Unit": "Weeks",
                                                                      "Value": 2}}, **kept))
    assert not d.online_store_config.enable_online_store and d.offline_store_config.enable_offline_store
    ttl = d.online_store_config.ttl_duration
    assert ttl is not None and ttl.seconds == 14 * 86400
    group = FeatureGroup(definition=d, feature_group_id=1, creation_time=1.0,
                         last_modified_time=1.0)
    described = shapes.describe(group, "us-east-1")
    for k, v in kept.items():
        assert described[k] == v
    assert described["OnlineStoreConfig"] == {
        "EnableOnlineStore": False, "TtlDuration": {"Unit": "Weeks", "Value": 2},
        "StorageType": "Standard"}
    assert "LastUpdateStatus" not in described and "Description" not in described


@pytest.mark.parametrize(("extra", "message"), [
    ({"OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": "s3://b"}, "TableFormat": "Iceberg"}},
     "TableFormat 'Iceberg' cannot be honoured"),
    ({"OnlineStoreConfig": {"TtlDuration": {"Unit": "Days"}}},
     "Value null at 'OnlineStoreConfig.TtlDuration.Value'"),
    ({"OnlineStoreConfig": {"TtlDuration": {"Unit": "Days", "Value": 0}}}, "at least 1"),
    ({"OnlineStoreConfig": {"EnableOnlineStore": "yes"}}, "must be a boolean"),
    ({"Sharding": {"Shards": 4}}, "unknown member(s) Sharding"),
    ({"Tags": [{"Key": "k" * 129, "Value": "v"}]}, "at most 128 characters"),
])
def test_what_cannot_be_honoured_is_refused_by_name(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(AwsError) as exc:
        shapes.definition_of(_request(**extra))
    assert exc.value.code == "ValidationException" and message in exc.value.message


def test_update_and_metadata_requests() -> None:
    update = shapes.update_of({
        "FeatureGroupName": "users",
        "FeatureAdditions": [{"FeatureName": "x", "FeatureType": "Integral"}],
        "OnlineStoreConfig": {"TtlDuration": {"Unit": "Minutes", "Value": 5},
                              "StorageType": "Standard"},
        "ThroughputConfig": {"ThroughputMode": "OnDemand"}})
    assert [f.feature_name for f in update.feature_additions] == ["x"]
    assert update.ttl_duration is not None and update.ttl_duration.seconds == 300
    assert update.compat_config == {"ThroughputConfig": {"ThroughputMode": "OnDemand"},
                                    "OnlineStoreConfig": {"StorageType": "Standard"}}
    change = shapes.metadata_update_of({
        "Description": "d", "ParameterAdditions": [{"Key": "a", "Value": "1"}],
        "ParameterRemovals": ["b"]})
    assert (change.description, change.parameter_additions, change.parameter_removals) == (
        "d", {"a": "1"}, ["b"])
    with pytest.raises(AwsError, match="at most 25"):
        shapes.metadata_update_of({"ParameterRemovals": [str(i) for i in range(26)]})


def test_tessera_errors_map_to_aws_codes_in_one_place() -> None:
    cases = [
        (FeatureGroupNotFoundError("g"), "ResourceNotFound", 404),
        (ConflictError("taken"), "ResourceInUse", 400),
        (PreconditionFailedError("quarantined"), "ValidationException", 400),
        (InvalidRequestError("bad"), "ValidationException", 400),
        (StorageError("disk"), "ServiceUnavailable", 503),
    ]
    for exc, code, status in cases:
        error = shapes.aws_error(exc)
        assert (error.code, error.status, error.message) == (code, status, exc.message)
