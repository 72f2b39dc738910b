"""SageMaker's control-plane shapes <-> Tessera's feature group model (core/schema.py).

Requests arrive as decoded JSON (botocore's `sagemaker` service model, JSON 1.1, PascalCase);
`definition_of` and `update_of` turn them into Tessera's models, refusing with a
ValidationException what Tessera cannot honour (server/sagemaker_control.py lists what is
honoured, kept or refused). `describe`, `summary` and `feature_metadata` turn a registered
group back into SageMaker's response shapes. Timestamps are seconds since the epoch (JSON 1.1's
timestamp format: botocore gives them back as datetimes).

The type mapping is one to one: SageMaker's FeatureType is the scalar (Integral, Fractional,
String), its CollectionType the collection (List, Set, Vector) and a Vector's
CollectionConfig.VectorConfig.Dimension the dimension; Tessera's definitions are the same fields
in snake_case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    TesseraError,
)
from tessera.core.schema import (
    CollectionConfig,
    CollectionType,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
    FeatureMetadataUpdate,
    OfflineStoreConfig,
    OnlineStoreConfig,
    ScalarType,
    Tag,
    TtlDuration,
    VectorConfig,
)
from tessera.server.sagemaker_common import AwsError, feature_group_arn

#: The error code the SageMaker control plane answers a bad request with (its service model
#: names no shape for it; AWS sends `ValidationException`, and boto3 code tests for that).
VALIDATION = "ValidationException"
#: Offline table formats Tessera writes: Hive-partitioned Parquet, what Glue tables read.
TABLE_FORMATS = ("Default", "Glue")

Json = dict[str, Any]


def validation(message: str) -> AwsError:
    return AwsError(VALIDATION, message, 400)


def aws_error(exc: TesseraError) -> AwsError:
    """The one mapping of Tessera's errors (core/errors.py) onto the control plane's codes."""
    if isinstance(exc, NotFoundError):
        return AwsError("ResourceNotFound", exc.message, 404)
    if isinstance(exc, PreconditionFailedError):  # e.g. a quarantined group
        return validation(exc.message)
    if isinstance(exc, ConflictError):  # a name (group, feature) already taken
        return AwsError("ResourceInUse", exc.message, 400)
    if isinstance(exc, InvalidRequestError):
        return validation(exc.message)
    if isinstance(exc, StorageError):
        return AwsError("ServiceUnavailable", exc.message, 503)
    return AwsError("InternalFailure", exc.message, 500)


# --- reading requests ---------------------------------------------------------------------------


def field(req: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
          required: bool = False, where: str = "") -> Any:
    """`req[name]` checked to be of `kind` (ValidationException naming it), or None."""
    value = req.get(name)
    path = f"{where}{name}"
    if value is None:
        if required:
            raise validation(f"1 validation error detected: Value null at '{path}' failed to "
                             "satisfy constraint: Member must not be null")
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise validation(f"'{path}' must be a number, not {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise validation(f"'{path}' must be a {_JSON_TYPES.get(names, names)}, "
                         f"not {_json_type(value)}")
    return value


_JSON_TYPES = {"str": "string", "dict": "structure", "list": "list", "bool": "boolean",
               "int": "integer", "int or float": "number"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value).__name__, type(value).__name__)


def refuse_unknown(req: Mapping[str, Any], known: tuple[str, ...], where: str = "") -> None:
    """Refuse members the operation's shape does not have (a newer SDK's, a typo's)."""
    unknown = [k for k in req if k not in known]
    if unknown:
        raise validation(
            f"{where or 'the request'} has unknown member(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(known)}"
        )


def feature_definition_of(d: Any, where: str) -> FeatureDefinition:
    """A SageMaker FeatureDefinition as Tessera's (types checked when the group is)."""
    if not isinstance(d, dict):
        raise validation(f"'{where}' must be a structure")
    refuse_unknown(d, ("FeatureName", "FeatureType", "CollectionType", "CollectionConfig"),
                   where)
    name = field(d, "FeatureName", str, True, f"{where}.")
    ftype = field(d, "FeatureType", str, True, f"{where}.")
    collection = field(d, "CollectionType", str, False, f"{where}.")
    config = field(d, "CollectionConfig", dict, False, f"{where}.")
    try:
        scalar = ScalarType(ftype)
    except ValueError:
        raise validation(f"feature '{name}': FeatureType '{ftype}' is not valid; allowed: "
                         f"{', '.join(t.value for t in ScalarType)}") from None
    try:
        coll = CollectionType(collection) if collection is not None else None
    except ValueError:
        raise validation(f"feature '{name}': CollectionType '{collection}' is not valid; allowed:"
                         f" {', '.join(t.value for t in CollectionType)}") from None
    collection_config = None
    if config is not None:
        refuse_unknown(config, ("VectorConfig",), f"{where}.CollectionConfig")
        vector = field(config, "VectorConfig", dict, True, f"{where}.CollectionConfig.")
        refuse_unknown(vector, ("Dimension",), f"{where}.CollectionConfig.VectorConfig")
        dim = field(vector, "Dimension", int, True, f"{where}.CollectionConfig.VectorConfig.")
        collection_config = CollectionConfig(vector_config=VectorConfig(dimension=dim))
    return FeatureDefinition(feature_name=name, feature_type=scalar, collection_type=coll,
                             collection_config=collection_config)


def feature_definition_shape(fd: FeatureDefinition) -> Json:
    """Tessera's definition as SageMaker's FeatureDefinition."""
    out: Json = {"FeatureName": fd.feature_name, "FeatureType": fd.feature_type.value}
    if fd.collection_type is not None:
        out["CollectionType"] = fd.collection_type.value
    if fd.collection_config is not None:
        out["CollectionConfig"] = {
            "VectorConfig": {"Dimension": fd.collection_config.vector_config.dimension}}
    return out


def _ttl_of(value: Any, where: str) -> TtlDuration:
    if not isinstance(value, dict):
        raise validation(f"'{where}' must be a structure")
    refuse_unknown(value, ("Unit", "Value"), where)
    unit = field(value, "Unit", str, True, f"{where}.")
    amount = field(value, "Value", int, True, f"{where}.")
    if unit not in ("Seconds", "Minutes", "Hours", "Days", "Weeks"):
        raise validation(f"'{where}.Unit' '{unit}' is not valid; allowed: Seconds, Minutes, "
                         "Hours, Days, Weeks")
    if amount < 1:
        raise validation(f"'{where}.Value' {amount} is not valid; it must be at least 1")
    return TtlDuration(unit=unit, value=amount)


_ONLINE_MEMBERS = ("SecurityConfig", "EnableOnlineStore", "TtlDuration", "StorageType")
_OFFLINE_MEMBERS = ("S3StorageConfig", "DisableGlueTableCreation", "DataCatalogConfig",
                    "TableFormat")
CREATE_MEMBERS = ("FeatureGroupName", "RecordIdentifierFeatureName", "EventTimeFeatureName",
                  "FeatureDefinitions", "OnlineStoreConfig", "OfflineStoreConfig",
                  "ThroughputConfig", "RoleArn", "Description", "Tags")


def definition_of(req: Json) -> FeatureGroupDefinition:
    """CreateFeatureGroup's request as Tessera's definition; the members Tessera keeps without
    acting on go to `compat_config`, as sent."""
    refuse_unknown(req, CREATE_MEMBERS, "CreateFeatureGroupRequest")
    compat: Json = {}
    online_req = field(req, "OnlineStoreConfig", dict) or {}
    refuse_unknown(online_req, _ONLINE_MEMBERS, "OnlineStoreConfig")
    enable_online = field(online_req, "EnableOnlineStore", bool, where="OnlineStoreConfig.")
    ttl = online_req.get("TtlDuration")
    online_kept = {k: online_req[k] for k in ("SecurityConfig", "StorageType") if k in online_req}
    if online_kept:
        compat["OnlineStoreConfig"] = online_kept
    offline_req = field(req, "OfflineStoreConfig", dict)
    if offline_req is not None:
        refuse_unknown(offline_req, _OFFLINE_MEMBERS, "OfflineStoreConfig")
        table_format = field(offline_req, "TableFormat", str, where="OfflineStoreConfig.")
        if table_format is not None and table_format not in TABLE_FORMATS:
            raise validation(
                f"OfflineStoreConfig.TableFormat '{table_format}' cannot be honoured: Tessera's "
                f"offline store writes Hive-partitioned Parquet; allowed: "
                f"{', '.join(TABLE_FORMATS)}")
        compat["OfflineStoreConfig"] = offline_req
    for name in ("ThroughputConfig", "RoleArn"):
        if req.get(name) is not None:
            compat[name] = req[name]
    features = field(req, "FeatureDefinitions", list, True)
    tags = field(req, "Tags", list) or []
    for i, t in enumerate(tags):
        if not isinstance(t, dict):
            raise validation(f"'Tags[{i}]' must be a structure")
        refuse_unknown(t, ("Key", "Value"), f"Tags[{i}]")
    try:
        return FeatureGroupDefinition(
            feature_group_name=field(req, "FeatureGroupName", str, True),
            record_identifier_feature_name=field(req, "RecordIdentifierFeatureName", str, True),
            event_time_feature_name=field(req, "EventTimeFeatureName", str, True),
            feature_definitions=[feature_definition_of(d, f"FeatureDefinitions[{i}]")
                                 for i, d in enumerate(features)],
            # SageMaker: a store is on only when asked for (no OfflineStoreConfig: no offline
            # store; EnableOnlineStore defaults to false).
            online_store_config=OnlineStoreConfig(
                enable_online_store=bool(enable_online),
                ttl_duration=_ttl_of(ttl, "OnlineStoreConfig.TtlDuration")
                if ttl is not None else None,
            ),
            offline_store_config=OfflineStoreConfig(enable_offline_store=offline_req is not None),
            description=field(req, "Description", str),
            tags=[Tag(key=field(t, "Key", str, True, f"Tags[{i}]."),
                      value=field(t, "Value", str, True, f"Tags[{i}]."))
                  for i, t in enumerate(tags)],
            compat_config=compat,
        )
    except ValueError as exc:  # pydantic's, e.g. a tag key past 128 characters
        raise validation(str(exc).replace("\n", "; ")) from None


UPDATE_MEMBERS = ("FeatureGroupName", "FeatureAdditions", "OnlineStoreConfig",
                  "ThroughputConfig")


def update_of(req: Json) -> FeatureGroupUpdate:
    """UpdateFeatureGroup's request as Tessera's update (FeatureAdditions, a new TtlDuration;
    StorageType and ThroughputConfig are kept, as sent)."""
    refuse_unknown(req, UPDATE_MEMBERS, "UpdateFeatureGroupRequest")
    additions = field(req, "FeatureAdditions", list) or []
    online = field(req, "OnlineStoreConfig", dict) or {}
    refuse_unknown(online, ("TtlDuration", "StorageType"), "OnlineStoreConfig")
    compat: Json = {}
    if req.get("ThroughputConfig") is not None:
        compat["ThroughputConfig"] = field(req, "ThroughputConfig", dict)
    if online.get("StorageType") is not None:
        compat["OnlineStoreConfig"] = {"StorageType": online["StorageType"]}
    ttl = online.get("TtlDuration")
    return FeatureGroupUpdate(
        feature_additions=[feature_definition_of(d, f"FeatureAdditions[{i}]")
                           for i, d in enumerate(additions)],
        ttl_duration=_ttl_of(ttl, "OnlineStoreConfig.TtlDuration") if ttl is not None else None,
        compat_config=compat,
    )


def metadata_update_of(req: Json) -> FeatureMetadataUpdate:
    """UpdateFeatureMetadata's Description, ParameterAdditions and ParameterRemovals."""
    additions = field(req, "ParameterAdditions", list) or []
    removals = field(req, "ParameterRemovals", list) or []
    if len(additions) > 25 or len(removals) > 25:
        raise validation("ParameterAdditions and ParameterRemovals take at most 25 entries each")
    added: dict[str, str] = {}
    for i, p in enumerate(additions):
        if not isinstance(p, dict):
            raise validation(f"'ParameterAdditions[{i}]' must be a structure")
        refuse_unknown(p, ("Key", "Value"), f"ParameterAdditions[{i}]")
        added[field(p, "Key", str, True, f"ParameterAdditions[{i}].")] = field(
            p, "Value", str, True, f"ParameterAdditions[{i}].")
    for i, k in enumerate(removals):
        if not isinstance(k, str):
            raise validation(f"'ParameterRemovals[{i}]' must be a string")
    return FeatureMetadataUpdate(description=field(req, "Description", str),
                                 parameter_additions=added, parameter_removals=removals)


# --- writing responses --------------------------------------------------------------------------


def offline_status(group: FeatureGroup) -> Json:
    enabled = group.definition.offline_store_config.enable_offline_store
    return {"Status": "Active" if enabled else "Disabled"}


def describe(group: FeatureGroup, region: str, failure: str | None = None) -> Json:
    """DescribeFeatureGroup's response (without NextToken): what SageMaker's FeatureGroup
    shape holds, the members kept at creation echoed. `failure`: a quarantined group's reason
    (FeatureGroupStatus CreateFailed)."""
    d = group.definition
    compat = d.compat_config
    online: Json = {"EnableOnlineStore": d.online_store_config.enable_online_store}
    ttl = d.online_store_config.ttl_duration
    if ttl is not None:
        online["TtlDuration"] = {"Unit": ttl.unit, "Value": ttl.value}
    online.update(compat.get("OnlineStoreConfig", {}))
    out: Json = {
        "FeatureGroupArn": feature_group_arn(group.name, region),
        "FeatureGroupName": group.name,
        "RecordIdentifierFeatureName": d.record_identifier_feature_name,
        "EventTimeFeatureName": d.event_time_feature_name,
        "FeatureDefinitions": [feature_definition_shape(fd) for fd in d.feature_definitions],
        "CreationTime": group.creation_time,
        "LastModifiedTime": group.last_modified_time,
        "OnlineStoreConfig": online,
        "FeatureGroupStatus": "CreateFailed" if failure else "Created",
        "OfflineStoreStatus": offline_status(group),
        "ThroughputConfig": compat.get("ThroughputConfig", {"ThroughputMode": "OnDemand"}),
    }
    if d.offline_store_config.enable_offline_store:
        out["OfflineStoreConfig"] = compat.get("OfflineStoreConfig", {})
    if group.last_modified_time != group.creation_time:
        out["LastUpdateStatus"] = {"Status": "Successful"}
    if "RoleArn" in compat:
        out["RoleArn"] = compat["RoleArn"]
    if d.description is not None:
        out["Description"] = d.description
    if failure:
        out["FailureReason"] = failure
    return out


def summary(group: FeatureGroup, region: str) -> Json:
    """ListFeatureGroups' FeatureGroupSummary."""
    return {
        "FeatureGroupName": group.name,
        "FeatureGroupArn": feature_group_arn(group.name, region),
        "CreationTime": group.creation_time,
        "FeatureGroupStatus": "Created",
        "OfflineStoreStatus": offline_status(group),
    }


def tags_shape(group: FeatureGroup) -> list[Json]:
    return [{"Key": t.key, "Value": t.value} for t in group.definition.tags]


def feature_metadata(group: FeatureGroup, fd: FeatureDefinition, region: str) -> Json:
    """DescribeFeatureMetadata's response (also Search's FeatureMetadata record)."""
    times = group.times_of(fd.feature_name)
    out: Json = {
        "FeatureGroupArn": feature_group_arn(group.name, region),
        "FeatureGroupName": group.name,
        "FeatureName": fd.feature_name,
        "FeatureType": fd.feature_type.value,
        "CreationTime": times.creation_time,
        "LastModifiedTime": times.last_modified_time,
        "Parameters": [{"Key": k, "Value": v} for k, v in fd.parameters.items()],
    }
    if fd.description is not None:
        out["Description"] = fd.description
    return out
