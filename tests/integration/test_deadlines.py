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
from tests.integration.wire_helpers import Wire
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

IDS = [f"u{i}" for i in range(100)]


def _deadline_answers(w: Wire, method: str) -> float:
    prefix = f'tessera_grpc_requests_total{{code="DEADLINE_EXCEEDED",method="{method}"}} '
    for line in w.http.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[1])
    return 0.0


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
    w = Wire(server.grpc_target, server.http_url)
    with FeatureStoreClient(grpc=server.grpc_target, http=None, timeout_s=0.05) as fs:
        fs.get_record(unique_group_name, "u1")  # connected
        busy = w.stub.BatchGetRecord.future(slow_read, timeout=30)  # the server is busy...
        time.sleep(0.01)
        with pytest.raises(DeadlineExceededError, match="GetRecord did not complete within"):
            fs.get_record(unique_group_name, "u1")  # ...past this read's deadline
        busy.result()
    w.close()
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
            busy = w.stub.BatchGetRecord.future(slow_read, timeout=30)
            await asyncio.sleep(0.01)
            with pytest.raises(DeadlineExceededError, match="GetRecord did not complete"):
                await fs.get_record(unique_group_name, "u1")
            busy.result()
        async with AsyncFeatureStoreClient(grpc=server.grpc_target, http=None) as fs:
            got = await fs.get_record(unique_group_name, "u1")
            assert got is not None and got["clicks"] == 1

    w = Wire(server.grpc_target, server.http_url)
    try:
        asyncio.run(main())
    finally:
        w.close()
