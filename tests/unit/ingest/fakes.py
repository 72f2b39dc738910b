"""Test doubles of the Kafka client and of a sink, for the consumer's unit tests (no broker)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME
from confluent_kafka import TopicPartition as KafkaTopicPartition

from tessera.core.errors import StorageError, TesseraError
from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.ingest.sinks import SinkRecord


def schema(name: str = "users", **extra: str) -> CompiledSchema:
    features = {"user_id": "String", "ts": "Fractional", "clicks": "Integral", **extra}
    definition = FeatureGroupDefinition(
        feature_group_name=name, record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in features.items()],
    )
    return CompiledSchema.of(
        FeatureGroup(definition=definition, feature_group_id=1, creation_time=0.0,
                     last_modified_time=0.0)
    )


class FakeMessage:
    def __init__(self, value: bytes | None, *, topic: str = "t", partition: int = 0,
                 offset: int = 0, key: bytes | None = None, timestamp_ms: int = 1_700_000_000_000,
                 headers: list[tuple[str, bytes | None]] | None = None) -> None:
        self._value, self._topic, self._partition, self._offset = value, topic, partition, offset
        self._key, self._ts, self._headers = key, timestamp_ms, headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._ts)

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def error(self) -> None:
        return None


def good(user: str, clicks: int, **kw: Any) -> FakeMessage:
    value = json.dumps({"user_id": user, "ts": 1_700_000_000.0 + clicks, "clicks": clicks})
    return FakeMessage(value.encode(), **kw)


class FakeConsumer:
    """Hands out queued messages; records commits, pauses and everything in `events`."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.queue: list[Any] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.paused: set[tuple[str, int]] = set()
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def rebalance(self, kind: str, partitions: list[tuple[str, int]]) -> None:
        self.callbacks[f"on_{kind}"](self, [KafkaTopicPartition(t, p) for t, p in partitions])

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return out

    def poll(self, timeout: float = -1) -> Any:
        return None

    def commit(self, offsets: list[KafkaTopicPartition], asynchronous: bool = True) -> None:
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self.events.append("commit")

    def assign(self, partitions: list[KafkaTopicPartition]) -> None:
        pass

    def pause(self, partitions: list[KafkaTopicPartition]) -> None:
        new = {(tp.topic, tp.partition) for tp in partitions} - self.paused
        if new:  # pausing a paused partition changes nothing
            self.paused |= new
            self.events.append("pause")

    def resume(self, partitions: list[KafkaTopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}
        self.events.append("resume")

    def position(self, partitions: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]:
        return [KafkaTopicPartition(tp.topic, tp.partition, 0) for tp in partitions]

    def get_watermark_offsets(self, partition: KafkaTopicPartition, **kwargs: Any) -> Any:
        return (0, 10)

    def close(self) -> None:
        self.events.append("close")


class FakeProducer:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.produced: list[dict[str, Any]] = []
        self._callbacks: list[Any] = []

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})
        self._callbacks.append(kwargs["on_delivery"])
        self.events.append("dlq-produce")

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        for cb in self._callbacks:
            cb(None, None)
        self._callbacks = []
        self.events.append("dlq-flush")
        return 0


class FakeSink:
    """Durable at once, or failing with `failures` errors first."""

    def __init__(self, events: list[str], the_schema: CompiledSchema | None = None) -> None:
        self.events = events
        self.the_schema = the_schema or schema()
        self.written: list[SinkRecord] = []
        self.failures: list[TesseraError] = []

    def schema(self, feature_group: str) -> CompiledSchema:
        return self.the_schema

    def write(self, schema: CompiledSchema, records: Sequence[SinkRecord],
              ttl_s: float | None) -> None:
        if self.failures:
            self.events.append("write-failed")
            raise self.failures.pop(0)
        self.written.extend(records)
        self.events.append(f"write:{len(records)}")

    def close(self) -> None:
        pass


def unavailable() -> StorageError:
    return StorageError("the server is down")
