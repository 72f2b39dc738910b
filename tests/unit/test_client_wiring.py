"""The clients' deadlines, retries and error mapping through a real channel, against an
in-process fake FeatureStore servicer (no Tessera server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tessera.client import (
    AsyncFeatureStoreClient,
    DeadlineExceededError,
    FeatureStoreClient,
    InvalidRequestError,
    RetryPolicy,
    StorageError,
    TesseraError,
)
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc


class FakeFeatureStore(feature_store_pb2_grpc.FeatureStoreServicer):
    """GetRecord: UNAVAILABLE `unavailable` times, then a record. PutRecord: slower than any
    deadline. DeleteRecord: INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.unavailable = 0
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def GetRecord(self, request: pb.GetRecordRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]  # noqa: N802
        self._count("GetRecord")
        if self.unavailable:
            self.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "store is busy")
        if request.record_identifier == "slow":
            time.sleep(0.5)
        record = pb.Record(features=[pb.FeatureValue(feature_name="clicks", int_value=3)])
        return pb.GetRecordResponse(record=record)

    def PutRecord(self, request: pb.PutRecordRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]  # noqa: N802
        self._count("PutRecord")
        time.sleep(0.5)
        return pb.PutRecordResponse(applied=True)

    def DeleteRecord(self, request: pb.DeleteRecordRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]  # noqa: N802
        self._count("DeleteRecord")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event_time 'x' is not valid")


@pytest.fixture
def fake() -> Iterator[tuple[FakeFeatureStore, str]]:
    servicer = FakeFeatureStore()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    feature_store_pb2_grpc.add_FeatureStoreServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


FAST = RetryPolicy(retries=3, initial_backoff_s=0.001, max_backoff_s=0.01)


def test_sync_client_retries_unavailable_then_reads(fake: tuple[FakeFeatureStore, str]) -> None:
    servicer, target = fake
    servicer.unavailable = 2
    with FeatureStoreClient(grpc=target, http=None, retry_policy=FAST) as fs:
        assert fs.get_record("users", "u1") == {"clicks": 3}
    assert servicer.calls["GetRecord"] == 3


def test_sync_client_gives_up_after_retries(fake: tuple[FakeFeatureStore, str]) -> None:
    servicer, target = fake
    servicer.unavailable = 10
    with (
        FeatureStoreClient(grpc=target, http=None, retry_policy=FAST) as fs,
        pytest.raises(StorageError, match="store is busy"),
    ):
        fs.get_record("users", "u1")
    assert servicer.calls["GetRecord"] == 4


def test_sync_client_does_not_retry_invalid_argument(fake: tuple[FakeFeatureStore, str]) -> None:
    servicer, target = fake
    with (
        FeatureStoreClient(grpc=target, http=None, retry_policy=FAST) as fs,
        pytest.raises(InvalidRequestError, match="event_time"),
    ):
        fs.delete_record("users", "u1", event_time="x")
    assert servicer.calls["DeleteRecord"] == 1


def test_a_read_slower_than_its_deadline_fails_within_it(fake: tuple[FakeFeatureStore, str]) -> None:
    # timeout_s bounds the call and its retries: the first attempt has all of it, and once it
    # is spent there is no time left for a retry (tests/unit/client/test_deadline.py retries
    # a read the server cancelled with time to spare).
    servicer, target = fake
    start = time.monotonic()
    with (
        FeatureStoreClient(grpc=target, http=None, timeout_s=0.1, retry_policy=FAST) as fs,
        pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"),
    ):
        fs.get_record("users", "slow")
    assert time.monotonic() - start < 0.5
    assert servicer.calls["GetRecord"] == 1


def test_deadline_exceeded_is_not_retried_for_writes(fake: tuple[FakeFeatureStore, str]) -> None:
    servicer, target = fake
    with FeatureStoreClient(grpc=target, http=None, timeout_s=0.1, retry_policy=FAST) as fs:
        with pytest.raises(TesseraError, match="DEADLINE_EXCEEDED"):
            fs.put_record("users", {"user_id": "u1"})
        time.sleep(0.3)  # a retry, had there been one, would have reached the servicer by now
    assert servicer.calls["PutRecord"] == 1


def test_client_without_http_url_refuses_feature_group_calls(
    fake: tuple[FakeFeatureStore, str],
) -> None:
    _, target = fake
    with (
        FeatureStoreClient(grpc=target, http=None) as fs,
        pytest.raises(TesseraError, match="http="),
    ):
        fs.list_feature_groups()


def test_async_client_retries_and_maps_errors(fake: tuple[FakeFeatureStore, str]) -> None:
    servicer, target = fake
    servicer.unavailable = 2

    async def run() -> None:
        async with AsyncFeatureStoreClient(grpc=target, http=None, retry_policy=FAST) as fs:
            assert await fs.get_record("users", "u1") == {"clicks": 3}
            with pytest.raises(InvalidRequestError):
                await fs.delete_record("users", "u1", event_time="x")

    asyncio.run(run())
    assert servicer.calls == {"GetRecord": 3, "DeleteRecord": 1}
