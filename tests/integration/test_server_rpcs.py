"""The FeatureStore RPCs and SageMaker's semantics, over the wire, against a real server process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.integration.wire_helpers import Wire, metric_total, rpc_error

T0 = 1_700_000_000.0


@pytest.fixture
def group(wire: Wire, unique_group_name: str) -> str:
    wire.create_group(unique_group_name)
    return unique_group_name


def full_record(user: str = "u1", ts: float = T0, clicks: int = 3) -> dict:
    return {
        "user_id": user,
        "ts": ts,
        "clicks": clicks,
        "ctr": 0.25,
        "name": "Ada",
        "tags": ["a", "b"],
        "ids": [3, 1, 2],
        "scores": [0.5, 1.5],
        "emb": np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32),
    }


def test_put_then_get_returns_every_type(wire: Wire, group: str) -> None:
    assert wire.put(group, full_record()) is True
    got = wire.get(group, "u1")
    assert got["user_id"] == "u1" and got["ts"] == T0 and got["clicks"] == 3
    assert got["ctr"] == 0.25 and got["name"] == "Ada"
    assert got["tags"] == ["a", "b"] and got["ids"] == [3, 1, 2] and got["scores"] == [0.5, 1.5]
    assert got["emb"].dtype == np.float32
    np.testing.assert_array_equal(got["emb"], np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))


def test_get_of_absent_record_returns_no_record(wire: Wire, group: str) -> None:
    assert wire.get(group, "nobody") is None


def test_get_with_feature_filter_returns_only_those(wire: Wire, group: str) -> None:
    wire.put(group, full_record())
    assert wire.get(group, "u1", features=["clicks", "name"]) == {"clicks": 3, "name": "Ada"}


def test_get_with_unknown_feature_filter_is_invalid(wire: Wire, group: str) -> None:
    wire.put(group, full_record())
    err = rpc_error(lambda: wire.get(group, "u1", features=["clicks", "nope"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope'" in err.details() and "known:" in err.details()


def test_int_for_fractional_and_list_for_vector_are_normalized(wire: Wire, group: str) -> None:
    wire.put(group, {"user_id": "u1", "ts": 1_700_000_000, "ctr": 1, "emb": [1, 2, 3, 4]})
    got = wire.get(group, "u1")
    assert got["ts"] == T0 and isinstance(got["ctr"], float)
    np.testing.assert_array_equal(got["emb"], np.array([1, 2, 3, 4], dtype=np.float32))


def test_put_with_older_event_time_keeps_online_record(wire: Wire, group: str) -> None:
    assert wire.put(group, full_record(ts=T0, clicks=5)) is True
    assert wire.put(group, full_record(ts=T0 - 10, clicks=1)) is False
    assert wire.get(group, "u1")["clicks"] == 5


def test_put_with_equal_event_time_later_write_wins(wire: Wire, group: str) -> None:
    wire.put(group, full_record(ts=T0, clicks=5))
    assert wire.put(group, full_record(ts=T0, clicks=6)) is True
    assert wire.get(group, "u1")["clicks"] == 6


def test_put_with_newer_event_time_replaces_whole_record(wire: Wire, group: str) -> None:
    wire.put(group, full_record(ts=T0))
    wire.put(group, {"user_id": "u1", "ts": T0 + 1, "clicks": 9})
    assert wire.get(group, "u1") == {"user_id": "u1", "ts": T0 + 1, "clicks": 9}


def test_event_time_accepts_iso_8601(wire: Wire, unique_group_name: str) -> None:
    wire.create_group(
        unique_group_name,
        features=[
            {"feature_name": "id", "feature_type": "Integral"},
            {"feature_name": "at", "feature_type": "String"},
            {"feature_name": "v", "feature_type": "Integral"},
        ],
        record_identifier="id",
        event_time="at",
    )
    wire.put(unique_group_name, {"id": 7, "at": "2026-01-02T03:04:05.500Z", "v": 1})
    # +01:00 is one hour earlier in UTC: older, so not applied.
    assert wire.put(unique_group_name, {"id": 7, "at": "2026-01-02T03:04:05+01:00", "v": 2}) is False
    assert wire.get(unique_group_name, "7")["v"] == 1
    assert wire.get(unique_group_name, "007")["v"] == 1  # Integral ids are normalized


def test_soft_delete_hides_record_and_newer_put_restores_it(wire: Wire, group: str) -> None:
    wire.put(group, full_record(ts=T0))
    assert wire.delete(group, "u1", str(T0 + 1)) is True
    assert wire.get(group, "u1") is None
    # A put older than the delete stays hidden; a newer one brings the record back.
    assert wire.put(group, full_record(ts=T0 + 0.5)) is False
    assert wire.get(group, "u1") is None
    assert wire.put(group, full_record(ts=T0 + 2, clicks=8)) is True
    assert wire.get(group, "u1")["clicks"] == 8


def test_soft_delete_older_than_record_is_not_applied(wire: Wire, group: str) -> None:
    wire.put(group, full_record(ts=T0))
    assert wire.delete(group, "u1", str(T0 - 1)) is False
    assert wire.get(group, "u1") is not None


def test_hard_delete_removes_record(wire: Wire, group: str) -> None:
    wire.put(group, full_record(ts=T0))
    assert wire.delete(group, "u1", "2023-11-14T22:13:21Z", hard=True) is True
    assert wire.get(group, "u1") is None
    # Nothing is remembered: an older put lands again.
    assert wire.put(group, full_record(ts=T0 - 100, clicks=4)) is True
    assert wire.get(group, "u1")["clicks"] == 4


def test_hard_delete_older_than_record_is_refused(wire: Wire, group: str) -> None:
    wire.put(group, full_record(ts=T0))
    err = rpc_error(lambda: wire.delete(group, "u1", str(T0 - 1), hard=True))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older than the stored record" in err.details()
    assert wire.get(group, "u1") is not None


def test_delete_requires_a_parseable_event_time(wire: Wire, group: str) -> None:
    for bad in ("", "yesterday"):
        err = rpc_error(lambda bad=bad: wire.delete(group, "u1", bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "event_time" in err.details()


def test_put_records_writes_all_and_counts_stale(wire: Wire, group: str) -> None:
    wire.put(group, full_record("u0", ts=T0 + 100))
    records = [to_record({"user_id": f"u{i}", "ts": T0, "clicks": i}) for i in range(300)]
    resp = wire.stub.PutRecords(pb.PutRecordsRequest(feature_group_name=group, records=records))
    assert (resp.written, resp.stale) == (300, 1)
    assert wire.get(group, "u299")["clicks"] == 299
    assert wire.get(group, "u0")["ts"] == T0 + 100


def test_put_records_with_a_bad_record_names_it_and_writes_nothing(wire: Wire, group: str) -> None:
    records = [to_record({"user_id": f"u{i}", "ts": T0, "clicks": i}) for i in range(5)]
    records[3] = to_record({"user_id": "u3", "ts": T0, "clicks": "three"})
    err = rpc_error(
        lambda: wire.stub.PutRecords(pb.PutRecordsRequest(feature_group_name=group, records=records))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("records[3]: feature 'clicks' has type Integral")
    assert wire.get(group, "u0") is None


def test_batch_get_reports_records_errors_and_unprocessed(
    wire: Wire, group: str, unique_group_name: str
) -> None:
    other = unique_group_name + "_b"
    wire.create_group(other)
    for i in range(120):
        wire.put(group, {"user_id": f"u{i}", "ts": T0, "clicks": i})
    wire.put(other, {"user_id": "x", "ts": T0, "clicks": -1})
    req = pb.BatchGetRecordRequest(
        identifiers=[
            pb.BatchGetRecordIdentifier(
                feature_group_name=group,
                record_identifiers=[f"u{i}" for i in range(110)] + ["missing"],
                feature_names=["clicks"],
            ),
            pb.BatchGetRecordIdentifier(feature_group_name=other, record_identifiers=["x", ""]),
            pb.BatchGetRecordIdentifier(feature_group_name="no_such_group", record_identifiers=["a"]),
        ],
        expiration_time_response=True,
    )
    resp = wire.stub.BatchGetRecord(req)
    got = {(r.feature_group_name, r.record_identifier): r for r in resp.records}
    assert len(got) == 101  # u0..u99 of the first 100 ids, and x
    assert [(fv.feature_name, fv.int_value) for fv in got[(group, "u42")].record.features] == [
        ("clicks", 42)
    ]
    assert not got[(group, "u42")].HasField("expires_at_us")
    errors = {(e.feature_group_name, e.record_identifier): e for e in resp.errors}
    assert errors[("no_such_group", "a")].error_code == "NOT_FOUND"
    assert errors[(other, "")].error_code == "INVALID_ARGUMENT"
    (unprocessed,) = resp.unprocessed_identifiers
    assert unprocessed.feature_group_name == group
    assert list(unprocessed.record_identifiers) == [f"u{i}" for i in range(100, 110)] + ["missing"]
    assert list(unprocessed.feature_names) == ["clicks"]


def test_batch_get_past_100_groups_returns_the_rest_unprocessed(wire: Wire, group: str) -> None:
    wire.put(group, {"user_id": "u1", "ts": T0})
    entries = [
        pb.BatchGetRecordIdentifier(feature_group_name=group, record_identifiers=["u1"])
        for _ in range(102)
    ]
    resp = wire.stub.BatchGetRecord(pb.BatchGetRecordRequest(identifiers=entries))
    assert len(resp.records) == 100 and len(resp.unprocessed_identifiers) == 2


def test_health_service_reports_serving(wire: Wire) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(wire.channel)
    for service in ("", "tessera.v1.FeatureStore"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(wire: Wire) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(wire.channel)
    (resp,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in resp.list_services_response.service}
    assert {"tessera.v1.FeatureStore", "tessera.v1.Diagnostics", "grpc.health.v1.Health"} <= names


def test_echo_returns_the_payload(wire: Wire) -> None:
    echo = wire.channel.unary_unary(
        "/tessera.v1.Diagnostics/Echo",
        request_serializer=pb.EchoRequest.SerializeToString,
        response_deserializer=pb.EchoResponse.FromString,
    )
    assert echo(pb.EchoRequest(payload=b"x" * 300)).payload == b"x" * 300


def test_metrics_count_requests_and_latency_per_rpc(wire: Wire, group: str) -> None:
    wire.get(group, "u1")
    text = wire.http.get("/metrics").text  # with --workers N: summed over the processes
    calls = metric_total(text, "tessera_grpc_requests_total", code="OK", method="GetRecord")
    assert calls is not None and calls >= 1
    assert metric_total(text, "tessera_grpc_request_duration_seconds_bucket", le="0.001",
                        method="GetRecord") is not None
