"""The servicer's consistent_after path over a store whose reads lag its commits (as a serving
process's RocksDB secondary does): a read waits off the event loop until the token's write is
visible, gives up with UNAVAILABLE within its deadline, and a read without a token asks the store
nothing. The real RocksDB store and registry underneath; only visibility is held back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from tessera.core.errors import StorageError
from tessera.core.schema import FeatureDefinition, FeatureGroupDefinition
from tessera.core.tokens import decode_token
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.grpc_service import MAX_CONSISTENCY_WAIT_S, FeatureStoreService
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import open_rocksdb


class LaggingStore(RocksDBOnlineStore):
    """Reads reflect commits only up to `shown` (raised by the test), like a secondary."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.shown = 0
        self.asked = 0
        self._moved = threading.Condition()

    def show(self, seq: int) -> None:
        with self._moved:
            self.shown = seq
            self._moved.notify_all()

    def visible_seq(self) -> int:
        self.asked += 1
        return self.shown

    def wait_visible(self, seq: int, timeout_s: float) -> bool:
        self.asked += 1
        with self._moved:
            return self._moved.wait_for(lambda: self.shown >= seq, timeout_s)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FeatureStoreService, LaggingStore]]:
    rocks = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    store = LaggingStore(rocks)
    registry = FeatureGroupRegistry(rocks)
    registry.create(FeatureGroupDefinition(
        feature_group_name="users", record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of("user_id", "String"),
                             FeatureDefinition.of("ts", "Fractional")],
    ))
    try:
        yield FeatureStoreService(registry, store), store
    finally:
        store.close()
        rocks.close()


def _put(service: FeatureStoreService, user: str) -> str:
    request = pb.PutRecordRequest(feature_group_name="users",
                                  record=to_record({"user_id": user, "ts": 1.0}))
    response = pb.PutRecordResponse.FromString(
        asyncio.run(service.put_record(request.SerializeToString()))
    )
    return response.write_token


def _get(user: str, token: str = "") -> bytes:
    return pb.GetRecordRequest(feature_group_name="users", record_identifier=user,
                               consistent_after=token).SerializeToString()


async def _resolve(result: bytes | Awaitable[bytes]) -> bytes:
    return result if isinstance(result, bytes) else await result


def test_a_read_waits_off_the_event_loop_until_the_write_is_visible(
    setup: tuple[FeatureStoreService, LaggingStore],
) -> None:
    service, store = setup
    token = _put(service, "u1")

    async def scenario() -> tuple[bytes, int, float]:
        ticks = 0

        async def ticker() -> None:  # runs only if the loop is free while the read waits
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, store.show, decode_token(token))
        start = time.monotonic()
        body = await _resolve(service.get_record(_get("u1", token), lambda: 10.0))
        tick.cancel()
        return body, ticks, time.monotonic() - start

    body, ticks, waited = asyncio.run(scenario())
    assert from_record(pb.GetRecordResponse.FromString(body).record) == {"user_id": "u1",
                                                                         "ts": 1.0}
    assert 0.15 < waited < 2.0 and ticks >= 10


def test_a_write_not_visible_within_the_deadline_is_unavailable(
    setup: tuple[FeatureStoreService, LaggingStore],
) -> None:
    service, _ = setup
    token = _put(service, "u1")
    start = time.monotonic()
    batch = pb.BatchGetRecordRequest(
        identifiers=[pb.BatchGetRecordIdentifier(feature_group_name="users",
                                                 record_identifiers=["u1"])],
        consistent_after=token,
    ).SerializeToString()
    with pytest.raises(StorageError, match="does not reflect the write") as info:
        asyncio.run(_resolve(service.batch_get_record(batch, lambda: 0.3)))
    assert info.value.grpc_code == "UNAVAILABLE"
    assert 0.25 < time.monotonic() - start < MAX_CONSISTENCY_WAIT_S


def test_a_read_without_a_token_asks_the_store_nothing(
    setup: tuple[FeatureStoreService, LaggingStore],
) -> None:
    service, store = setup
    _put(service, "u1")
    result = service.get_record(_get("u1"), None)
    assert isinstance(result, bytes), "answered synchronously, no coroutine"
    assert from_record(pb.GetRecordResponse.FromString(result).record)["user_id"] == "u1"
    assert store.asked == 0


def test_a_visible_token_is_read_synchronously(
    setup: tuple[FeatureStoreService, LaggingStore],
) -> None:
    service, store = setup
    token = _put(service, "u1")
    store.show(decode_token(token))
    result = service.get_record(_get("u1", token), None)
    assert isinstance(result, bytes) and store.asked == 1  # one visible_seq, no wait
