"""The SageMaker Feature Store runtime API, driven by real boto3 clients against a real server
process (both layouts), and the same records seen through Tessera's gRPC SDK."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tessera.client import FeatureStoreClient
from tessera.server.sagemaker_common import feature_group_arn
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
_groups = itertools.count()

FEATURES = {
    "user_id": "String", "ts": "Fractional", "clicks": "Integral", "ctr": "Fractional",
    "name": "String", "tags": "List[String]", "ids": "Set[Integral]", "scores": "List[Fractional]",
    "emb": "Vector[3]",
}


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as client:
        yield client


@pytest.fixture(scope="module")
def runtime(server: ServerProcess) -> Any:
    return boto3.client(
        "sagemaker-featurestore-runtime", endpoint_url=server.http_url, region_name="eu-west-1",
        aws_access_key_id="AKIDTESSERA", aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def group(sdk: FeatureStoreClient) -> str:
    """The module's group (records of each test have ids of their own)."""
    name = f"SageMaker_Users_{next(_groups)}"
    sdk.create_feature_group(name, "user_id", "ts", FEATURES)
    return name


@pytest.fixture(scope="module")
def int_group(sdk: FeatureStoreClient) -> str:
    name = f"sm_ints_{next(_groups)}"
    sdk.create_feature_group(name, "id", "event_time", {"id": "Integral", "event_time": "String",
                                                        "v": "Integral"})
    return name


def fv(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {"FeatureName": name, "ValueAsStringList": [str(v) for v in value]}
    return {"FeatureName": name, "ValueAsString": str(value)}


def record(user: str, ts: float = T0, **more: Any) -> list[dict[str, Any]]:
    values = {"user_id": user, "ts": ts, "clicks": 3, "ctr": 0.25, "name": "Ada",
              "tags": ["a", "b"], "ids": [3, 1], "scores": [0.5, 1.5], "emb": [0.1, 0.2, 0.3]}
    values.update(more)
    return [fv(k, v) for k, v in values.items() if v is not None]


def as_dict(rec: list[dict[str, Any]]) -> dict[str, Any]:
    return {f["FeatureName"]: f.get("ValueAsString", f.get("ValueAsStringList")) for f in rec}


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


def eventually(read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """`read()` until `done` (a serving process reads a secondary: ~10 ms behind a write made
    through another process, unless the read carries its token)."""
    deadline = time.monotonic() + 5.0
    while True:
        got = read()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def token_of(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["HTTPHeaders"]["x-tessera-write-token"])


# --- PutRecord / GetRecord ---------------------------------------------------------------------


def test_put_then_get_every_type_as_strings_and_through_grpc(
    runtime: Any, sdk: FeatureStoreClient, group: str,
) -> None:
    put = runtime.put_record(FeatureGroupName=group, Record=record("u1"))
    got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="u1")
    assert as_dict(got["Record"]) == {
        "user_id": "u1", "ts": "1700000000.0", "clicks": "3", "ctr": "0.25", "name": "Ada",
        "tags": ["a", "b"], "ids": ["3", "1"], "scores": ["0.5", "1.5"],
        "emb": ["0.1", "0.2", "0.3"],
    }
    assert "ExpiresAt" not in got
    # The same record through gRPC, typed, after the write's token.
    seen = sdk.get_record(group, "u1", consistent_after=token_of(put))
    assert seen is not None and seen["clicks"] == 3 and seen["ctr"] == 0.25
    np.testing.assert_array_equal(seen["emb"], np.array([0.1, 0.2, 0.3], dtype=np.float32))


def test_a_record_written_through_grpc_reads_through_boto3_with_feature_names(
    runtime: Any, sdk: FeatureStoreClient, group: str,
) -> None:
    sdk.put_record(group, {"user_id": "g1", "ts": T0, "clicks": 7, "name": "Grace"})
    got = eventually(
        lambda: runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="g1",
                                   FeatureNames=["clicks", "name"]),
        lambda r: "Record" in r)
    assert as_dict(got["Record"]) == {"clicks": "7", "name": "Grace"}


def test_get_by_lower_case_arn_and_a_missing_record_has_no_record(
    runtime: Any, group: str,
) -> None:
    runtime.put_record(FeatureGroupName=group, Record=record("arn1"))
    arn = feature_group_arn(group, "eu-west-1")
    assert arn.endswith(group.lower())
    got = runtime.get_record(FeatureGroupName=arn, RecordIdentifierValueAsString="arn1")
    assert as_dict(got["Record"])["user_id"] == "arn1"
    missing = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="nobody")
    assert "Record" not in missing and missing["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_ttl_duration_gives_expires_at(runtime: Any, group: str) -> None:
    now = time.time()
    runtime.put_record(FeatureGroupName=group, Record=record("ttl1", ts=now),
                       TtlDuration={"Unit": "Hours", "Value": 2})
    got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="ttl1",
                             ExpirationTimeResponse="Enabled")
    assert got["ExpiresAt"].endswith("Z")
    expires = datetime.fromisoformat(got["ExpiresAt"]).timestamp()
    assert abs(expires - (now + 7200)) < 0.01


def test_errors_unknown_group_bad_type_unknown_feature_bad_ttl(runtime: Any, group: str) -> None:
    code, status, message = error_of(lambda: runtime.get_record(
        FeatureGroupName="no_such_group", RecordIdentifierValueAsString="x"))
    assert (code, status) == ("ResourceNotFound", 404) and "no_such_group" in message
    code, status, message = error_of(lambda: runtime.put_record(
        FeatureGroupName=group, Record=record("bad", clicks="many")))
    assert (code, status) == ("ValidationError", 400)
    assert "'clicks' has type Integral; 'many' is not an Integral" in message
    code, _, message = error_of(lambda: runtime.put_record(
        FeatureGroupName=group, Record=[*record("bad"), fv("color", "red")]))
    assert code == "ValidationError" and "feature 'color' is not in group" in message
    code, _, message = error_of(lambda: runtime.put_record(
        FeatureGroupName=group, Record=record("bad", emb=[1, 2])))
    assert code == "ValidationError" and "Vector[3]" in message
    code, _, message = error_of(lambda: runtime.put_record(
        FeatureGroupName=group, Record=record("bad", tags="a")))
    assert code == "ValidationError" and "ValueAsStringList, not ValueAsString" in message
    code, _, message = error_of(lambda: runtime.put_record(
        FeatureGroupName=group, Record=record("bad"), TtlDuration={"Unit": "Years", "Value": 1}))
    assert code == "ValidationError" and "Unit is one of" in message
    code, _, _ = error_of(lambda: runtime.put_record(
        FeatureGroupName="no_such_group", Record=record("bad")))
    assert code == "ResourceNotFound"
    # Nothing of them was written.
    got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="bad")
    assert "Record" not in got


def test_an_older_put_keeps_the_online_record(runtime: Any, group: str) -> None:
    runtime.put_record(FeatureGroupName=group, Record=record("old1", ts=T0 + 10, clicks=10))
    runtime.put_record(FeatureGroupName=group, Record=record("old1", ts=T0, clicks=1))
    got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="old1")
    assert as_dict(got["Record"])["clicks"] == "10"


def test_integral_identifier_and_iso_event_time(runtime: Any, int_group: str) -> None:
    runtime.put_record(FeatureGroupName=int_group, Record=[
        fv("id", 42), fv("event_time", "2026-01-02T03:04:05Z"), fv("v", -7)])
    got = runtime.get_record(FeatureGroupName=int_group, RecordIdentifierValueAsString="042")
    assert as_dict(got["Record"]) == {"id": "42", "event_time": "2026-01-02T03:04:05Z",
                                      "v": "-7"}
    code, _, message = error_of(lambda: runtime.get_record(
        FeatureGroupName=int_group, RecordIdentifierValueAsString="forty-two"))
    assert code == "ValidationError" and "not an Integral" in message


# --- DeleteRecord ------------------------------------------------------------------------------


def test_soft_and_hard_delete(runtime: Any, sdk: FeatureStoreClient, group: str) -> None:
    for rid in ("d1", "d2"):
        runtime.put_record(FeatureGroupName=group, Record=record(rid))
    runtime.delete_record(FeatureGroupName=group, RecordIdentifierValueAsString="d1",
                          EventTime=str(T0 + 1))
    deleted = runtime.delete_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="d2",
        EventTime="2023-11-14T22:13:21Z", DeletionMode="HardDelete")
    for rid in ("d1", "d2"):
        got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString=rid)
        assert "Record" not in got
    assert sdk.get_record(group, "d1", consistent_after=token_of(deleted)) is None
    # The soft delete's tombstone hides an older put; a hard delete leaves none.
    runtime.put_record(FeatureGroupName=group, Record=record("d1", ts=T0))
    runtime.put_record(FeatureGroupName=group, Record=record("d2", ts=T0))
    assert "Record" not in runtime.get_record(FeatureGroupName=group,
                                              RecordIdentifierValueAsString="d1")
    assert "Record" in runtime.get_record(FeatureGroupName=group,
                                          RecordIdentifierValueAsString="d2")
    code, _, message = error_of(lambda: runtime.delete_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="d2", EventTime="yesterday"))
    assert code == "ValidationError" and "EventTime" in message
    code, _, _ = error_of(lambda: runtime.delete_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="d2", EventTime=str(T0 - 5),
        DeletionMode="HardDelete"))
    assert code == "ValidationError", "a hard delete older than the record is refused"


def test_target_stores_offline_only_leaves_the_online_record(runtime: Any, group: str) -> None:
    runtime.put_record(FeatureGroupName=group, Record=record("t1", clicks=1))
    runtime.put_record(FeatureGroupName=group, Record=record("t1", ts=T0 + 5, clicks=2),
                       TargetStores=["OfflineStore"])
    got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="t1")
    assert as_dict(got["Record"])["clicks"] == "1"
    runtime.delete_record(FeatureGroupName=group, RecordIdentifierValueAsString="t1",
                          EventTime=str(T0 + 9), TargetStores=["OfflineStore"])
    assert "Record" in runtime.get_record(FeatureGroupName=group,
                                          RecordIdentifierValueAsString="t1")


# --- BatchGetRecord / BatchWriteRecord ---------------------------------------------------------


def test_batch_get_records_errors_and_unprocessed_identifiers(runtime: Any, group: str) -> None:
    written = runtime.batch_write_record(Entries=[
        {"FeatureGroupName": group, "Record": record(f"b{i}", clicks=i)} for i in range(3)])
    assert written["Errors"] == [] and written["UnprocessedEntries"] == []
    ids = ["b0", "b1", "missing", "b2"] + [f"x{i}" for i in range(100)]
    got = runtime.batch_get_record(Identifiers=[
        {"FeatureGroupName": group, "RecordIdentifiersValueAsString": ids,
         "FeatureNames": ["clicks"]},
        {"FeatureGroupName": "no_such_group", "RecordIdentifiersValueAsString": ["a"]},
    ])
    found = {r["RecordIdentifierValueAsString"]: as_dict(r["Record"]) for r in got["Records"]}
    assert found == {"b0": {"clicks": "0"}, "b1": {"clicks": "1"}, "b2": {"clicks": "2"}}
    assert all(r["FeatureGroupName"] == group for r in got["Records"])
    assert [(e["FeatureGroupName"], e["RecordIdentifierValueAsString"], e["ErrorCode"])
            for e in got["Errors"]] == [("no_such_group", "a", "ResourceNotFound")]
    (rest,) = got["UnprocessedIdentifiers"]
    assert rest["FeatureGroupName"] == group and rest["FeatureNames"] == ["clicks"]
    assert rest["RecordIdentifiersValueAsString"] == [f"x{i}" for i in range(96, 100)]


def test_batch_write_reports_bad_entries_and_writes_the_others(
    runtime: Any, sdk: FeatureStoreClient, group: str,
) -> None:
    out = runtime.batch_write_record(Entries=[
        {"FeatureGroupName": group, "Record": record("w1")},
        {"FeatureGroupName": group, "Record": record("w2", clicks="x")},
        {"FeatureGroupName": "no_such_group", "Record": record("w3")},
        {"FeatureGroupName": feature_group_arn(group), "Record": record("w4", ts=time.time()),
         "TtlDuration": {"Unit": "Days", "Value": 1}},
    ])
    assert [(e["Entry"]["Record"][0]["ValueAsString"], e["ErrorCode"]) for e in out["Errors"]] == [
        ("w2", "ValidationError"), ("w3", "ResourceNotFound")]
    assert "Entries[1].Record" in out["Errors"][0]["ErrorMessage"]
    assert out["UnprocessedEntries"] == []
    token = token_of(out)
    got = sdk.batch_get_record({group: ["w1", "w2", "w4"]}, consistent_after=token)
    assert sorted(r["record_identifier"] for r in got.records) == ["w1", "w4"]


# --- UpdateRecord ------------------------------------------------------------------------------


def test_update_record_merges_features_into_the_stored_record(
    runtime: Any, sdk: FeatureStoreClient, group: str,
) -> None:
    runtime.put_record(FeatureGroupName=group, Record=record("up1"))
    out = runtime.update_record(FeatureGroupName=group, RecordIdentifierValueAsString="up1",
                                Features=[fv("ts", T0 + 1), fv("clicks", 99),
                                          fv("tags", ["z"])])
    got = sdk.get_record(group, "up1", consistent_after=token_of(out))
    assert got is not None and got["clicks"] == 99 and got["tags"] == ["z"]
    assert got["name"] == "Ada" and got["ts"] == T0 + 1, "the other features are kept"


def test_update_record_errors(runtime: Any, group: str) -> None:
    runtime.put_record(FeatureGroupName=group, Record=record("up2", ts=T0 + 10))
    code, status, message = error_of(lambda: runtime.update_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="up2",
        Features=[fv("ts", T0), fv("clicks", 1)]))
    assert (code, status) == ("ConflictException", 409) and "older than the stored" in message
    code, status, message = error_of(lambda: runtime.update_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="nobody",
        Features=[fv("ts", T0 + 20), fv("clicks", 1)]))
    assert (code, status) == ("ResourceNotFound", 404) and "does not exist" in message
    code, _, message = error_of(lambda: runtime.update_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="up2", Features=[fv("clicks", 1)]))
    assert code == "ValidationError" and "event time feature 'ts'" in message
    code, _, message = error_of(lambda: runtime.update_record(
        FeatureGroupName=group, RecordIdentifierValueAsString="up2",
        Features=[fv("ts", T0 + 20), fv("ctr", "high")]))
    assert code == "ValidationError" and "'high' is not a Fractional" in message
    got = runtime.get_record(FeatureGroupName=group, RecordIdentifierValueAsString="up2")
    assert as_dict(got["Record"])["clicks"] == "3", "nothing was changed"


def test_concurrent_updates_keep_each_others_features(
    runtime: Any, server: ServerProcess, group: str,
) -> None:
    runtime.put_record(FeatureGroupName=group, Record=record("race"))
    # Each round, one client per feature updates its feature at once, all from the same stored
    # record: without the conditional write, the last one would drop the others' changes.
    changes = {"clicks": lambda r: r, "ctr": lambda r: r + 0.5, "name": lambda r: f"n{r}",
               "tags": lambda r: [f"t{r}"], "ids": lambda r: [r], "scores": lambda r: [r + 0.5],
               "emb": lambda r: [r + 0.0] * 3}
    clients = [boto3.client(
        "sagemaker-featurestore-runtime", endpoint_url=server.http_url, region_name="us-east-1",
        aws_access_key_id="AKID", aws_secret_access_key="s") for _ in changes]
    failures: list[BaseException] = []
    rounds = 4
    barrier = threading.Barrier(len(changes))

    def update(client: Any, feature: str, value_of: Callable[[int], Any]) -> None:
        for r in range(1, rounds + 1):
            barrier.wait()
            try:  # one event time: equal ones apply in write order
                client.update_record(FeatureGroupName=group, RecordIdentifierValueAsString="race",
                                     Features=[fv("ts", T0 + r), fv(feature, value_of(r))])
            except BaseException as exc:  # reported below
                failures.append(exc)
            barrier.wait()

    threads = [threading.Thread(target=update, args=(c, f, v))
               for c, (f, v) in zip(clients, changes.items(), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    want = as_dict([fv(f, v(rounds)) for f, v in changes.items()])
    got = eventually(
        lambda: as_dict(runtime.get_record(FeatureGroupName=group,
                                           RecordIdentifierValueAsString="race")["Record"]),
        lambda r: all(r[f] == want[f] for f in want))
    assert {f: got[f] for f in want} == want, "no update lost another's feature"


# --- ListRecords -------------------------------------------------------------------------------


def test_list_records_pages_and_soft_deleted(
    runtime: Any, sdk: FeatureStoreClient, group: str,
) -> None:
    name = f"sm_list_{next(_groups)}"
    sdk.create_feature_group(name, "user_id", "ts", {"user_id": "String", "ts": "Fractional"})
    runtime.batch_write_record(Entries=[
        {"FeatureGroupName": name, "Record": [fv("user_id", f"r{i:02d}"), fv("ts", T0)]}
        for i in range(7)])
    deleted = runtime.delete_record(FeatureGroupName=name, RecordIdentifierValueAsString="r03",
                                    EventTime=str(T0 + 1))
    sdk.get_record(name, "r03", consistent_after=token_of(deleted))

    def pages(**kwargs: Any) -> list[list[str]]:
        out: list[list[str]] = []
        token: dict[str, str] = {}
        while True:
            page = runtime.list_records(FeatureGroupName=name, MaxResults=3, **token, **kwargs)
            out.append(page["RecordIdentifiers"])
            if "NextToken" not in page:
                return out
            token = {"NextToken": page["NextToken"]}

    listed = eventually(pages, lambda p: "r03" not in sum(p, []))
    assert listed == [["r00", "r01", "r02"], ["r04", "r05", "r06"]]
    assert pages(IncludeSoftDeletedRecords=True) == [["r00", "r01", "r02"],
                                                     ["r03", "r04", "r05"], ["r06"]]
    code, _, message = error_of(lambda: runtime.list_records(FeatureGroupName=name,
                                                             NextToken="garbage"))
    assert code == "ValidationError" and "NextToken" in message
    first = runtime.list_records(FeatureGroupName=name, MaxResults=1)
    code, _, message = error_of(lambda: runtime.list_records(
        FeatureGroupName=group, NextToken=first["NextToken"]))
    assert code == "ValidationError" and "another feature group" in message
    code, _, _ = error_of(lambda: runtime.list_records(FeatureGroupName="no_such_group"))
    assert code == "ResourceNotFound"
