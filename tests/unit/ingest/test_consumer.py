"""The consumer loop against test doubles: commit only after durable, dead letters flushed before
the commit, backpressure while the store is down, rebalances dropping in-flight work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tessera.core.errors import InvalidRequestError
from tessera.ingest import IngestMetrics, config_from_dict
from tessera.ingest.consumer import TopicConsumer
from tessera.ingest.dlq import ERROR_CLASS, ERROR_REASON, SOURCE_OFFSET
from tests.unit.ingest.fakes import (
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    FakeSink,
    good,
    unavailable,
)


class Harness:
    def __init__(self, sink: type[FakeSink] = FakeSink, **config: Any) -> None:
        self.events: list[str] = []
        self.kafka = FakeConsumer(self.events)
        self.producer = FakeProducer(self.events)
        self.sink = sink(self.events)
        self.metrics = IngestMetrics()
        cfg = config_from_dict({
            "bootstrap_servers": "unused:9092", "batch_max_records": 3, "batch_max_ms": 10_000,
            "retry_initial_backoff_s": 0.001, "retry_max_backoff_s": 0.002, **config,
            "topics": [{"topic": "t", "feature_group": "users"}],
        })
        self.consumer = TopicConsumer(cfg, cfg.topics[0], self.sink, self.metrics,
                                      consumer_factory=lambda conf: self.kafka,
                                      producer=self.producer)
        assert self.consumer.open(threading.Event())
        self.kafka.rebalance("assign", [("t", 0), ("t", 1)])

    def feed(self, *messages: FakeMessage) -> None:
        self.kafka.queue.extend(messages)

    def step_until(self, check: Callable[[], bool], steps: int = 200) -> None:
        for _ in range(steps):
            if check():
                return
            self.consumer.step()
            time.sleep(0.002)  # the fake consumer never waits
        raise AssertionError(f"not reached; events: {self.events}")

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def test_offsets_plus_one_are_committed_after_the_batch_is_durable() -> None:
    h = Harness()
    h.feed(good("a", 1, offset=10), good("b", 2, offset=11), good("c", 3, partition=1, offset=4))
    h.step_until(lambda: bool(h.kafka.commits))
    assert h.events == ["write:3", "commit"]
    assert h.kafka.commits == [{("t", 0): 12, ("t", 1): 5}]
    assert [r.source for r in h.sink.written] == ["kafka:t/0/10", "kafka:t/0/11", "kafka:t/1/4"]
    assert h.metric("tessera_ingest_records_total", topic="t", feature_group="users") == 3
    assert h.metric("tessera_ingest_freshness_seconds_count", feature_group="users") == 3


def test_a_partial_batch_is_written_when_its_time_is_up() -> None:
    h = Harness(batch_max_ms=1)
    h.feed(good("a", 1))
    h.step_until(lambda: bool(h.kafka.commits))
    assert h.kafka.commits == [{("t", 0): 1}]


def test_dead_letters_are_flushed_before_the_offsets_past_them_are_committed() -> None:
    h = Harness()
    h.feed(good("a", 1, offset=0), FakeMessage(b"{oops", offset=1, key=b"k",
                                                   headers=[("trace", b"1")]), good("b", 2, offset=2))
    h.step_until(lambda: bool(h.kafka.commits))
    assert h.events == ["write:2", "dlq-produce", "dlq-flush", "commit"]
    (letter,) = h.producer.produced
    assert letter["topic"] == "t.dlq" and letter["value"] == b"{oops" and letter["key"] == b"k"
    headers = dict(letter["headers"])
    assert headers["trace"] == b"1" and headers[ERROR_CLASS] == b"undecodable"
    assert headers[SOURCE_OFFSET] == b"1"
    assert h.kafka.commits == [{("t", 0): 3}]
    assert h.metric("tessera_ingest_dead_letters_total", topic="t", error_class="undecodable") == 1


def test_store_down_pauses_retries_and_commits_nothing_until_it_is_back() -> None:
    h = Harness()
    h.sink.failures = [unavailable(), unavailable(), unavailable()]
    h.feed(good("a", 1), good("b", 2, offset=1), good("c", 3, offset=2))
    h.step_until(lambda: "pause" in h.events)
    assert h.events == ["write-failed", "pause"]
    assert h.kafka.paused == {("t", 0), ("t", 1)}
    assert h.metric("tessera_ingest_paused", topic="t") == 1
    h.step_until(lambda: bool(h.kafka.commits))
    assert h.events == ["write-failed", "pause", "write-failed", "write-failed", "write:3",
                        "commit", "resume"]
    assert h.kafka.paused == set()
    assert h.metric("tessera_ingest_store_retries_total", topic="t") == 3
    assert h.metric("tessera_ingest_paused", topic="t") == 0


def test_a_revoke_commits_what_is_done_and_drops_in_flight_work() -> None:
    h = Harness()
    h.sink.failures = [unavailable()] * 100
    h.feed(good("a", 1), good("b", 2, offset=1), good("c", 3, offset=2), good("d", 4, offset=3))
    h.step_until(lambda: "pause" in h.events)  # the first three: write failed, pending
    h.kafka.rebalance("revoke", [("t", 0), ("t", 1)])
    assert h.kafka.commits == [] and h.events[-1] == "pause"
    h.sink.failures = []
    h.kafka.queue = []  # the new owner reads from the committed offset
    h.kafka.rebalance("assign", [("t", 1)])
    for _ in range(5):
        h.consumer.step()
    assert h.sink.written == [], "the dropped batch is not written by the old owner"
    assert h.metric("tessera_ingest_paused", topic="t") == 0


def test_a_batch_the_store_refuses_is_validated_again_and_the_refused_records_dead_lettered(
) -> None:
    class Refusing(FakeSink):
        def write(self, schema: Any, records: Any, ttl_s: Any) -> None:
            if any(r.source.endswith("/1") for r in records):
                raise InvalidRequestError("records[0]: refused by the store")
            super().write(schema, records, ttl_s)

    h = Harness(Refusing)
    h.feed(good("a", 1), good("b", 2, offset=1), good("c", 3, offset=2))
    h.step_until(lambda: bool(h.kafka.commits))
    assert [r.source for r in h.sink.written] == ["kafka:t/0/0", "kafka:t/0/2"]
    (letter,) = h.producer.produced
    assert dict(letter["headers"])[ERROR_CLASS] == b"schema"
    assert h.kafka.commits == [{("t", 0): 3}]


def test_drain_on_stop_writes_the_buffered_batch_and_commits() -> None:
    h = Harness(batch_max_records=100)
    h.feed(good("a", 1), good("b", 2, offset=1))
    h.consumer.step()
    assert h.kafka.commits == []
    h.consumer.drain()
    h.consumer.close()
    assert h.events == ["write:2", "commit", "close", "dlq-flush"]


def test_drain_gives_up_after_its_timeout_without_committing() -> None:
    h = Harness(batch_max_records=100, drain_timeout_s=0.05)
    h.sink.failures = [unavailable()] * 10_000
    h.feed(good("a", 1))
    h.consumer.step()
    h.consumer.drain()
    assert h.kafka.commits == []
    h.consumer.close()


@pytest.mark.parametrize("kind", ["revoke", "lost"])
def test_lag_gauges_of_revoked_partitions_are_removed(kind: str) -> None:
    h = Harness(batch_max_ms=1)
    h.feed(good("a", 1))
    h.step_until(lambda: h.metric("tessera_ingest_consumer_lag", topic="t", partition="0") > 0)
    h.kafka.rebalance(kind, [("t", 0), ("t", 1)])
    assert h.metrics.registry.get_sample_value(
        "tessera_ingest_consumer_lag", {"topic": "t", "partition": "0"}) is None


def test_the_next_batch_is_prepared_while_one_is_being_written_and_commits_keep_their_order(
) -> None:
    release = threading.Event()

    class Slow(FakeSink):
        def write(self, schema: Any, records: Any, ttl_s: Any) -> None:
            release.wait(5)
            super().write(schema, records, ttl_s)

    h = Harness(Slow)
    h.feed(*(good(f"u{i}", i, offset=i) for i in range(9)))
    # The first batch in flight, the second decoded and validated, the third gathered.
    h.step_until(lambda: h.consumer._next is not None and len(h.consumer._batcher) == 3)
    assert [r.source for r in h.consumer._next.records] == [f"kafka:t/0/{i}" for i in (3, 4, 5)]
    for _ in range(5):  # nothing more is fetched, nothing committed before the first ack
        h.consumer.step()
    assert h.kafka.commits == [] and h.kafka.queue == [] and h.sink.written == []
    release.set()
    h.step_until(lambda: len(h.kafka.commits) == 3)
    assert h.kafka.commits == [{("t", 0): 3}, {("t", 0): 6}, {("t", 0): 9}]
    assert h.events == ["write:3", "commit"] * 3
    assert [r.source for r in h.sink.written] == [f"kafka:t/0/{i}" for i in range(9)]


def test_a_failed_write_goes_again_before_the_prepared_batch_and_nothing_is_committed_early(
) -> None:
    h = Harness()
    h.sink.failures = [unavailable(), unavailable()]
    h.feed(*(good(f"u{i}", i, offset=i) for i in range(6)))
    h.step_until(lambda: bool(h.kafka.commits))
    # The first batch failed twice, was retried and committed before the second was written.
    assert h.events[:6] == ["write-failed", "pause", "write-failed", "write:3", "commit",
                            "resume"]
    h.step_until(lambda: len(h.kafka.commits) == 2)
    assert h.kafka.commits == [{("t", 0): 3}, {("t", 0): 6}]
    assert [r.source for r in h.sink.written] == [f"kafka:t/0/{i}" for i in range(6)]


def test_a_revoke_drops_the_prepared_batch_of_revoked_partitions() -> None:
    release = threading.Event()

    class Slow(FakeSink):
        def write(self, schema: Any, records: Any, ttl_s: Any) -> None:
            release.wait(5)
            super().write(schema, records, ttl_s)

    h = Harness(Slow)
    h.feed(good("a", 1, offset=0), good("b", 2, offset=1), good("c", 3, offset=2),
           good("d", 4, offset=3), good("e", 5, partition=1, offset=0), good("f", 6, offset=4))
    h.step_until(lambda: h.consumer._next is not None)
    release.set()  # the revoke waits for the write in flight and commits it
    h.kafka.rebalance("revoke", [("t", 0)])
    assert h.kafka.commits == [{("t", 0): 3}]
    assert [r.source for r in h.consumer._next.records] == ["kafka:t/1/0"]
    h.step_until(lambda: len(h.kafka.commits) == 2)
    assert h.kafka.commits[1] == {("t", 1): 1}
    assert [r.source for r in h.sink.written] == ["kafka:t/0/0", "kafka:t/0/1", "kafka:t/0/2",
                                                  "kafka:t/1/0"]


def test_each_bad_message_of_a_batch_is_dead_lettered_with_its_reason_and_the_rest_written(
) -> None:
    h = Harness(batch_max_records=6)
    h.feed(good("a", 1, offset=0),
           FakeMessage(b'{"user_id": "b", "ts": 1700000000.0, "clicks": "many"}', offset=1),
           good("c", 3, offset=2),
           FakeMessage(b'{"user_id": "d\\ud800", "ts": 1700000000.0}', offset=3),
           FakeMessage(b"\xff\xfe", offset=4),
           good("f", 6, offset=5))
    h.step_until(lambda: bool(h.kafka.commits))
    assert h.events == ["write:3", "dlq-produce", "dlq-produce", "dlq-produce", "dlq-flush",
                        "commit"]
    assert [r.source for r in h.sink.written] == ["kafka:t/0/0", "kafka:t/0/2", "kafka:t/0/5"]
    letters = [dict(p["headers"]) for p in h.producer.produced]
    assert [(x[SOURCE_OFFSET], x[ERROR_CLASS]) for x in letters] == [
        (b"1", b"schema"), (b"3", b"schema"), (b"4", b"undecodable")]
    assert b"'clicks'" in letters[0][ERROR_REASON]
    assert b"\\ud800" in letters[1][ERROR_REASON]  # the surrogate quoted, escaped
    assert h.kafka.commits == [{("t", 0): 6}]
