"""One consumer-group member reading one topic into one feature group.

The loop: gather messages into a batch (by size and time), decode and validate them, write the
good ones through the sink until durable, send the bad ones to the dead-letter topic and wait
for the broker's acknowledgement, and only then commit offset+1 of each partition (explicit,
synchronous commits; auto-commit is off). One batch is written at a time, in the order the
batches were gathered (per-partition order); while it is in flight the loop decodes and
validates the next one (a pipeline of three: gathering, prepared, in flight), so the CPU work
of batch k+1 overlaps with the store's acknowledgement of batch k. At least once: a crash
replays from the last commit, which is harmless online (event-time ordering) and de-duplicable
offline (each row's source is "kafka:<topic>/<partition>/<offset>").

When the store (or the dead-letter topic) is unavailable, the batch is kept, consumption is
paused (the partitions stay assigned: `poll` keeps the member in its group), nothing is
committed, and the write is retried with exponential backoff until it succeeds. A rebalance
commits what is done and drops the in-flight work of revoked partitions; stopping (SIGTERM)
finishes the current batch, commits, and leaves the group.

`TopicConsumer` is the loop; each concern it composes owns its state (quix-streams splits its
consumer the same way):
- `OffsetTracker` (offsets.py): assigned partitions, commits, lag gauges. Poll thread.
- `Backpressure` (backpressure.py): the batch held for a retry, the pause, the backoff. Poll thread.
- `BatchWriter` (writer.py): the batch in flight, written through the sink and dead-lettered on
  its own writer thread, handed back to the poll thread with its outcome.
- `SchemaCache` (schemas.py): the group's schema; refreshed by the poll and writer threads.
- `Batcher` / `Preparer` (batch.py): gathering and validating. Poll thread (the writer thread
  re-validates a refused batch with a Preparer of its own).
The rebalance callbacks run on the poll thread, inside `consume` / `poll`. The runner's thread
only sets the stop event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from tessera.ingest.backpressure import Backpressure
from tessera.ingest.batch import Batcher, PreparedBatch, Preparer, TopicPartition
from tessera.ingest.config import IngestConfig, TopicConfig
from tessera.ingest.dlq import SCHEMA, DeadLetterQueue, KafkaMessage, ProducerLike
from tessera.ingest.metrics import IngestMetrics
from tessera.ingest.offsets import OffsetTracker
from tessera.ingest.schemas import SchemaCache
from tessera.ingest.sinks import Sink
from tessera.ingest.writer import BatchWriter

log = logging.getLogger(__name__)

#: How long one poll waits while nothing is buffered (bounds the reaction to a stop request).
IDLE_POLL_S = 0.25
INFLIGHT_POLL_S = 0.002
LAG_INTERVAL_S = 1.0


class ConsumerLike(Protocol):
    """The part of confluent_kafka.Consumer the loop uses (test doubles provide it too)."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...
    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Any]: ...
    def poll(self, timeout: float = ...) -> Any: ...
    def commit(self, *args: Any, **kwargs: Any) -> Any: ...
    def assign(self, partitions: list[KafkaTopicPartition]) -> None: ...
    def pause(self, partitions: list[KafkaTopicPartition]) -> None: ...
    def resume(self, partitions: list[KafkaTopicPartition]) -> None: ...
    def position(self, partitions: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]: ...
    def get_watermark_offsets(self, partition: KafkaTopicPartition, **kwargs: Any) -> Any: ...
    def close(self) -> None: ...


def consumer_config(config: IngestConfig, topic: TopicConfig) -> dict[str, Any]:
    """librdkafka properties of a topic's consumer."""
    return {
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": config.group_id_of(topic),
        "client.id": f"tessera-ingest-{topic.feature_group}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": config.session_timeout_ms,
        # A fetch returns at once when data is there on Apache Kafka (fetch.min.bytes=1), but
        # some brokers (tansu) hold every fetch this long: it bounds the added latency.
        "fetch.wait.max.ms": 20,
        **config.consumer,
    }


def producer_config(config: IngestConfig) -> dict[str, Any]:
    """librdkafka properties of the dead-letter producer."""
    return {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": "tessera-ingest-dlq",
        "acks": "all",
        "linger.ms": 5,
        **config.producer,
    }


class TopicConsumer:
    """Consumes `topic` into its feature group through `sink` until `stop` is set."""

    def __init__(
        self,
        config: IngestConfig,
        topic: TopicConfig,
        sink: Sink,
        metrics: IngestMetrics,
        consumer_factory: Callable[[dict[str, Any]], ConsumerLike] | None = None,
        producer: ProducerLike | None = None,
    ) -> None:
        self._config = config
        self._topic = topic
        self._metrics = metrics
        self._consumer_factory = consumer_factory or _kafka_consumer
        self._producer = producer
        self._consumer: ConsumerLike | None = None
        self._batcher = Batcher(config.batch_max_records, config.batch_max_ms)
        self._preparer = Preparer(topic, config.max_message_bytes)
        self._schemas = SchemaCache(sink, topic.feature_group)
        self._offsets = OffsetTracker(metrics)
        self._backpressure = Backpressure(
            topic.topic, config.retry_initial_backoff_s, config.retry_max_backoff_s, metrics
        )
        # The writer thread re-validates refused batches while this thread prepares the next.
        self._writer = BatchWriter(topic, sink, self._schemas,
                                   Preparer(topic, config.max_message_bytes), metrics)
        #: The batch prepared while another is in flight: written next.
        self._next: PreparedBatch | None = None
        self._lag_at = 0.0
        self._m_batch = metrics.batch_duration.labels(topic.topic)
        #: Batches committed by this member (tests, benchmarks).
        self.batches_committed = 0

    @property
    def records_written(self) -> int:
        """Records made durable by this member (tests, benchmarks)."""
        return self._writer.records_written

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then finish the current batch, commit and leave."""
        if not self.open(stop):
            return
        try:
            while not stop.is_set():
                self.step()
            self.drain()
        finally:
            self.close()

    def open(self, stop: threading.Event) -> bool:
        """Fetch the schema (retrying until `stop`), connect and subscribe; False if stopped."""
        cfg = self._config
        if not self._schemas.load(stop, cfg.retry_initial_backoff_s, cfg.retry_max_backoff_s):
            return False
        if self._producer is None:
            self._producer = Producer(producer_config(cfg))
        self._writer.dead_letters = DeadLetterQueue(self._producer, self._topic.dlq_topic)
        consumer = self._consumer = self._consumer_factory(consumer_config(cfg, self._topic))
        consumer.subscribe(
            [self._topic.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "ingest: consuming '%s' into feature group '%s' (consumer group '%s')",
            self._topic.topic, self._topic.feature_group, cfg.group_id_of(self._topic),
        )
        return True

    def close(self) -> None:
        """Leave the group (the revoke commits what is done) and flush the dead-letter producer."""
        consumer = self._require_consumer()
        consumer.close()
        self._consumer = None
        self._writer.close()
        if self._producer is not None:
            self._producer.flush(5.0)
        log.info("ingest: stopped consuming '%s'", self._topic.topic)

    def step(self) -> None:
        """One turn of the loop: poll, and process or retry a batch when one is due."""
        consumer = self._require_consumer()
        self._reap()
        if self._backpressure.pending is not None:
            self._wait_and_retry(consumer)
            return
        self._advance()
        writing = self._writer.busy
        room = self._batcher.room()
        if writing and not room:
            # One batch in flight, the next prepared, the one after full: wait for the write
            # in flight rather than fetch more.
            self._writer.wait(IDLE_POLL_S)
            return
        # Short polls while a write is in flight, so that its commit follows it closely; the
        # timeout also bounds the reaction to a stop request.
        limit = INFLIGHT_POLL_S if writing else IDLE_POLL_S
        timeout = min(self._batcher.time_left_s(), limit)
        self._accept(consumer.consume(num_messages=max(1, room), timeout=timeout))
        self._advance()
        now = time.monotonic()
        if now >= self._lag_at:
            self._lag_at = now + LAG_INTERVAL_S
            self._offsets.update_lag(consumer)
            if self._schemas.age_s() >= self._config.schema_refresh_s:
                self._schemas.refresh()

    def _accept(self, messages: Sequence[Any]) -> None:
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise KafkaException(err)
            else:
                log.warning("ingest: consumer error on '%s': %s", self._topic.topic, err)
        self._batcher.add(good)

    def _advance(self) -> None:
        """Prepare the gathered batch once it is due (also while a write is in flight: that
        is the overlap), and hand the prepared batch to the writer once it is free. Never
        while a failed batch is held (it goes first)."""
        if self._next is None and self._batcher.due():
            self._next = self._prepare(self._batcher.take())
        if self._next is not None and not self._writer.busy:
            batch, self._next = self._next, None
            self._writer.start(batch)

    def _prepare(self, messages: list[KafkaMessage]) -> PreparedBatch:
        started = time.monotonic()
        batch = self._preparer.prepare(messages, self._schemas.current())
        stale = any(d.error_class == SCHEMA for d in batch.dead) and self._schemas.is_stale()
        # Maybe a feature was added: validate again against the group's current schema.
        if stale and self._schemas.refresh():
            batch = self._preparer.prepare(messages, self._schemas.current())
        batch.started = started
        return batch

    def _reap(self, wait_s: float = 0.0) -> None:
        """If the write in flight is over (waiting up to `wait_s`): commit it, or hold it for a
        retry (paused) when it failed."""
        finished = self._writer.outcome(wait_s)
        if finished is None:
            return
        batch = finished.batch
        consumer = self._require_consumer()
        if finished.retry_why is not None:
            self._backpressure.hold(batch, finished.retry_why, consumer,
                                    self._offsets.assignment())
            return
        self._offsets.commit(consumer, batch.next_offsets)
        self._backpressure.recovered(consumer, self._offsets.assignment())
        self.batches_committed += 1
        self._m_batch.observe(time.monotonic() - batch.started)

    # --- commits and rebalances ----------------------------------------------------------------

    def _on_assign(self, consumer: ConsumerLike, partitions: list[KafkaTopicPartition]) -> None:
        self._metrics.rebalances.labels(self._topic.topic, "assign").inc()
        self._offsets.assign((tp.topic, tp.partition) for tp in partitions)
        log.info("ingest: assigned %s", _names(partitions))
        # The client assigns them when this returns; while paused, _wait_and_retry pauses them.

    def _on_revoke(self, consumer: ConsumerLike, partitions: list[KafkaTopicPartition]) -> None:
        self._metrics.rebalances.labels(self._topic.topic, "revoke").inc()
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._settle()  # the write in flight: committed if it succeeds
        self._offsets.commit(self._require_consumer(), {})  # what is done, not yet committed
        self._forget(revoked)
        log.info("ingest: revoked %s", _names(partitions))

    def _on_lost(self, consumer: ConsumerLike, partitions: list[KafkaTopicPartition]) -> None:
        self._metrics.rebalances.labels(self._topic.topic, "lost").inc()
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._offsets.lose(lost)  # no commit for them: they are someone else's already
        self._settle()
        self._forget(lost)
        log.warning("ingest: lost %s (their in-flight work is dropped)", _names(partitions))

    def _settle(self) -> None:
        """Wait for the write in flight (a write cannot be called back) and reap it."""
        if self._writer.busy:
            self._reap(wait_s=self._config.drain_timeout_s + 60.0)

    def _forget(self, revoked: set[TopicPartition]) -> None:
        dropped = self._batcher.drop_partitions(revoked)
        dropped += self._backpressure.forget(revoked)
        prepared = self._next
        if prepared is not None:
            before = len(prepared.messages)
            prepared.drop_partitions(revoked)
            dropped += before - len(prepared.messages)
            if prepared.empty:
                self._next = None
        if dropped:
            log.info("ingest: dropped %d in-flight messages of revoked partitions", dropped)
        self._offsets.revoke(revoked)

    # --- backpressure --------------------------------------------------------------------------

    def _wait_and_retry(self, consumer: ConsumerLike) -> None:
        """While paused: keep polling (group membership, rebalance callbacks), retry when due."""
        bp = self._backpressure
        wait = bp.wait_s(IDLE_POLL_S)
        if bp.paused:
            consumer.pause(self._offsets.assignment())  # idempotent; covers new assignments
        msg = consumer.poll(wait)
        if msg is not None:  # fetched before the pause took effect: kept for later, in order
            self._accept([msg])
        if bp.due():
            self._retry()

    def _retry(self) -> None:
        batch = self._backpressure.take()
        if batch is not None:
            self._writer.start(batch)

    def drain(self) -> None:
        """On stop: finish the pending batch and what is buffered, within drain_timeout_s."""
        deadline = time.monotonic() + self._config.drain_timeout_s
        bp = self._backpressure
        while True:
            if self._writer.busy:
                self._reap(max(0.0, deadline - time.monotonic()))
                if self._writer.busy:
                    log.warning("ingest: stopping with a write in flight; it is not committed")
                    return
                continue
            if bp.pending is None:
                if self._next is None and not len(self._batcher):
                    return
                if self._next is None:
                    self._next = self._prepare(self._batcher.take())
                self._advance()
                continue
            now = time.monotonic()
            if now >= deadline:
                prepared = len(self._next.messages) if self._next is not None else 0
                log.warning(
                    "ingest: stopping with an unwritten batch of %d messages; not committed, "
                    "it will be read again",
                    len(bp.pending.messages) + prepared + len(self._batcher),
                )
                return
            time.sleep(max(0.0, min(bp.retry_at, deadline) - now))
            self._retry()

    def _require_consumer(self) -> ConsumerLike:
        if self._consumer is None:
            raise RuntimeError("the consumer is not running")
        return self._consumer


def _kafka_consumer(conf: dict[str, Any]) -> ConsumerLike:
    return cast(ConsumerLike, Consumer(conf))


def _names(partitions: list[KafkaTopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing"
