"""The consumer's parts, each on its own: offsets, backpressure, the schema cache, the batch
writer (no broker; the Kafka client, the producer and the sink are the doubles of fakes.py)."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from tessera.core.errors import InvalidRequestError
from tessera.core.schema import CompiledSchema
from tessera.ingest import IngestMetrics, config_from_dict
from tessera.ingest.backpressure import Backpressure
from tessera.ingest.batch import PreparedBatch, Preparer
from tessera.ingest.config import TopicConfig
from tessera.ingest.dlq import DeadLetterQueue
from tessera.ingest.offsets import OffsetTracker
from tessera.ingest.schemas import SCHEMA_RECHECK_S, SchemaCache
from tessera.ingest.writer import BatchWriter, Finished
from tests.unit.ingest.fakes import (
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    FakeSink,
    good,
    schema,
    unavailable,
)


def topic() -> TopicConfig:
    cfg = config_from_dict({"bootstrap_servers": "unused:9092",
                            "topics": [{"topic": "t", "feature_group": "users"}]})
    return cfg.topics[0]


def sample(metrics: IngestMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- OffsetTracker -------------------------------------------------------------------------------


class FlakyCommits(FakeConsumer):
    def __init__(self, events: list[str]) -> None:
        super().__init__(events)
        self.fail = 0

    def commit(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        super().commit(*args, **kwargs)


def test_offsets_commit_only_assigned_partitions() -> None:
    kafka = FakeConsumer([])
    offsets = OffsetTracker(IngestMetrics())
    offsets.assign([("t", 0), ("t", 1)])
    offsets.commit(kafka, {("t", 0): 5, ("t", 2): 9})
    assert kafka.commits == [{("t", 0): 5}]
    offsets.commit(kafka, {("t", 2): 9})
    assert len(kafka.commits) == 1, "nothing assigned to commit: no call"
    assert [(tp.topic, tp.partition) for tp in offsets.assignment()] == [("t", 0), ("t", 1)]


def test_a_failed_commit_is_retried_with_the_next_one() -> None:
    kafka = FlakyCommits([])
    kafka.fail = 1
    offsets = OffsetTracker(IngestMetrics())
    offsets.assign([("t", 0), ("t", 1)])
    offsets.commit(kafka, {("t", 0): 5})
    assert kafka.commits == []
    offsets.commit(kafka, {("t", 1): 3})
    assert kafka.commits == [{("t", 0): 5, ("t", 1): 3}]


def test_lost_partitions_drop_their_uncommitted_offsets() -> None:
    kafka = FlakyCommits([])
    kafka.fail = 1
    offsets = OffsetTracker(IngestMetrics())
    offsets.assign([("t", 0), ("t", 1)])
    offsets.commit(kafka, {("t", 0): 5, ("t", 1): 7})
    offsets.lose({("t", 0)})
    offsets.commit(kafka, {})
    assert kafka.commits == [{("t", 1): 7}]


def test_lag_gauges_follow_the_assignment() -> None:
    metrics = IngestMetrics()
    offsets = OffsetTracker(metrics)
    offsets.assign([("t", 0), ("t", 1)])
    offsets.update_lag(FakeConsumer([]))  # position 0, high watermark 10
    assert sample(metrics, "tessera_ingest_consumer_lag", topic="t", partition="1") == 10
    offsets.revoke({("t", 1)})
    assert sample(metrics, "tessera_ingest_consumer_lag", topic="t", partition="1") is None
    assert sample(metrics, "tessera_ingest_consumer_lag", topic="t", partition="0") == 10


# --- Backpressure --------------------------------------------------------------------------------


def prepared(*messages: FakeMessage) -> PreparedBatch:
    return Preparer(topic(), 1 << 20).prepare(list(messages), schema())


def test_hold_pauses_once_and_backs_off_exponentially_up_to_the_ceiling() -> None:
    events: list[str] = []
    pauses: list[list[KafkaTopicPartition]] = []

    class Counting(FakeConsumer):
        def pause(self, partitions: list[KafkaTopicPartition]) -> None:
            pauses.append(partitions)
            super().pause(partitions)

    kafka = Counting(events)
    metrics = IngestMetrics()
    clock = Clock()
    bp = Backpressure("t", 1.0, 5.0, metrics, clock=clock, rng=random.Random(7))
    assignment = [KafkaTopicPartition("t", 0)]
    batch = prepared(good("a", 1))
    delays = []
    for _ in range(5):
        bp.hold(batch, "down", kafka, assignment)
        delays.append(bp.retry_at - clock.now)
        assert bp.pending is batch and not bp.due()
        clock.now = bp.retry_at
        assert bp.due()
        assert bp.take() is batch and bp.pending is None
    for n, delay in enumerate(delays):
        ceiling = min(5.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert bp.paused and bp.retries == 5 and len(pauses) == 1
    assert sample(metrics, "tessera_ingest_paused", topic="t") == 1
    assert sample(metrics, "tessera_ingest_store_retries_total", topic="t") == 5
    bp.recovered(kafka, assignment)
    assert not bp.paused and bp.retries == 0 and events.count("resume") == 1
    assert sample(metrics, "tessera_ingest_paused", topic="t") == 0


def test_forget_drops_held_work_of_revoked_partitions_and_ends_the_pause() -> None:
    bp = Backpressure("t", 1.0, 5.0, IngestMetrics())
    kafka = FakeConsumer([])
    bp.hold(prepared(good("a", 1, partition=0), good("b", 2, partition=1)), "down", kafka, [])
    assert bp.forget({("t", 0)}) == 1
    assert bp.pending is not None and bp.paused, "partition 1's message is still held"
    assert bp.forget({("t", 1)}) == 1
    assert bp.pending is None and not bp.paused and bp.retries == 0


# --- SchemaCache ---------------------------------------------------------------------------------


class SchemaSink(FakeSink):
    def __init__(self) -> None:
        super().__init__([])
        self.answers: list[CompiledSchema | Exception] = []

    def schema(self, feature_group: str) -> CompiledSchema:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_schema_cache_keeps_the_last_schema_when_a_refresh_fails() -> None:
    sink = SchemaSink()
    clock = Clock()
    cache = SchemaCache(sink, "users", clock=clock)
    with pytest.raises(RuntimeError):
        cache.current()
    first, second = schema(), schema(extra="String")
    sink.answers = [first, unavailable(), ValueError("a bug"), second]
    assert cache.refresh() and cache.current() is first
    assert not cache.refresh() and cache.current() is first
    assert not cache.refresh() and cache.current() is first
    assert not cache.is_stale()
    clock.now += SCHEMA_RECHECK_S
    assert cache.is_stale()
    assert cache.refresh() and cache.current() is second


def test_loading_the_schema_retries_until_it_is_there_or_stopped() -> None:
    sink = SchemaSink()
    sink.answers = [unavailable(), unavailable(), schema()]
    cache = SchemaCache(sink, "users")
    assert cache.load(threading.Event(), 0.001, 0.002)
    stop = threading.Event()
    stop.set()
    assert not SchemaCache(SchemaSink(), "users").load(stop, 0.001, 0.002)


# --- BatchWriter ---------------------------------------------------------------------------------


class Writing:
    def __init__(self, sink: FakeSink | None = None) -> None:
        self.events: list[str] = []
        self.sink = sink or FakeSink(self.events)
        self.producer = FakeProducer(self.events)
        self.metrics = IngestMetrics()
        t = topic()
        self.preparer = Preparer(t, 1 << 20)
        schemas = SchemaCache(self.sink, "users")
        assert schemas.refresh()
        self.writer = BatchWriter(t, self.sink, schemas, self.preparer, self.metrics)
        self.writer.dead_letters = DeadLetterQueue(self.producer, "t.dlq")

    def run(self, batch: PreparedBatch) -> Finished:
        self.writer.start(batch)
        assert self.writer.busy
        finished = self.writer.outcome(wait_s=10)
        assert finished is not None and not self.writer.busy
        return finished


def test_a_written_batch_is_done_with_its_dead_letters_acknowledged() -> None:
    w = Writing()
    batch = prepared(good("a", 1), FakeMessage(b"{oops", offset=1), good("b", 2, offset=2))
    finished = w.run(batch)
    assert finished == Finished(batch) and finished.retry_why is None
    assert w.events == ["write:2", "dlq-produce", "dlq-flush"]
    assert w.writer.records_written == 2 and batch.written and batch.dead == []
    w.writer.close()


def test_a_store_failure_hands_the_batch_back_for_a_retry_that_writes_it_once() -> None:
    w = Writing()
    w.sink.failures = [unavailable()]
    batch = prepared(good("a", 1))
    finished = w.run(batch)
    assert finished.batch is batch and finished.retry_why is not None
    assert "unavailable" in finished.retry_why and not batch.written
    assert w.run(batch).retry_why is None
    assert w.events == ["write-failed", "write:1"] and w.writer.records_written == 1
    w.writer.close()


def test_an_unexpected_sink_error_is_retried_too() -> None:
    class Broken(FakeSink):
        def write(self, schema: Any, records: Any, ttl_s: Any) -> None:
            raise ConnectionResetError("peer went away")

    w = Writing(Broken([]))
    finished = w.run(prepared(good("a", 1)))
    assert finished.retry_why is not None and "ConnectionResetError" in finished.retry_why
    w.writer.close()


def test_dead_letters_the_broker_did_not_take_are_retried_without_writing_again() -> None:
    class Unflushed(FakeProducer):
        def flush(self, timeout: float = -1) -> int:
            self.events.append("dlq-flush-timeout")
            return len(self._callbacks)

    w = Writing()
    w.writer.dead_letters = DeadLetterQueue(Unflushed(w.events), "t.dlq", flush_timeout_s=0.01)
    batch = prepared(good("a", 1), FakeMessage(b"{oops", offset=1))
    finished = w.run(batch)
    assert finished.retry_why is not None and "dead-letter" in finished.retry_why
    assert batch.written and len(batch.dead) == 1
    w.writer.dead_letters = DeadLetterQueue(w.producer, "t.dlq")
    assert w.run(batch).retry_why is None
    assert w.events == ["write:1", "dlq-produce", "dlq-flush-timeout", "dlq-produce", "dlq-flush"]
    w.writer.close()


def test_a_refused_batch_is_revalidated_and_its_refused_records_dead_lettered() -> None:
    class Refusing(FakeSink):
        def write(self, schema: Any, records: Any, ttl_s: Any) -> None:
            if any(r.source.endswith("/1") for r in records):
                raise InvalidRequestError("records[0]: refused by the store")
            super().write(schema, records, ttl_s)

    w = Writing(Refusing([]))
    batch = prepared(good("a", 1), good("b", 2, offset=1), good("c", 3, offset=2))
    assert w.run(batch).retry_why is None
    assert [r.source for r in w.sink.written] == ["kafka:t/0/0", "kafka:t/0/2"]
    assert [r.source for r in batch.records] == ["kafka:t/0/0", "kafka:t/0/2"]
    assert w.writer.records_written == 2
    assert sample(w.metrics, "tessera_ingest_dead_letters_total", topic="t",
                  error_class="schema") == 1
    w.writer.close()


def test_one_batch_at_a_time() -> None:
    release = threading.Event()

    class Slow(FakeSink):
        def write(self, schema: Any, records: Any, ttl_s: Any) -> None:
            release.wait(5)
            super().write(schema, records, ttl_s)

    w = Writing(Slow([]))
    w.writer.start(prepared(good("a", 1)))
    assert w.writer.outcome() is None, "still running"
    with pytest.raises(RuntimeError):
        w.writer.start(prepared(good("b", 2)))
    release.set()
    finished = w.writer.outcome(wait_s=10)
    assert finished is not None and finished.retry_why is None
    assert w.writer.outcome() is None, "nothing in flight"
    w.writer.close()
