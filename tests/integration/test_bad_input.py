"""Every kind of bad input gets a precise error and changes nothing (real server process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tessera.proto.v1 import feature_store_pb2 as pb
from tests.integration.wire_helpers import Wire, rpc_error

T0 = 1_700_000_000.0


@pytest.fixture
def group(wire: Wire, unique_group_name: str) -> str:
    wire.create_group(unique_group_name)
    wire.put(unique_group_name, {"user_id": "u1", "ts": T0, "clicks": 1})
    return unique_group_name


BAD_PUTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown feature", {"user_id": "u1", "ts": T0 + 1, "nope": 1},
     "feature 'nope' is not in group"),
    ("wrong type", {"user_id": "u1", "ts": T0 + 1, "clicks": "3"},
     "feature 'clicks' has type Integral; got a String"),
    ("float for Integral", {"user_id": "u1", "ts": T0 + 1, "clicks": 3.0},
     "feature 'clicks' has type Integral; got a Fractional"),
    ("missing record identifier", {"ts": T0 + 1, "clicks": 3},
     "the record identifier feature 'user_id' is missing"),
    ("missing event time", {"user_id": "u1", "clicks": 3},
     "the event time feature 'ts' is missing"),
    ("event time before 1970", {"user_id": "u1", "ts": -5.0, "clicks": 3},
     "event time 'ts': -5.0 is not a valid event time"),
    ("NaN", {"user_id": "u1", "ts": T0 + 1, "ctr": float("nan")},
     "feature 'ctr' is nan; Fractional values must be finite"),
    ("infinity in a list", {"user_id": "u1", "ts": T0 + 1, "scores": [1.0, float("inf")]},
     "feature 'scores' is inf"),
    ("vector of the wrong dimension", {"user_id": "u1", "ts": T0 + 1, "emb": [1.0, 2.0, 3.0]},
     "feature 'emb' has type Vector[4]; got 3 values"),
    ("vector bytes of the wrong size", {"user_id": "u1", "ts": T0 + 1, "emb": b"\0" * 15},
     "feature 'emb' has type Vector[4]; got 15 bytes"),
    ("NaN in a vector", {"user_id": "u1", "ts": T0 + 1, "emb": [1.0, float("nan"), 0.0, 0.0]},
     "feature 'emb' holds NaN or infinity"),
    ("duplicate values in a Set", {"user_id": "u1", "ts": T0 + 1, "ids": [1, 1]},
     "feature 'ids' has type Set[Integral]; its values must be distinct"),
    ("empty record identifier", {"user_id": "", "ts": T0 + 1},
     "record identifier 'user_id' is empty"),
    ("record identifier over 2 KB", {"user_id": "x" * 2049, "ts": T0 + 1},
     "record identifier 'user_id' is 2049 bytes; the limit is 2048"),
    ("record over 350 KB", {"user_id": "u1", "ts": T0 + 1, "name": "x" * (360 * 1024)},
     "the limit is 358400 (350 KB)"),
]


@pytest.mark.parametrize(("case", "values", "message"), BAD_PUTS, ids=[c[0] for c in BAD_PUTS])
def test_bad_put_is_invalid_argument_and_changes_nothing(
    wire: Wire, group: str, case: str, values: dict[str, Any], message: str
) -> None:
    err = rpc_error(lambda: wire.put(group, values))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert message in err.details(), err.details()
    assert wire.get(group, "u1") == {"user_id": "u1", "ts": T0, "clicks": 1}


def test_feature_given_twice_is_invalid(wire: Wire, group: str) -> None:
    record = pb.Record(features=[
        pb.FeatureValue(feature_name="user_id", string_value="u1"),
        pb.FeatureValue(feature_name="ts", float_value=T0 + 1),
        pb.FeatureValue(feature_name="clicks", int_value=1),
        pb.FeatureValue(feature_name="clicks", int_value=2),
    ])
    err = rpc_error(lambda: wire.stub.PutRecord(
        pb.PutRecordRequest(feature_group_name=group, record=record)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "feature 'clicks' is given twice" in err.details()


def test_feature_without_a_value_is_invalid(wire: Wire, group: str) -> None:
    record = pb.Record(features=[
        pb.FeatureValue(feature_name="user_id", string_value="u1"),
        pb.FeatureValue(feature_name="ts", float_value=T0 + 1),
        pb.FeatureValue(feature_name="clicks"),
    ])
    err = rpc_error(lambda: wire.stub.PutRecord(
        pb.PutRecordRequest(feature_group_name=group, record=record)))
    assert "feature 'clicks' has no value" in err.details()


def test_naive_iso_event_time_is_refused(wire: Wire, unique_group_name: str) -> None:
    wire.create_group(
        unique_group_name,
        features=[{"feature_name": "id", "feature_type": "String"},
                  {"feature_name": "at", "feature_type": "String"}],
        record_identifier="id", event_time="at",
    )
    err = rpc_error(lambda: wire.put(unique_group_name, {"id": "a", "at": "2026-01-02T03:04:05"}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no time zone" in err.details()
    err = rpc_error(lambda: wire.put(unique_group_name, {"id": "a", "at": "last tuesday"}))
    assert "is not a valid event time" in err.details()


def test_non_positive_ttl_is_invalid(wire: Wire, group: str) -> None:
    err = rpc_error(lambda: wire.put(group, {"user_id": "u2", "ts": T0}, ttl_s=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "ttl_s" in err.details()


UNKNOWN_GROUP_CALLS: list[tuple[str, Callable[[Wire], Any]]] = [
    ("PutRecord", lambda w: w.put("no_such_group", {"user_id": "u", "ts": T0})),
    ("GetRecord", lambda w: w.get("no_such_group", "u")),
    ("DeleteRecord", lambda w: w.delete("no_such_group", "u", str(T0))),
    ("PutRecords", lambda w: w.stub.PutRecords(
        pb.PutRecordsRequest(feature_group_name="no_such_group"))),
]


@pytest.mark.parametrize(("rpc", "call"), UNKNOWN_GROUP_CALLS, ids=[c[0] for c in UNKNOWN_GROUP_CALLS])
def test_unknown_group_is_not_found(wire: Wire, rpc: str, call: Callable[[Wire], Any]) -> None:
    err = rpc_error(lambda: call(wire))
    assert err.code() == grpc.StatusCode.NOT_FOUND, rpc
    assert err.details() == "feature group 'no_such_group' does not exist"


def test_get_with_non_integral_id_on_integral_group_is_invalid(
    wire: Wire, unique_group_name: str
) -> None:
    wire.create_group(
        unique_group_name,
        features=[{"feature_name": "id", "feature_type": "Integral"},
                  {"feature_name": "ts", "feature_type": "Fractional"}],
        record_identifier="id",
    )
    err = rpc_error(lambda: wire.get(unique_group_name, "abc"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'abc' is not an Integral" in err.details()


@pytest.mark.parametrize("method", ["PutRecord", "GetRecord", "BatchGetRecord", "DeleteRecord"])
def test_malformed_protobuf_is_invalid_argument(wire: Wire, method: str) -> None:
    raw = wire.channel.unary_unary(f"/tessera.v1.FeatureStore/{method}")
    err = rpc_error(lambda: raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        f"malformed request: the body is not a valid tessera.v1.{method}Request message"
    )


# --- the control plane ------------------------------------------------------------------------


def _definition(name: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "feature_group_name": name,
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
        ],
    }
    body.update(overrides)
    return body


BAD_DEFINITIONS: list[tuple[str, dict[str, Any], str]] = [
    ("invalid group name", {"feature_group_name": "bad name!"},
     "feature_group_name 'bad name!' is not valid"),
    ("invalid feature name", {"feature_definitions": [
        {"feature_name": "id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "-x", "feature_type": "String"}]},
     "feature_name '-x' is not valid"),
    ("unknown type", {"feature_definitions": [
        {"feature_name": "id", "feature_type": "Text"},
        {"feature_name": "ts", "feature_type": "Fractional"}]},
     "feature_definitions.0.feature_type: Input should be 'Integral', 'Fractional' or 'String'"),
    ("duplicate feature", {"feature_definitions": [
        {"feature_name": "id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "ts", "feature_type": "Fractional"}]},
     "feature 'ts' is defined twice"),
    ("record identifier not defined", {"record_identifier_feature_name": "user"},
     "record_identifier_feature_name 'user' is not among feature_definitions"),
    ("event time of a wrong type", {"feature_definitions": [
        {"feature_name": "id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Integral"}]},
     "event_time_feature_name 'ts' has type Integral; allowed: Fractional or String"),
    ("vector without dimension", {"feature_definitions": [
        {"feature_name": "id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "v", "feature_type": "Fractional", "collection_type": "Vector"}]},
     "feature 'v': a Vector needs collection_config.vector_config.dimension"),
    ("vector dimension out of range", {"feature_definitions": [
        {"feature_name": "id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "v", "feature_type": "Fractional", "collection_type": "Vector",
         "collection_config": {"vector_config": {"dimension": 0}}}]},
     "vector dimension 0 is out of range"),
    ("unknown field", {"ttl": 5}, "ttl: Extra inputs are not permitted"),
    ("negative ttl", {"online_store_config": {"ttl_duration": {"unit": "Seconds", "value": -1}}},
     "online_store_config.ttl_duration.value: Input should be greater than 0"),
    ("aggregation of a string", {"aggregations": [
        {"name": "a", "source": "id", "function": "max", "window": "1h"}]},
     "aggregation 'a': source feature 'id' has type String; allowed: an Integral or Fractional "
     "scalar feature (ts)"),
    ("aggregation window not in tiles", {
        "aggregations": [{"name": "a", "function": "count", "window": "7m"}],
        "aggregation_config": {"tile_size": "5m"}},
     "aggregation 'a': window '7m' is not a multiple of the tile size '5m'"),
    ("aggregation missing its window", {"aggregations": [{"name": "a", "function": "count"}]},
     "aggregations.0.window: Field required"),
    ("aggregation config alone", {"aggregation_config": {"tile_size": "1m"}},
     "aggregation_config is set but aggregations is empty"),
]


@pytest.mark.parametrize(("case", "overrides", "message"), BAD_DEFINITIONS,
                         ids=[c[0] for c in BAD_DEFINITIONS])
def test_bad_feature_group_definition_is_422_with_the_reason(
    wire: Wire, unique_group_name: str, case: str, overrides: dict[str, Any], message: str
) -> None:
    resp = wire.http.post("/v1/feature-groups", json=_definition(unique_group_name, **overrides))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "InvalidRequest"
    assert message in error["message"], error["message"]
    assert wire.http.get(f"/v1/feature-groups/{unique_group_name}").status_code == 404


def test_duplicate_group_is_409(wire: Wire, unique_group_name: str) -> None:
    assert wire.http.post("/v1/feature-groups", json=_definition(unique_group_name)).status_code == 201
    resp = wire.http.post("/v1/feature-groups", json=_definition(unique_group_name))
    assert resp.status_code == 409
    assert resp.json()["error"]["message"] == f"feature group '{unique_group_name}' already exists"


def test_unknown_group_is_404_over_http(wire: Wire) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        resp = wire.http.request(method, "/v1/feature-groups/no_such_group",
                                 json={} if method == "PATCH" else None)
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "feature group 'no_such_group' does not exist"


def test_aggregations_cannot_be_changed_by_an_update(wire: Wire, unique_group_name: str) -> None:
    body = _definition(unique_group_name,
                       aggregations=[{"name": "n", "function": "count", "window": "1h"}])
    assert wire.http.post("/v1/feature-groups", json=body).status_code == 201
    resp = wire.http.patch(f"/v1/feature-groups/{unique_group_name}",
                           json={"aggregations": []})
    assert resp.status_code == 422
    assert "aggregations: Extra inputs are not permitted" in resp.json()["error"]["message"]
    resp = wire.http.patch(f"/v1/feature-groups/{unique_group_name}", json={
        "feature_additions": [{"feature_name": "n", "feature_type": "Integral"}]})
    assert resp.status_code == 409
    assert resp.json()["error"]["message"] == (
        "feature 'n' would have the name of an aggregation feature of the group; "
        "choose another name")


def test_malformed_json_is_422(wire: Wire) -> None:
    resp = wire.http.post("/v1/feature-groups", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "InvalidRequest"
