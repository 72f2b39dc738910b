"""The SageMaker control plane (server/sagemaker_control.py) driven by real boto3 against a real
server process (`server`: --workers 1 and 2): every operation, its errors, pagination, and
groups shared with Tessera's own SDK both ways."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tessera.client import FeatureStoreClient
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
T = TypeVar("T")
_ids = itertools.count()


@pytest.fixture(scope="module")
def sm(server: ServerProcess) -> Any:
    return boto3.client(
        "sagemaker", endpoint_url=server.http_url, region_name=REGION,
        aws_access_key_id="AKIDTESSERA", aws_secret_access_key="not-checked",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def fs(server: ServerProcess) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as client:
        yield client


def _name(stem: str) -> str:
    return f"sm_{stem}_{next(_ids)}"


def _features(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"FeatureName": "user_id", "FeatureType": "String"},
        {"FeatureName": "ts", "FeatureType": "Fractional"},
        {"FeatureName": "clicks", "FeatureType": "Integral"},
        *extra,
    ]


def _create(sm: Any, name: str, **extra: Any) -> str:
    args: dict[str, Any] = {
        "FeatureGroupName": name, "RecordIdentifierFeatureName": "user_id",
        "EventTimeFeatureName": "ts", "FeatureDefinitions": _features(),
        "OnlineStoreConfig": {"EnableOnlineStore": True}, **extra,
    }
    return str(sm.create_feature_group(**args)["FeatureGroupArn"])


def _eventually(check: Callable[[], T]) -> T:
    """`check()` once it passes: with --workers 2, a call through another connection may reach
    the other serving process, whose registry sees a change after its next catch-up (every
    ~10 ms; a group it does not know at all is looked up at once)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return check()
        except (AssertionError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_a_group_is_created_described_listed_and_deleted(sm: Any) -> None:
    name = _name("Full")
    offline = {
        "S3StorageConfig": {"S3Uri": "s3://bucket/prefix", "KmsKeyId": "key-1"},
        "DataCatalogConfig": {"TableName": "t", "Catalog": "AwsDataCatalog", "Database": "db"},
        "DisableGlueTableCreation": False, "TableFormat": "Glue",
    }
    arn = _create(
        sm, name,
        FeatureDefinitions=_features(
            {"FeatureName": "tags", "FeatureType": "String", "CollectionType": "List"},
            {"FeatureName": "ids", "FeatureType": "Integral", "CollectionType": "Set"},
            {"FeatureName": "emb", "FeatureType": "Fractional", "CollectionType": "Vector",
             "CollectionConfig": {"VectorConfig": {"Dimension": 4}}},
        ),
        OnlineStoreConfig={"EnableOnlineStore": True, "StorageType": "InMemory",
                           "SecurityConfig": {"KmsKeyId": "kms-1"},
                           "TtlDuration": {"Unit": "Days", "Value": 3}},
        OfflineStoreConfig=offline,
        ThroughputConfig={"ThroughputMode": "Provisioned", "ProvisionedReadCapacityUnits": 5,
                          "ProvisionedWriteCapacityUnits": 6},
        RoleArn="arn:aws:iam::123456789012:role/feature-store",
        Description="users' clicks", Tags=[{"Key": "team", "Value": "growth"}],
    )
    assert arn == f"arn:aws:sagemaker:{REGION}:000000000000:feature-group/{name.lower()}"
    by_name = sm.describe_feature_group(FeatureGroupName=name)
    by_arn = sm.describe_feature_group(FeatureGroupName=arn)  # lower case: found in any case
    for d in (by_name, by_arn):
        assert d["FeatureGroupName"] == name and d["FeatureGroupArn"] == arn
    d = by_name
    assert d["FeatureDefinitions"][3:] == [
        {"FeatureName": "tags", "FeatureType": "String", "CollectionType": "List"},
        {"FeatureName": "ids", "FeatureType": "Integral", "CollectionType": "Set"},
        {"FeatureName": "emb", "FeatureType": "Fractional", "CollectionType": "Vector",
         "CollectionConfig": {"VectorConfig": {"Dimension": 4}}},
    ]
    assert d["RecordIdentifierFeatureName"] == "user_id" and d["EventTimeFeatureName"] == "ts"
    assert d["OnlineStoreConfig"] == {
        "EnableOnlineStore": True, "TtlDuration": {"Unit": "Days", "Value": 3},
        "StorageType": "InMemory", "SecurityConfig": {"KmsKeyId": "kms-1"}}
    assert d["OfflineStoreConfig"] == offline
    assert d["OfflineStoreStatus"] == {"Status": "Active"}
    assert d["ThroughputConfig"]["ThroughputMode"] == "Provisioned"
    assert d["RoleArn"] == "arn:aws:iam::123456789012:role/feature-store"
    assert d["FeatureGroupStatus"] == "Created" and d["Description"] == "users' clicks"
    assert isinstance(d["CreationTime"], datetime) and "NextToken" in d
    listed = sm.list_feature_groups(NameContains=name.upper())["FeatureGroupSummaries"]
    assert [(s["FeatureGroupName"], s["FeatureGroupArn"]) for s in listed] == [(name, arn)]

    sm.delete_feature_group(FeatureGroupName=name)
    with pytest.raises(sm.exceptions.ResourceNotFound):
        sm.describe_feature_group(FeatureGroupName=arn)
    assert sm.list_feature_groups(NameContains=name)["FeatureGroupSummaries"] == []


def test_no_offline_store_config_means_no_offline_store(sm: Any) -> None:
    name = _name("online_only")
    _create(sm, name)
    d = sm.describe_feature_group(FeatureGroupName=name)
    assert "OfflineStoreConfig" not in d and d["OfflineStoreStatus"] == {"Status": "Disabled"}
    assert sm.list_feature_groups(NameContains=name, OfflineStoreStatusEquals="Disabled")[
        "FeatureGroupSummaries"][0]["FeatureGroupName"] == name
    with pytest.raises(ClientError) as exc:
        _create(sm, _name("no_store"), OnlineStoreConfig={"EnableOnlineStore": False})
    assert _code(exc) == "ValidationException" and "enable at least one" in str(exc.value)


def test_bad_requests_get_precise_errors_and_change_nothing(sm: Any,
                                                            server: ServerProcess) -> None:
    name = _name("errors")
    _create(sm, name)
    with pytest.raises(sm.exceptions.ResourceInUse, match="already exists"):
        _create(sm, name)
    with pytest.raises(sm.exceptions.ResourceInUse, match="only in case"):
        _create(sm, name.upper())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"FeatureDefinitions": _features({"FeatureName": "x", "FeatureType": "Decimal"})},
         "FeatureType 'Decimal' is not valid; allowed: Integral, Fractional, String"),
        ({"FeatureDefinitions": _features(
            {"FeatureName": "v", "FeatureType": "Integral", "CollectionType": "Vector",
             "CollectionConfig": {"VectorConfig": {"Dimension": 2}}})},
         "a Vector holds float32 values"),
        ({"OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": "s3://b/p"},
                                 "TableFormat": "Iceberg"}},
         "OfflineStoreConfig.TableFormat 'Iceberg' cannot be honoured"),
        ({"EventTimeFeatureName": "clicks"}, "event_time_feature_name 'clicks' has type"),
        ({"OnlineStoreConfig": {"EnableOnlineStore": True,
                                "TtlDuration": {"Unit": "Years", "Value": 1}}},
         "'OnlineStoreConfig.TtlDuration.Unit' 'Years' is not valid"),
    ]
    for change, message in cases:
        with pytest.raises(ClientError) as exc:
            _create(sm, _name("bad"), **change)
        assert _code(exc) == "ValidationException", change
        assert message in exc.value.response["Error"]["Message"], change
    with pytest.raises(ClientError) as exc:
        sm.describe_feature_group(FeatureGroupName="bad name!")
    assert _code(exc) == "ValidationException"
    for call in (
        lambda: sm.describe_feature_group(FeatureGroupName="sm_no_such_group"),
        lambda: sm.delete_feature_group(FeatureGroupName="sm_no_such_group"),
        lambda: sm.update_feature_group(
            FeatureGroupName="sm_no_such_group",
            OnlineStoreConfig={"TtlDuration": {"Unit": "Days", "Value": 1}}),
        lambda: sm.describe_feature_metadata(FeatureGroupName="sm_no_such_group",
                                             FeatureName="clicks"),
        lambda: sm.describe_feature_metadata(FeatureGroupName=name, FeatureName="nope"),
        lambda: sm.update_feature_metadata(FeatureGroupName=name, FeatureName="nope",
                                           Description="x"),
    ):
        with pytest.raises(sm.exceptions.ResourceNotFound):
            call()
    assert sm.list_feature_groups(NameContains="sm_bad_")["FeatureGroupSummaries"] == []
    raw = [
        ({"x-amz-target": "SageMaker.CreateModel"}, b"{}", "UnknownOperationException"),
        ({}, b"{}", "UnknownOperationException"),
        ({"x-amz-target": "SageMaker.ListFeatureGroups"}, b"{not json",
         "SerializationException"),
    ]
    for headers, body, code in raw:
        r = httpx.post(server.http_url + "/", content=body, headers={
            "content-type": "application/x-amz-json-1.1", **headers})
        assert r.status_code == 400 and r.json()["__type"] == code, r.text


def test_update_adds_features_and_sets_the_ttl(sm: Any, fs: FeatureStoreClient) -> None:
    name = _name("update")
    arn = _create(sm, name, ThroughputConfig={"ThroughputMode": "OnDemand"})
    out = sm.update_feature_group(
        FeatureGroupName=arn,
        FeatureAdditions=[{"FeatureName": "score", "FeatureType": "Fractional"}],
        OnlineStoreConfig={"TtlDuration": {"Unit": "Hours", "Value": 2}},
    )
    assert out["FeatureGroupArn"] == arn
    d = sm.describe_feature_group(FeatureGroupName=name)
    assert d["FeatureDefinitions"][-1] == {"FeatureName": "score", "FeatureType": "Fractional"}
    assert d["OnlineStoreConfig"]["TtlDuration"] == {"Unit": "Hours", "Value": 2}
    assert d["LastUpdateStatus"] == {"Status": "Successful"}
    def version_2() -> None:
        assert fs.describe_feature_group(name)["version"] == 2

    _eventually(version_2)
    with pytest.raises(sm.exceptions.ResourceInUse, match="already exists"):
        sm.update_feature_group(FeatureGroupName=name, FeatureAdditions=[
            {"FeatureName": "score", "FeatureType": "Integral"}])
    with pytest.raises(ClientError) as exc:
        sm.update_feature_group(FeatureGroupName=name)
    assert _code(exc) == "ValidationException" and "changes nothing" in str(exc.value)


def test_feature_metadata_is_updated_and_described(sm: Any, fs: FeatureStoreClient) -> None:
    name = _name("meta")
    arn = _create(sm, name)
    assert sm.update_feature_metadata(
        FeatureGroupName=arn, FeatureName="clicks", Description="clicks in a session",
        ParameterAdditions=[{"Key": "owner", "Value": "growth"},
                            {"Key": "unit", "Value": "count"}],
    )["ResponseMetadata"]["HTTPStatusCode"] == 200
    m = sm.describe_feature_metadata(FeatureGroupName=name, FeatureName="clicks")
    assert (m["FeatureGroupArn"], m["FeatureName"], m["FeatureType"]) == (arn, "clicks",
                                                                          "Integral")
    assert m["Description"] == "clicks in a session"
    assert m["Parameters"] == [{"Key": "owner", "Value": "growth"},
                               {"Key": "unit", "Value": "count"}]
    assert m["LastModifiedTime"] > m["CreationTime"]
    sm.update_feature_metadata(FeatureGroupName=name, FeatureName="clicks",
                               ParameterRemovals=["unit"])
    m = sm.describe_feature_metadata(FeatureGroupName=name, FeatureName="clicks")
    assert m["Parameters"] == [{"Key": "owner", "Value": "growth"}]
    def seen_by_sdk() -> None:
        clicks = fs.describe_feature_group(name)["feature_definitions"][2]
        assert clicks["description"] == "clicks in a session"
        assert clicks["parameters"] == {"owner": "growth"}

    _eventually(seen_by_sdk)
    with pytest.raises(ClientError) as exc:
        sm.update_feature_metadata(FeatureGroupName=name, FeatureName="clicks",
                                   ParameterAdditions=[{"Key": "bad{key}", "Value": "v"}])
    assert _code(exc) == "ValidationException" and "bad{key}" in str(exc.value)


def test_list_feature_groups_pages_sorts_and_filters(sm: Any) -> None:
    prefix = _name("page")
    names = [f"{prefix}_{i}" for i in range(5)]
    for n in names:
        _create(sm, n)
    first = sm.list_feature_groups(NameContains=prefix, SortBy="Name", SortOrder="Ascending",
                                   MaxResults=2)
    assert [s["FeatureGroupName"] for s in first["FeatureGroupSummaries"]] == names[:2]
    pages = sm.get_paginator("list_feature_groups").paginate(
        NameContains=prefix, SortBy="Name", SortOrder="Ascending", PaginationConfig={
            "PageSize": 2})
    got = [[s["FeatureGroupName"] for s in p["FeatureGroupSummaries"]] for p in pages]
    assert got == [names[:2], names[2:4], names[4:]]
    newest_first = sm.list_feature_groups(NameContains=prefix)["FeatureGroupSummaries"]
    assert [s["FeatureGroupName"] for s in newest_first] == names[::-1]  # CreationTime, desc
    # botocore sends whole seconds: the groups were made within one or two of them
    made = sm.describe_feature_group(FeatureGroupName=names[0])["CreationTime"]
    second = timedelta(seconds=1)
    for window, expected in [
        ({"CreationTimeAfter": made - second}, names),
        ({"CreationTimeAfter": made - second, "CreationTimeBefore": made - second}, []),
        ({"CreationTimeAfter": made + timedelta(hours=1)}, []),
        ({"CreationTimeBefore": made + timedelta(hours=1)}, names),
    ]:
        listed = sm.list_feature_groups(NameContains=prefix, SortOrder="Ascending", **window)
        assert [s["FeatureGroupName"] for s in listed["FeatureGroupSummaries"]] == expected
    with pytest.raises(ClientError) as exc:  # a token of another request
        sm.list_feature_groups(NameContains=prefix, SortBy="CreationTime",
                               NextToken=first["NextToken"])
    assert _code(exc) == "ValidationException" and "NextToken" in str(exc.value)


def test_search_finds_groups_and_features(sm: Any) -> None:
    prefix = _name("search")
    a, b = f"{prefix}_a", f"{prefix}_b"
    _create(sm, a, Tags=[{"Key": "team", "Value": "growth"}], Description="clicks per user",
            FeatureDefinitions=_features(
                {"FeatureName": "emb", "FeatureType": "Fractional", "CollectionType": "Vector",
                 "CollectionConfig": {"VectorConfig": {"Dimension": 2}}}))
    _create(sm, b, Tags=[{"Key": "team", "Value": "ads"}])
    mine = {"Name": "FeatureGroupName", "Operator": "Contains", "Value": prefix}

    def groups(**args: Any) -> list[str]:
        out = sm.search(Resource="FeatureGroup", **args)
        return [r["FeatureGroup"]["FeatureGroupName"] for r in out["Results"]]

    assert groups(SearchExpression={"Filters": [
        mine, {"Name": "Tags.team", "Operator": "Equals", "Value": "growth"}]}) == [a]
    assert groups(SearchExpression={"Filters": [mine], "NestedFilters": [{
        "NestedPropertyName": "FeatureDefinitions", "Filters": [
            {"Name": "FeatureDefinitions.FeatureName", "Operator": "Equals", "Value": "emb"},
            {"Name": "FeatureDefinitions.CollectionType", "Operator": "Equals",
             "Value": "Vector"}]}]}) == [a]
    assert groups(SearchExpression={"Filters": [mine], "SubExpressions": [{
        "Operator": "Or", "Filters": [
            {"Name": "Description", "Operator": "Contains", "Value": "CLICKS"},
            {"Name": "AllTags", "Operator": "Equals", "Value": "ads"}]}]},
        SortBy="FeatureGroupName", SortOrder="Ascending") == [a, b]
    found = sm.search(Resource="FeatureGroup", SearchExpression={"Filters": [mine]},
                      SortBy="CreationTime", SortOrder="Ascending", MaxResults=1)
    assert [r["FeatureGroup"]["FeatureGroupName"] for r in found["Results"]] == [a]
    assert found["TotalHits"]["Value"] == 2
    pages = sm.get_paginator("search").paginate(
        Resource="FeatureGroup", SearchExpression={"Filters": [mine]}, SortBy="CreationTime",
        SortOrder="Ascending", PaginationConfig={"PageSize": 1})
    assert [[r["FeatureGroup"]["FeatureGroupName"] for r in p["Results"]] for p in pages] == [
        [a], [b]]

    sm.update_feature_metadata(FeatureGroupName=a, FeatureName="clicks",
                               Description="Clicks in a session",
                               ParameterAdditions=[{"Key": "owner", "Value": "growth"}])
    in_group = {"Name": "FeatureGroupName", "Operator": "Equals", "Value": a}

    def features(*filters: dict[str, Any]) -> list[str]:
        out = sm.search(Resource="FeatureMetadata", SearchExpression={"Filters": [
            in_group, *filters]}, SortBy="FeatureName", SortOrder="Ascending")
        return [r["FeatureMetadata"]["FeatureName"] for r in out["Results"]]

    assert features() == ["clicks", "emb", "ts", "user_id"]
    assert features({"Name": "Parameters.owner", "Operator": "Equals", "Value": "growth"}) == [
        "clicks"]
    assert features({"Name": "AllParameters", "Operator": "Contains", "Value": "grow"}) == [
        "clicks"]
    assert features({"Name": "Description", "Operator": "Contains", "Value": "session"}) == [
        "clicks"]
    assert features({"Name": "FeatureType", "Operator": "In", "Value": "Integral,String"}) == [
        "clicks", "user_id"]
    assert features({"Name": "Description", "Operator": "NotExists"}) == [
        "emb", "ts", "user_id"]

    for args, message in [
        ({"Resource": "TrainingJob"}, "Resource 'TrainingJob' is not searchable"),
        ({"Resource": "FeatureGroup", "VisibilityConditions": [{"Key": "k", "Value": "v"}]},
         "VisibilityConditions cannot be honoured"),
        ({"Resource": "FeatureGroup", "SearchExpression": {"Filters": [
            {"Name": "Colour", "Operator": "Equals", "Value": "red"}]}},
         "property 'Colour' is not searchable here"),
        ({"Resource": "FeatureGroup", "SearchExpression": {"Filters": [
            {"Name": "FeatureGroupName", "Operator": "Resembles", "Value": "x"}]}},
         "Operator 'Resembles' is not valid"),
    ]:
        with pytest.raises(ClientError) as exc:
            sm.search(**args)
        assert _code(exc) == "ValidationException" and message in str(exc.value), args


def test_groups_are_shared_with_tessera_sdk_both_ways(sm: Any, fs: FeatureStoreClient) -> None:
    made_by_boto3 = _name("from_boto3")
    _create(sm, made_by_boto3, FeatureDefinitions=_features(
        {"FeatureName": "emb", "FeatureType": "Fractional", "CollectionType": "Vector",
         "CollectionConfig": {"VectorConfig": {"Dimension": 2}}}))
    record = {"user_id": "u1", "ts": 1_700_000_000.0, "clicks": 3, "emb": [0.5, 1.5]}
    fs.put_record(made_by_boto3, record)
    got = fs.get_record(made_by_boto3, "u1")
    assert got is not None and list(got.pop("emb")) == record.pop("emb") and got == record

    made_by_sdk = _name("from_sdk")
    fs.create_feature_group(made_by_sdk, record_identifier="id", event_time="ts",
                            features={"id": "Integral", "ts": "Fractional",
                                      "names": "Set[String]"}, ttl_s=60, offline=False)
    fs.update_feature_metadata(made_by_sdk, "names", description="aliases",
                               parameters={"pii": "true"})
    d = sm.describe_feature_group(FeatureGroupName=made_by_sdk.upper())
    assert d["FeatureDefinitions"] == [
        {"FeatureName": "id", "FeatureType": "Integral"},
        {"FeatureName": "ts", "FeatureType": "Fractional"},
        {"FeatureName": "names", "FeatureType": "String", "CollectionType": "Set"}]
    assert d["OnlineStoreConfig"] == {"EnableOnlineStore": True,
                                      "TtlDuration": {"Unit": "Seconds", "Value": 60}}
    def seen_by_boto3() -> None:
        m = sm.describe_feature_metadata(FeatureGroupName=made_by_sdk, FeatureName="names")
        assert m["Description"] == "aliases"
        assert m["Parameters"] == [{"Key": "pii", "Value": "true"}]

    _eventually(seen_by_boto3)
    sm.delete_feature_group(FeatureGroupName=made_by_sdk)

    def gone() -> None:
        assert made_by_sdk not in [g["feature_group_name"] for g in fs.list_feature_groups()]

    _eventually(gone)
