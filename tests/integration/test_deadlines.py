"""A read that runs past its deadline: the server answers DEADLINE_EXCEEDED (not CANCELLED, not
OK) and the SDK raises DeadlineExceededError once the call's deadline, retries included, is
spent; the sync and the asyncio client alike. Real server, real reads."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tessera.client import (
    AsyncFeatureStoreClient,
    DeadlineExceededError,
    FeatureStoreClient,
)
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tests.integration.wire_helpers import Wire, channels_on_each, metric_total
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

IDS = [f"u{i}" for i in range(100)]


def _deadline_answers(w: Wire, method: str) -> float:
    return metric_total(w.http.get("/metrics").text, "tessera_grpc_requests_total",
                        code="DEADLINE_EXCEEDED", method=method) or 0.0


@pytest.fixture
def slow_read(server: ServerProcess, unique_group_name: str) -> pb.BatchGetRecordRequest:
    """A BatchGetRecord of 100 x 100 records with a feature filter (each decoded): ~0.1 s."""
    w = Wire(server.grpc_target, server.http_url)
    w.create_group(unique_group_name)
    w.stub.PutRecords(pb.PutRecordsRequest(feature_group_name=unique_group_name, records=[
        to_record({"user_id": rid, "ts": 1.7e9, "clicks": i, "name": "x" * 200})
        for i, rid in enumerate(IDS)
    ]), timeout=10)
    w.close()
    return pb.BatchGetRecordRequest(identifiers=[
        pb.BatchGetRecordIdentifier(feature_group_name=unique_group_name,
                                    record_identifiers=IDS, feature_names=["clicks", "name"])
        for _ in range(100)
    ])


class Busy:
    """One connection to each serving process (--workers N: found by pid; the SDK's connection
    is on one of them, which one is the kernel's choice), to make every process busy at once
    with a slow read: whichever process the SDK's next read lands on is busy."""

    def __init__(self, server: ServerProcess) -> None:
        if server.workers == 1:
            channel = grpc.insecure_channel(server.grpc_target)
            grpc.channel_ready_future(channel).result(timeout=10)
            self.channels = [channel]
        else:
            self.channels = list(channels_on_each(server.grpc_target, server.workers).values())
        assert len(self.channels) == server.workers, "a serving process got no connection"

    def start(self, read: pb.BatchGetRecordRequest) -> list[grpc.Future]:  # type: ignore[type-arg]
        return [pb_grpc.FeatureStoreStub(ch).BatchGetRecord.future(read, timeout=30)
                for ch in self.channels]

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


def test_server_answers_deadline_exceeded_for_a_read_past_its_deadline(
    server: ServerProcess, slow_read: pb.BatchGetRecordRequest
) -> None:
    w = Wire(server.grpc_target, server.http_url)
    try:
        start = time.perf_counter()
        w.stub.BatchGetRecord(slow_read, timeout=30)
        full_s = time.perf_counter() - start
        before = _deadline_answers(w, "BatchGetRecord")
        codes = set()
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                w.stub.BatchGetRecord(slow_read, timeout=full_s / 5)
            codes.add(info.value.code())
        assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
        # The server itself said DEADLINE_EXCEEDED for the reads it finished too late.
        deadline = time.monotonic() + 5
        while _deadline_answers(w, "BatchGetRecord") == before:
            assert time.monotonic() < deadline, "the server never answered DEADLINE_EXCEEDED"
            time.sleep(0.05)
    finally:
        w.close()


def test_sdk_raises_deadline_exceeded_when_the_deadline_is_spent(
    server: ServerProcess, slow_read: pb.BatchGetRecordRequest, unique_group_name: str
) -> None:
    busy = Busy(server)
    with FeatureStoreClient(grpc=server.grpc_target, http=None, timeout_s=0.05) as fs:
        fs.get_record(unique_group_name, "u1")  # connected
        calls = busy.start(slow_read)  # every serving process is busy...
        time.sleep(0.01)
        with pytest.raises(DeadlineExceededError, match="GetRecord did not complete within"):
            fs.get_record(unique_group_name, "u1")  # ...past this read's deadline
        for call in calls:
            call.result()
    busy.close()
    with FeatureStoreClient(grpc=server.grpc_target, http=None, timeout_s=10) as fs:
        assert fs.get_record(unique_group_name, "u1")["clicks"] == 1  # time enough: answered


def test_async_sdk_raises_deadline_exceeded_when_the_deadline_is_spent(
    server: ServerProcess, slow_read: pb.BatchGetRecordRequest, unique_group_name: str
) -> None:
    async def main() -> None:
        async with AsyncFeatureStoreClient(
            grpc=server.grpc_target, http=None, timeout_s=0.05
        ) as fs:
            await fs.get_record(unique_group_name, "u1")  # connected
            calls = busy.start(slow_read)  # every serving process is busy
            await asyncio.sleep(0.01)
            with pytest.raises(DeadlineExceededError, match="GetRecord did not complete"):
                await fs.get_record(unique_group_name, "u1")
            for call in calls:
                call.result()
        async with AsyncFeatureStoreClient(grpc=server.grpc_target, http=None) as fs:
            got = await fs.get_record(unique_group_name, "u1")
            assert got is not None and got["clicks"] == 1

    busy = Busy(server)
    try:
        asyncio.run(main())
    finally:
        busy.close()
