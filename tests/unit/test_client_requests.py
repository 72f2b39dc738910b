"""Request building, response parsing, error mapping and retries of tessera.client (no server)."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta, timezone

import grpc
import httpx
import numpy as np
import pytest

from tessera.client import _admin
from tessera.client._admin import AdminTransport, AsyncAdminTransport
from tessera.client._batch import (
    BatchGetResult,
    batch_get_requests,
    merge_batch_get_responses,
    put_records_requests,
)
from tessera.client._grpc_errors import error_from_rpc, rpc_errors
from tessera.client._requests import (
    delete_record_request,
    event_time_text,
    get_record_request,
    parse_get_record_response,
    put_record_request,
    record_id,
)
from tessera.client._retry import (
    READ_RETRY_CODES,
    WRITE_RETRY_CODES,
    RetryPolicy,
    call_with_retry,
    call_with_retry_async,
)
from tessera.core.errors import (
    ConflictError,
    FeatureGroupNotFoundError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    TesseraError,
)
from tessera.proto.v1 import feature_store_pb2 as pb


class FakeRpcError(grpc.RpcError):
    """What a failed unary call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# --- record identifiers, get / put / delete requests -------------------------------------------


@pytest.mark.parametrize("given", ["u1", 42, np.int64(42)])
def test_record_id_is_sent_as_a_string(given: object) -> None:
    assert record_id(given) == str(given)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", [True, 1.5, None, b"u1"])
def test_record_id_of_another_type_is_refused(given: object) -> None:
    with pytest.raises(InvalidRequestError, match="record identifier"):
        record_id(given)  # type: ignore[arg-type]


def test_put_record_request_carries_typed_values_and_optional_ttl() -> None:
    emb = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    request = put_record_request(
        "users", {"user_id": "u1", "clicks": 3, "ctr": 0.5, "emb": emb, "gone": None}, None
    )
    assert request.feature_group_name == "users"
    assert not request.HasField("ttl_s")
    by_name = {fv.feature_name: fv for fv in request.record.features}
    assert set(by_name) == {"user_id", "clicks", "ctr", "emb"}
    assert by_name["clicks"].int_value == 3
    assert by_name["emb"].vector_value == emb.tobytes()
    assert put_record_request("users", {"user_id": "u1"}, 60).ttl_s == 60.0


def test_get_record_request_takes_a_filter_and_the_expiry_flag() -> None:
    request = get_record_request("users", 7, ["clicks", "ctr"], True)
    assert request.record_identifier == "7"
    assert list(request.feature_names) == ["clicks", "ctr"]
    assert request.expiration_time_response
    assert list(get_record_request("users", "u1", "clicks", False).feature_names) == ["clicks"]
    assert list(get_record_request("users", "u1", None, False).feature_names) == []


def test_get_record_response_without_a_record_is_none() -> None:
    assert parse_get_record_response(pb.GetRecordResponse(), with_expiry=True) is None


def test_get_record_response_gives_values_and_expiry_in_seconds() -> None:
    emb = np.arange(4, dtype="<f4")
    record = pb.Record(
        features=[
            pb.FeatureValue(feature_name="user_id", string_value="u1"),
            pb.FeatureValue(feature_name="tags", string_list=pb.StringList(values=["a", "b"])),
            pb.FeatureValue(feature_name="emb", vector_value=emb.tobytes()),
        ]
    )
    response = pb.GetRecordResponse(record=record, expires_at_us=1_700_000_000_500_000)
    got = parse_get_record_response(response, with_expiry=True)
    assert got is not None
    assert got["user_id"] == "u1" and got["tags"] == ["a", "b"]
    assert got["emb"].dtype == np.float32 and np.array_equal(got["emb"], emb)
    assert got["_expires_at"] == 1_700_000_000.5
    no_ttl = parse_get_record_response(pb.GetRecordResponse(record=record), with_expiry=True)
    assert no_ttl is not None and no_ttl["_expires_at"] is None
    plain = parse_get_record_response(response, with_expiry=False)
    assert plain is not None and "_expires_at" not in plain


def test_event_time_of_a_delete_in_each_accepted_form() -> None:
    assert event_time_text(None, now=1_700_000_000.25) == "1700000000.25"
    assert float(event_time_text(None)) > 1_700_000_000
    assert event_time_text(1_700_000_000) == "1700000000"
    assert event_time_text(1_700_000_000.5) == "1700000000.5"
    assert event_time_text("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05Z"
    paris = datetime(2026, 1, 2, 4, 4, 5, 678000, tzinfo=timezone(timedelta(hours=1)))
    assert event_time_text(paris) == "2026-01-02T03:04:05.678000Z"
    assert event_time_text(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00Z"


@pytest.mark.parametrize("given", [datetime(2026, 1, 2), True, [1.0]])
def test_event_time_of_a_delete_refuses_naive_datetimes_and_other_types(given: object) -> None:
    with pytest.raises(InvalidRequestError, match="event_time"):
        event_time_text(given)  # type: ignore[arg-type]


def test_delete_record_request_maps_the_mode() -> None:
    soft = delete_record_request("users", 5, 1_700_000_000.0, "soft")
    assert soft.deletion_mode == pb.DELETION_MODE_SOFT_DELETE
    assert soft.record_identifier == "5" and soft.event_time == "1700000000.0"
    hard = delete_record_request("users", "u1", None, "hard")
    assert hard.deletion_mode == pb.DELETION_MODE_HARD_DELETE
    with pytest.raises(InvalidRequestError, match="'soft', 'hard'"):
        delete_record_request("users", "u1", None, "purge")


# --- bulk calls --------------------------------------------------------------------------------


def _records(n: int) -> list[dict[str, object]]:
    return [{"user_id": f"u{i}", "ts": 1_700_000_000.0 + i} for i in range(n)]


def test_put_records_are_chunked_by_batch_size() -> None:
    requests = list(put_records_requests("users", iter(_records(1200)), 30.0, batch_size=500))
    assert [len(r.records) for r in requests] == [500, 500, 200]
    assert all(r.feature_group_name == "users" and r.ttl_s == 30.0 for r in requests)
    assert requests[2].records[-1].features[0].string_value == "u1199"
    assert list(put_records_requests("users", [], None, batch_size=500)) == []


def test_put_records_are_chunked_by_size_too() -> None:
    records = [{"user_id": "u" * 1000, "ts": float(i)} for i in range(10)]
    requests = list(put_records_requests("users", records, None, batch_size=500, max_bytes=3000))
    assert [len(r.records) for r in requests] == [2, 2, 2, 2, 2]
    assert not requests[0].HasField("ttl_s")


def test_put_records_refuses_a_batch_size_below_one() -> None:
    with pytest.raises(InvalidRequestError, match="batch_size"):
        list(put_records_requests("users", _records(1), None, batch_size=0))


def test_batch_get_splits_identifiers_over_100_per_group() -> None:
    requests = batch_get_requests({"users": range(250), "items": ["i1"]})
    assert len(requests) == 3
    shape = [
        [(e.feature_group_name, len(e.record_identifiers)) for e in r.identifiers] for r in requests
    ]
    assert shape == [[("users", 100), ("items", 1)], [("users", 100)], [("users", 50)]]
    sent = [
        i
        for r in requests
        for e in r.identifiers
        if e.feature_group_name == "users"
        for i in e.record_identifiers
    ]
    assert sent == [str(i) for i in range(250)]


def test_batch_get_splits_over_100_groups() -> None:
    requests = batch_get_requests({f"g{i}": ["a"] for i in range(150)}, with_expiry=True)
    assert [len(r.identifiers) for r in requests] == [100, 50]
    assert all(r.expiration_time_response for r in requests)
    for r in requests:
        names = [e.feature_group_name for e in r.identifiers]
        assert len(names) == len(set(names))


def test_batch_get_feature_filter_for_all_groups_or_per_group() -> None:
    (shared,) = batch_get_requests({"users": ["u1"], "items": ["i1"]}, features=["clicks"])
    assert [list(e.feature_names) for e in shared.identifiers] == [["clicks"], ["clicks"]]
    (per_group,) = batch_get_requests(
        {"users": ["u1"], "items": ["i1"]}, features={"users": ["ctr", "clicks"]}
    )
    assert [list(e.feature_names) for e in per_group.identifiers] == [["ctr", "clicks"], []]


def test_batch_get_skips_empty_groups_and_refuses_a_bare_string() -> None:
    assert batch_get_requests({"users": []}) == []
    with pytest.raises(InvalidRequestError, match="list of record identifiers"):
        batch_get_requests({"users": "u1"})  # type: ignore[dict-item]


def test_batch_get_responses_merge_records_errors_and_unprocessed() -> None:
    first = pb.BatchGetRecordResponse(
        records=[
            pb.BatchGetRecordResultDetail(
                feature_group_name="users",
                record_identifier="u1",
                record=pb.Record(features=[pb.FeatureValue(feature_name="clicks", int_value=3)]),
                expires_at_us=2_000_000,
            )
        ],
        errors=[
            pb.BatchGetRecordError(
                feature_group_name="nope",
                record_identifier="x",
                error_code="NOT_FOUND",
                error_message="feature group 'nope' does not exist",
            )
        ],
        unprocessed_identifiers=[
            pb.BatchGetRecordIdentifier(feature_group_name="users", record_identifiers=["u9"])
        ],
    )
    second = pb.BatchGetRecordResponse(
        records=[
            pb.BatchGetRecordResultDetail(
                feature_group_name="items", record_identifier="i1", record=pb.Record()
            )
        ],
        unprocessed_identifiers=[
            pb.BatchGetRecordIdentifier(feature_group_name="users", record_identifiers=["u10"])
        ],
    )
    result = merge_batch_get_responses([first, second], with_expiry=True)
    assert isinstance(result, BatchGetResult)
    assert result.records == [
        {
            "feature_group_name": "users",
            "record_identifier": "u1",
            "record": {"clicks": 3, "_expires_at": 2.0},
        },
        {"feature_group_name": "items", "record_identifier": "i1", "record": {"_expires_at": None}},
    ]
    assert result.errors == [
        {
            "feature_group_name": "nope",
            "record_identifier": "x",
            "error_code": "NOT_FOUND",
            "error_message": "feature group 'nope' does not exist",
        }
    ]
    assert result.unprocessed == {"users": ["u9", "u10"]}
    assert merge_batch_get_responses([]) == BatchGetResult()


# --- gRPC errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, ConflictError),
        (grpc.StatusCode.FAILED_PRECONDITION, PreconditionFailedError),
        (grpc.StatusCode.UNAVAILABLE, StorageError),
    ],
)
def test_grpc_status_maps_to_its_error_class(code: grpc.StatusCode, cls: type) -> None:
    error = error_from_rpc(FakeRpcError(code, "feature 'x' is not in group 'users'"))
    assert type(error) is cls
    assert error.message == "feature 'x' is not in group 'users'"


def test_not_found_of_a_one_group_call_is_feature_group_not_found() -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no"), "users")
    assert isinstance(error, FeatureGroupNotFoundError)
    assert error.feature_group_name == "users"


def test_unmapped_grpc_status_is_a_tessera_error_naming_the_code() -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert type(error) is TesseraError
    assert error.message == "DEADLINE_EXCEEDED: Deadline Exceeded"


def test_rpc_errors_raises_the_mapped_error_from_the_rpc_error() -> None:
    cause = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    with pytest.raises(InvalidRequestError) as info, rpc_errors("users"):
        raise cause
    assert info.value.__cause__ is cause


# --- retries -----------------------------------------------------------------------------------


class Flaky:
    """A call that fails with the given codes, in order, then answers 'ok'."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise FakeRpcError(self.codes.pop(0), "try again")
        return "ok"


def test_unavailable_twice_then_success_is_retried_with_growing_backoff() -> None:
    flaky = Flaky(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    sleeps: list[float] = []
    policy = RetryPolicy(retries=3, initial_backoff_s=0.1, max_backoff_s=10.0)
    assert call_with_retry(flaky, policy, WRITE_RETRY_CODES, sleep=sleeps.append) == "ok"
    assert flaky.calls == 3
    assert len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_invalid_argument_is_not_retried() -> None:
    flaky = Flaky(grpc.StatusCode.INVALID_ARGUMENT)
    sleeps: list[float] = []
    with pytest.raises(FakeRpcError):
        call_with_retry(flaky, RetryPolicy(retries=3), READ_RETRY_CODES, sleep=sleeps.append)
    assert flaky.calls == 1 and sleeps == []


def test_retries_are_bounded_and_the_last_error_propagates() -> None:
    flaky = Flaky(*[grpc.StatusCode.UNAVAILABLE] * 10)
    sleeps: list[float] = []
    with pytest.raises(FakeRpcError):
        call_with_retry(flaky, RetryPolicy(retries=2), WRITE_RETRY_CODES, sleep=sleeps.append)
    assert flaky.calls == 3 and len(sleeps) == 2
    no_retry = Flaky(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(FakeRpcError):
        call_with_retry(no_retry, RetryPolicy(retries=0), WRITE_RETRY_CODES, sleep=sleeps.append)
    assert no_retry.calls == 1


def test_deadline_exceeded_is_retried_for_reads_only() -> None:
    read = Flaky(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert call_with_retry(read, RetryPolicy(), READ_RETRY_CODES, sleep=lambda s: None) == "ok"
    write = Flaky(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(FakeRpcError):
        call_with_retry(write, RetryPolicy(), WRITE_RETRY_CODES, sleep=lambda s: None)
    assert write.calls == 1


def test_backoff_is_capped_and_jittered_between_half_and_all() -> None:
    policy = RetryPolicy(retries=20, initial_backoff_s=0.1, max_backoff_s=1.0, rng=random.Random(7))
    waits = [policy.backoff_s(n) for n in range(12)]
    for n, wait in enumerate(waits):
        ceiling = min(1.0, 0.1 * 2**n)
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(waits)) == len(waits)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)


def test_async_retry_retries_unavailable_and_not_invalid_argument() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def as_coroutine(flaky: Flaky):  # type: ignore[no-untyped-def]
        async def call() -> str:
            return flaky()

        return call

    flaky = Flaky(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    result = asyncio.run(
        call_with_retry_async(as_coroutine(flaky), RetryPolicy(), WRITE_RETRY_CODES, fake_sleep)
    )
    assert result == "ok" and flaky.calls == 3 and len(sleeps) == 2
    bad = Flaky(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(FakeRpcError):
        asyncio.run(
            call_with_retry_async(as_coroutine(bad), RetryPolicy(), READ_RETRY_CODES, fake_sleep)
        )
    assert bad.calls == 1


# --- the HTTP control plane --------------------------------------------------------------------


def test_create_feature_group_body_has_the_http_shape() -> None:
    call = _admin.create_feature_group(
        "users",
        record_identifier="user_id",
        event_time="ts",
        features={
            "user_id": "String",
            "ts": "Fractional",
            "tags": "List[String]",
            "emb": "Vector[4]",
        },
        ttl_s=3600,
        offline=False,
        description="users' features",
        tags={"team": "ranking"},
    )
    assert (call.method, call.path) == ("POST", "/v1/feature-groups")
    assert call.body == {
        "feature_group_name": "users",
        "record_identifier_feature_name": "user_id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "user_id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "tags", "feature_type": "String", "collection_type": "List"},
            {
                "feature_name": "emb",
                "feature_type": "Fractional",
                "collection_type": "Vector",
                "collection_config": {"vector_config": {"dimension": 4}},
            },
        ],
        "online_store_config": {
            "enable_online_store": True,
            "ttl_duration": {"unit": "Seconds", "value": 3600},
        },
        "offline_store_config": {"enable_offline_store": False},
        "description": "users' features",
        "tags": [{"key": "team", "value": "ranking"}],
    }
    json.dumps(call.body)


def test_create_feature_group_refuses_bad_types_and_ttls_before_sending() -> None:
    with pytest.raises(InvalidRequestError, match="feature type 'Blob'"):
        _admin.create_feature_group("g", "id", "ts", {"id": "String", "x": "Blob"})
    with pytest.raises(InvalidRequestError, match="ttl_s"):
        _admin.create_feature_group("g", "id", "ts", {"id": "String"}, ttl_s=1.5)
    with pytest.raises(InvalidRequestError, match="key"):
        _admin.create_feature_group("g", "id", "ts", {"id": "String"}, tags={"": "v"})


def test_update_and_other_calls_name_the_group_in_the_path() -> None:
    update = _admin.update_feature_group("users", add_features={"x": "Integral"})
    assert (update.method, update.path) == ("PATCH", "/v1/feature-groups/users")
    assert update.body == {"feature_additions": [{"feature_name": "x", "feature_type": "Integral"}]}
    described = _admin.update_feature_group("users", description="d")
    assert described.body == {"feature_additions": [], "description": "d"}
    assert _admin.describe_feature_group("a/../b").path == "/v1/feature-groups/a%2F..%2Fb"
    assert _admin.delete_feature_group("users").method == "DELETE"
    assert _admin.list_feature_groups().path == "/v1/feature-groups"


def _control_plane(status: int, body: object | None = None, text: str = "") -> AdminTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return AdminTransport("http://cp", 1.0, 0, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "cls"),
    [(422, InvalidRequestError), (404, NotFoundError), (409, ConflictError), (503, StorageError)],
)
def test_http_error_status_maps_to_its_error_class(status: int, cls: type) -> None:
    body = {"error": {"code": "X", "message": "what went wrong"}}
    with pytest.raises(cls, match="what went wrong"):
        _control_plane(status, body).send(_admin.list_feature_groups())


def test_http_404_of_a_named_group_is_feature_group_not_found() -> None:
    body = {"error": {"code": "NOT_FOUND", "message": "feature group 'users' does not exist"}}
    with pytest.raises(FeatureGroupNotFoundError) as info:
        _control_plane(404, body).send(_admin.describe_feature_group("users"))
    assert info.value.feature_group_name == "users"


def test_http_error_without_the_error_shape_says_what_came_back() -> None:
    with pytest.raises(NotFoundError, match="GET http://cp/v1/feature-groups/users: nothing here"):
        _control_plane(404, text="nothing here").send(_admin.describe_feature_group("users"))
    with pytest.raises(TesseraError, match="HTTP 500"):
        _control_plane(500, text="boom").send(_admin.list_feature_groups())


def test_http_success_is_parsed_per_call() -> None:
    group = {"feature_group_name": "users"}
    assert _control_plane(200, {"feature_groups": [group]}).send(_admin.list_feature_groups()) == [
        group
    ]
    assert _control_plane(200, group).send(_admin.describe_feature_group("users")) == group
    assert _control_plane(204, text="").send(_admin.delete_feature_group("users")) is None


def test_unreachable_control_plane_is_a_storage_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = AdminTransport("http://cp", 1.0, 0, transport=httpx.MockTransport(refuse))
    with pytest.raises(StorageError, match="did not answer") as info:
        transport.send(_admin.list_feature_groups())
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_async_control_plane_sends_the_same_calls() -> None:
    seen: list[tuple[str, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, json.loads(request.content or b"null")))
        if request.method == "PATCH":
            return httpx.Response(422, json={"error": {"code": "X", "message": "bad feature"}})
        return httpx.Response(201, json={"feature_group_name": "users"})

    async def run() -> None:
        transport = AsyncAdminTransport("http://cp", 1.0, 0, transport=httpx.MockTransport(handler))
        call = _admin.create_feature_group("users", "id", "ts", {"id": "String", "ts": "String"})
        assert await transport.send(call) == {"feature_group_name": "users"}
        with pytest.raises(InvalidRequestError, match="bad feature"):
            await transport.send(_admin.update_feature_group("users", {"x": "Integral"}))
        await transport.close()

    asyncio.run(run())
    assert [(m, p) for m, p, _ in seen] == [
        ("POST", "/v1/feature-groups"),
        ("PATCH", "/v1/feature-groups/users"),
    ]
