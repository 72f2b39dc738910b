"""Read-your-writes tokens against a real server process: write_token on every write response,
consistent_after on reads (raw gRPC and the SDKs, sync and asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tessera.client import (
    AsyncFeatureStoreClient,
    FeatureStoreClient,
    InvalidRequestError,
    PreconditionFailedError,
)
from tessera.core.tokens import decode_token, encode_token
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tests.integration.wire_helpers import Wire, metric_total, rpc_error
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

FEATURES = {"user_id": "String", "ts": "Fractional", "clicks": "Integral"}
T0 = 1_700_000_000.0


@pytest.fixture
def group(wire: Wire, unique_group_name: str) -> str:
    wire.create_group(unique_group_name, features=[
        {"feature_name": "user_id", "feature_type": "String"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "clicks", "feature_type": "Integral"},
    ])
    return unique_group_name


def _put(wire: Wire, group: str, user: str, clicks: int, ts: float = T0) -> pb.PutRecordResponse:
    record = to_record({"user_id": user, "ts": ts, "clicks": clicks})
    response: pb.PutRecordResponse = wire.stub.PutRecord(
        pb.PutRecordRequest(feature_group_name=group, record=record), timeout=10
    )
    return response


def _consistent_reads(wire: Wire, method: str, outcome: str) -> float:
    return metric_total(wire.http.get("/metrics").text, "tessera_consistent_reads_total",
                        method=method, outcome=outcome) or 0.0


def _future_token(wire: Wire, group: str) -> str:
    """A well-formed token far ahead of anything this server committed."""
    return encode_token(decode_token(_put(wire, group, "probe", 0).write_token) + 10**9)


# --- the wire ------------------------------------------------------------------------------------


def test_every_write_response_carries_a_token_and_later_writes_newer_ones(
    wire: Wire, group: str
) -> None:
    first = _put(wire, group, "u1", 1).write_token
    many = wire.stub.PutRecords(pb.PutRecordsRequest(
        feature_group_name=group,
        records=[to_record({"user_id": f"m{i}", "ts": T0, "clicks": i}) for i in range(3)],
    ), timeout=10).write_token
    deleted = wire.stub.DeleteRecord(pb.DeleteRecordRequest(
        feature_group_name=group, record_identifier="m0", event_time=str(T0 + 1),
    ), timeout=10).write_token
    stale = _put(wire, group, "u1", 0, ts=T0 - 100)  # older: not applied, still acknowledged
    assert stale.applied is False
    seqs = [decode_token(t) for t in (first, many, deleted, stale.write_token)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_a_read_with_the_token_returns_the_write(wire: Wire, group: str) -> None:
    token = _put(wire, group, "u1", 41).write_token
    before = _consistent_reads(wire, "GetRecord", "visible")
    got = wire.stub.GetRecord(pb.GetRecordRequest(
        feature_group_name=group, record_identifier="u1", consistent_after=token
    ), timeout=10)
    assert got.HasField("record") and {f.feature_name: f for f in got.record.features}[
        "clicks"
    ].int_value == 41
    assert _consistent_reads(wire, "GetRecord", "visible") == before + 1
    batch = wire.stub.BatchGetRecord(pb.BatchGetRecordRequest(
        identifiers=[pb.BatchGetRecordIdentifier(feature_group_name=group,
                                                 record_identifiers=["u1"])],
        consistent_after=token,
    ), timeout=10)
    assert [r.record_identifier for r in batch.records] == ["u1"]


@pytest.mark.parametrize("token", ["garbage", "AQAAAAAAAA+/", "A" * 200])
def test_a_malformed_token_is_invalid_argument_naming_the_field(
    wire: Wire, group: str, token: str
) -> None:
    for call in (
        lambda: wire.stub.GetRecord(pb.GetRecordRequest(
            feature_group_name=group, record_identifier="u1", consistent_after=token
        ), timeout=10),
        lambda: wire.stub.BatchGetRecord(pb.BatchGetRecordRequest(
            identifiers=[pb.BatchGetRecordIdentifier(feature_group_name=group,
                                                     record_identifiers=["u1"])],
            consistent_after=token,
        ), timeout=10),
    ):
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "consistent_after" in (err.details() or "")


def test_a_token_from_the_future_is_failed_precondition_at_once(wire: Wire, group: str) -> None:
    token = _future_token(wire, group)
    before = _consistent_reads(wire, "GetRecord", "never")
    err = rpc_error(lambda: wire.stub.GetRecord(pb.GetRecordRequest(
        feature_group_name=group, record_identifier="probe", consistent_after=token
    ), timeout=10))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not issued by this Tessera" in (err.details() or "")
    assert _consistent_reads(wire, "GetRecord", "never") == before + 1
    err = rpc_error(lambda: wire.stub.BatchGetRecord(pb.BatchGetRecordRequest(
        identifiers=[pb.BatchGetRecordIdentifier(feature_group_name=group,
                                                 record_identifiers=["probe"])],
        consistent_after=token,
    ), timeout=10))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.slow
def test_a_token_survives_a_server_restart(tmp_path: Any) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as fs:
            fs.create_feature_group("users", "user_id", "ts", FEATURES)
            fs.put_record("users", {"user_id": "u1", "ts": T0, "clicks": 5})
            token = fs.write_token
        assert token is not None
        server.stop()
        server.start()
        with FeatureStoreClient(grpc=server.grpc_target, http=None) as reader:
            got = reader.get_record("users", "u1", consistent_after=token)
        assert got is not None and got["clicks"] == 5
    finally:
        server.kill()


# --- the SDK -------------------------------------------------------------------------------------


class _Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Keeps the consistent_after of every read the SDK sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        if isinstance(request, pb.GetRecordRequest | pb.BatchGetRecordRequest):
            self.sent.append(request.consistent_after)
        return continuation(details, request)


def _recording(fs: FeatureStoreClient) -> _Recorder:
    """Intercept the client's own channel (the SDK takes no interceptors)."""
    recorder = _Recorder()
    channel = grpc.intercept_channel(fs._channel, recorder)
    fs._stub = pb_grpc.FeatureStoreStub(channel)  # type: ignore[no-untyped-call]
    return recorder


@pytest.fixture
def fs(server: ServerProcess) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as client:
        yield client


@pytest.fixture
def users(fs: FeatureStoreClient, unique_group_name: str) -> str:
    fs.create_feature_group(unique_group_name, "user_id", "ts", FEATURES)
    return unique_group_name


def test_the_client_passes_its_newest_write_token_to_its_reads(
    fs: FeatureStoreClient, users: str, wire: Wire
) -> None:
    recorder = _recording(fs)
    assert fs.write_token is None
    fs.get_record(users, "u1")
    assert recorder.sent == [""], "no write yet: nothing to ask for"
    fs.put_record(users, {"user_id": "u1", "ts": T0, "clicks": 1})
    after_put = fs.write_token
    assert after_put is not None
    before = _consistent_reads(wire, "GetRecord", "visible")
    got = fs.get_record(users, "u1")
    assert got is not None and got["clicks"] == 1
    assert recorder.sent[-1] == after_put
    assert _consistent_reads(wire, "GetRecord", "visible") == before + 1

    fs.put_records(users, ({"user_id": f"b{i}", "ts": T0, "clicks": i} for i in range(5)),
                   batch_size=2)
    after_bulk = fs.write_token
    assert after_bulk is not None and decode_token(after_bulk) > decode_token(after_put)
    fs.batch_get_record({users: ["b0", "b4"]})
    assert recorder.sent[-1] == after_bulk
    fs.delete_record(users, "b0", event_time=T0 + 1)
    assert fs.write_token is not None and decode_token(fs.write_token) > decode_token(after_bulk)


def test_import_table_updates_the_token(fs: FeatureStoreClient, users: str) -> None:
    pd = pytest.importorskip("pandas")
    fs.put_record(users, {"user_id": "x", "ts": T0, "clicks": 0})
    before = fs.write_token
    assert before is not None
    frame = pd.DataFrame({"user_id": ["i1", "i2"], "ts": [T0, T0], "clicks": [1, 2]})
    fs.import_table(users, frame, progress=False)
    assert fs.write_token is not None and decode_token(fs.write_token) > decode_token(before)


def test_a_client_with_read_your_writes_off_sends_no_token(
    server: ServerProcess, users: str, wire: Wire
) -> None:
    with FeatureStoreClient(grpc=server.grpc_target, http=None, read_your_writes=False) as fs:
        recorder = _recording(fs)
        fs.put_record(users, {"user_id": "u1", "ts": T0, "clicks": 2})
        assert fs.write_token is not None, "the token is still kept, to hand to others"
        before = _consistent_reads(wire, "GetRecord", "visible")
        assert fs.get_record(users, "u1") == {"user_id": "u1", "ts": T0, "clicks": 2}
        fs.batch_get_record({users: ["u1"]})
        assert recorder.sent == ["", ""]
        assert _consistent_reads(wire, "GetRecord", "visible") == before
        # A token from elsewhere is still honoured.
        fs.get_record(users, "u1", consistent_after=fs.write_token)
        assert recorder.sent[-1] == fs.write_token


def test_a_token_handed_to_another_client_is_passed_and_checked(
    fs: FeatureStoreClient, users: str, server: ServerProcess, wire: Wire
) -> None:
    fs.put_record(users, {"user_id": "u1", "ts": T0, "clicks": 3})
    with FeatureStoreClient(grpc=server.grpc_target, http=None) as reader:
        recorder = _recording(reader)
        got = reader.get_record(users, "u1", consistent_after=fs.write_token)
        assert got is not None and got["clicks"] == 3
        assert recorder.sent == [fs.write_token]
        with pytest.raises(InvalidRequestError, match="consistent_after"):
            reader.get_record(users, "u1", consistent_after="not-a-token")
        with pytest.raises(PreconditionFailedError, match="not issued by this Tessera"):
            reader.batch_get_record({users: ["u1"]},
                                    consistent_after=_future_token(wire, users))


def test_the_async_client_keeps_and_passes_its_token(
    server: ServerProcess, unique_group_name: str, wire: Wire
) -> None:
    async def scenario() -> None:
        async with AsyncFeatureStoreClient(grpc=server.grpc_target,
                                           http=server.http_url) as fs:
            await fs.create_feature_group(unique_group_name, "user_id", "ts", FEATURES)
            assert fs.write_token is None
            await fs.put_record(unique_group_name, {"user_id": "u1", "ts": T0, "clicks": 9})
            first = fs.write_token
            assert first is not None
            before = _consistent_reads(wire, "GetRecord", "visible")
            got = await fs.get_record(unique_group_name, "u1")
            assert got is not None and got["clicks"] == 9
            assert _consistent_reads(wire, "GetRecord", "visible") == before + 1
            await fs.put_records(unique_group_name,
                                 [{"user_id": f"a{i}", "ts": T0, "clicks": i} for i in range(3)])
            await fs.delete_record(unique_group_name, "a0", event_time=T0 + 1)
            assert fs.write_token is not None
            assert decode_token(fs.write_token) > decode_token(first)
            batch_before = _consistent_reads(wire, "BatchGetRecord", "visible")
            await fs.batch_get_record({unique_group_name: ["a1"]})
            assert _consistent_reads(wire, "BatchGetRecord", "visible") == batch_before + 1
            with pytest.raises(PreconditionFailedError):
                await fs.get_record(unique_group_name, "u1",
                                    consistent_after=_future_token(wire, unique_group_name))
        async with AsyncFeatureStoreClient(grpc=server.grpc_target, http=None,
                                           read_your_writes=False) as off:
            await off.put_record(unique_group_name, {"user_id": "u2", "ts": T0, "clicks": 1})
            before = _consistent_reads(wire, "GetRecord", "visible")
            assert await off.get_record(unique_group_name, "u2") is not None
            assert _consistent_reads(wire, "GetRecord", "visible") == before

    asyncio.run(scenario())
