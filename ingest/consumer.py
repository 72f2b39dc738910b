"""One consumer-group member reading one topic into one feature group.

The loop: gather messages into a batch (by size and time), decode and validate them, write the
good ones through the sink until durable, send the bad ones to the dead-letter topic and wait
for the broker's acknowledgement, and only then commit offset+1 of each partition (explicit,
synchronous commits; auto-commit is off). At least once: a crash replays from the last commit,
which is harmless online (event-time ordering) and de-duplicable offline (each row's source is
"kafka:<topic>/<partition>/<offset>").

When the store (or the dead-letter topic) is unavailable, the batch is kept, consumption is
paused (the partitions stay assigned: `poll` keeps the member in its group), nothing is
committed, and the write is retried with exponential backoff until it succeeds. A rebalance
commits what is done and drops the in-flight work of revoked partitions; stopping (SIGTERM)
finishes the current batch, commits, and leaves the group.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.core.schema import CompiledSchema
from tessera.ingest.batch import Batcher, PreparedBatch, Preparer, TopicPartition
from tessera.ingest.config import IngestConfig, TopicConfig
from tessera.ingest.dlq import SCHEMA, DeadLetter, DeadLetterQueue, KafkaMessage, ProducerLike
from tessera.ingest.metrics import IngestMetrics, observe_many
from tessera.ingest.sinks import Sink

log = logging.getLogger(__name__)

#: How long one poll waits while nothing is buffered (bounds the reaction to a stop request).
IDLE_POLL_S = 0.25
INFLIGHT_POLL_S = 0.002
LAG_INTERVAL_S = 1.0
#: After a schema error, the schema is fetched again at most this often (a feature may have
#: been added since the last fetch).
SCHEMA_RECHECK_S = 1.0


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


class _Retry(Exception):
    """The batch cannot be finished now; keep it and try again after a backoff."""


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
        self._sink = sink
        self._metrics = metrics
        self._consumer_factory = consumer_factory or _kafka_consumer
        self._producer = producer
        self._dlq: DeadLetterQueue | None = None
        self._preparer = Preparer(topic, config.max_message_bytes)
        self._batcher = Batcher(config.batch_max_records, config.batch_max_ms)
        self._consumer: ConsumerLike | None = None
        self._schema: CompiledSchema | None = None
        self._schema_at = 0.0
        self._assigned: set[TopicPartition] = set()
        self._uncommitted: dict[TopicPartition, int] = {}
        #: The batch being written by the writer thread, and the one waiting for a retry.
        self._inflight: tuple[PreparedBatch, futures.Future[None]] | None = None
        self._pending: PreparedBatch | None = None
        self._writer = futures.ThreadPoolExecutor(1, thread_name_prefix=f"ingest-{topic.topic}")
        self._paused = False
        self._retries = 0
        self._retry_at = 0.0
        self._lag_at = 0.0
        self._rng = random.Random()
        name = topic.topic
        self._m_records = metrics.records.labels(name, topic.feature_group)
        self._m_batch = metrics.batch_duration.labels(name)
        self._m_freshness = metrics.freshness.labels(topic.feature_group)
        self._m_retries = metrics.store_retries.labels(name)
        self._m_paused = metrics.paused.labels(name)
        #: Records made durable and batches committed by this member (tests, benchmarks).
        self.records_written = 0
        self.batches_committed = 0

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
        if not self._load_schema(stop):
            return False
        if self._producer is None:
            self._producer = Producer(producer_config(self._config))
        self._dlq = DeadLetterQueue(self._producer, self._topic.dlq_topic)
        consumer = self._consumer = self._consumer_factory(
            consumer_config(self._config, self._topic)
        )
        consumer.subscribe(
            [self._topic.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "ingest: consuming '%s' into feature group '%s' (consumer group '%s')",
            self._topic.topic, self._topic.feature_group, self._config.group_id_of(self._topic),
        )
        return True

    def close(self) -> None:
        """Leave the group (the revoke commits what is done) and flush the dead-letter producer."""
        consumer = self._require_consumer()
        consumer.close()
        self._consumer = None
        self._writer.shutdown(wait=True)
        if self._producer is not None:
            self._producer.flush(5.0)
        log.info("ingest: stopped consuming '%s'", self._topic.topic)

    def step(self) -> None:
        """One turn of the loop: poll, and process or retry a batch when one is due."""
        consumer = self._require_consumer()
        self._reap()
        if self._pending is not None:
            self._wait_and_retry(consumer)
            return
        inflight = self._inflight
        room = self._batcher.room()
        if inflight is not None and not room:
            # The next batch is full: wait for the write in flight rather than fetch more.
            futures.wait([inflight[1]], timeout=IDLE_POLL_S)
            return
        # Short polls while a write is in flight, so that its commit follows it closely; the
        # timeout also bounds the reaction to a stop request.
        limit = INFLIGHT_POLL_S if inflight is not None else IDLE_POLL_S
        timeout = min(self._batcher.time_left_s(), limit)
        self._accept(consumer.consume(num_messages=max(1, room), timeout=timeout))
        if self._inflight is None and self._batcher.due():
            self._process(self._batcher.take())
        now = time.monotonic()
        if now >= self._lag_at:
            self._lag_at = now + LAG_INTERVAL_S
            self._update_lag(consumer)
            if now - self._schema_at >= self._config.schema_refresh_s:
                self._refresh_schema()

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

    def _process(self, messages: list[KafkaMessage]) -> None:
        started = time.monotonic()
        batch = self._preparer.prepare(messages, self._current_schema())
        stale = any(d.error_class == SCHEMA for d in batch.dead) and self._schema_is_stale()
        # Maybe a feature was added: validate again against the group's current schema.
        if stale and self._refresh_schema():
            batch = self._preparer.prepare(messages, self._current_schema())
        batch.started = started
        self._submit(batch)

    def _submit(self, batch: PreparedBatch) -> None:
        """Hand the batch to the writer thread: the next batch is gathered and prepared
        meanwhile (the sink's wait releases the GIL)."""
        self._pending = None
        self._inflight = (batch, self._writer.submit(self._finish, batch))

    def _finish(self, batch: PreparedBatch) -> None:
        """(writer thread) Make the batch durable and its dead letters acknowledged; _Retry when
        the store or the dead-letter topic cannot take them now."""
        if not batch.written:
            self._write(batch)
        if batch.dead:
            self._send_dead_letters(batch)

    def _reap(self, wait_s: float = 0.0) -> None:
        """If the write in flight is over (waiting up to `wait_s`): commit it, or keep it for a
        retry (paused) when it failed."""
        if self._inflight is None:
            return
        batch, future = self._inflight
        try:
            future.result(timeout=wait_s)
        except futures.TimeoutError:
            return
        except _Retry as exc:
            self._inflight = None
            self._pending = batch
            self._schedule_retry(str(exc))
            return
        except BaseException:
            self._inflight = None
            raise
        self._inflight = None
        self._commit(batch.next_offsets)
        self._retries = 0
        self._resume()
        self.batches_committed += 1
        self._m_batch.observe(time.monotonic() - batch.started)

    def _write(self, batch: PreparedBatch) -> None:
        try:
            self._sink.write(batch.schema, batch.records, self._topic.ttl_s)
        except InvalidRequestError as exc:
            log.warning("ingest: the store refused a batch (%s); validating it again", exc.message)
            self._rewrite_refused(batch)
        except TesseraError as exc:
            raise _Retry(f"the store is unavailable: {exc.message}") from exc
        except Exception as exc:  # a transport or sink failure we have no class for: retried
            log.exception("ingest: unexpected error writing a batch; retrying")
            raise _Retry(f"unexpected error: {exc!r}") from exc
        batch.written = True
        self._observe_written(batch)

    def _rewrite_refused(self, batch: PreparedBatch) -> None:
        """The store refused the batch's content (its schema changed since validation): validate
        again against a fresh schema, then write; records still refused one by one are
        dead-lettered with the store's reason."""
        self._refresh_schema()
        fresh = self._preparer.prepare(batch.messages, self._current_schema())
        batch.schema, batch.records = fresh.schema, fresh.records
        batch.record_messages, batch.dead = fresh.record_messages, fresh.dead
        try:
            self._sink.write(batch.schema, batch.records, self._topic.ttl_s)
            return
        except InvalidRequestError:
            pass
        except TesseraError as exc:
            raise _Retry(f"the store is unavailable: {exc.message}") from exc
        kept_records, kept_messages = [], []
        for record, msg in zip(batch.records, batch.record_messages, strict=True):
            try:
                self._sink.write(batch.schema, [record], self._topic.ttl_s)
            except InvalidRequestError as exc:
                batch.dead.append(DeadLetter(msg, SCHEMA, exc.message))
                continue
            except TesseraError as exc:
                raise _Retry(f"the store is unavailable: {exc.message}") from exc
            kept_records.append(record)
            kept_messages.append(msg)
        batch.records, batch.record_messages = kept_records, kept_messages

    def _observe_written(self, batch: PreparedBatch) -> None:
        n = len(batch.records)
        if not n:
            return
        self.records_written += n
        self._m_records.inc(n)
        now_us = time.time_ns() // 1000
        observe_many(
            self._m_freshness, [(now_us - r.validated.event_time_us) / 1e6 for r in batch.records]
        )

    def _send_dead_letters(self, batch: PreparedBatch) -> None:
        dlq = self._dlq
        if dlq is None:
            raise _Retry("no dead-letter producer")
        failed = dlq.send(batch.dead)
        failed_ids = {id(d) for d in failed}
        delivered = [d for d in batch.dead if id(d) not in failed_ids]
        for d in delivered:
            self._metrics.dead_letters.labels(self._topic.topic, d.error_class).inc()
            log.info(
                "ingest: dead-lettered %s/%s/%s to '%s' (%s): %s",
                d.message.topic(), d.message.partition(), d.message.offset(), dlq.topic,
                d.error_class, d.reason,
            )
        batch.dead = failed
        if failed:
            raise _Retry(f"the dead-letter topic '{dlq.topic}' did not take {len(failed)} messages")

    # --- commits and rebalances ----------------------------------------------------------------

    def _commit(self, next_offsets: dict[TopicPartition, int]) -> None:
        """Commit offset+1 of the partitions still assigned (and what failed to commit before)."""
        todo = {**self._uncommitted, **next_offsets}
        todo = {tp: o for tp, o in todo.items() if tp in self._assigned}
        self._uncommitted = {}
        if not todo:
            return
        offsets = [KafkaTopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            self._require_consumer().commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The records are durable: failing to commit only means they may be read again.
            log.warning("ingest: commit failed (will retry with the next batch): %s", exc)
            self._uncommitted = todo

    def _on_assign(self, consumer: ConsumerLike, partitions: list[KafkaTopicPartition]) -> None:
        self._metrics.rebalances.labels(self._topic.topic, "assign").inc()
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("ingest: assigned %s", _names(partitions))
        # The client assigns them when this returns; while paused, _wait_and_retry pauses them.

    def _on_revoke(self, consumer: ConsumerLike, partitions: list[KafkaTopicPartition]) -> None:
        self._metrics.rebalances.labels(self._topic.topic, "revoke").inc()
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._settle()  # the write in flight: committed if it succeeds
        self._commit({})  # what is done and not yet committed
        self._forget(revoked)
        log.info("ingest: revoked %s", _names(partitions))

    def _on_lost(self, consumer: ConsumerLike, partitions: list[KafkaTopicPartition]) -> None:
        self._metrics.rebalances.labels(self._topic.topic, "lost").inc()
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= revoked  # no commit for them: they are someone else's already
        self._settle()
        self._uncommitted = {tp: o for tp, o in self._uncommitted.items() if tp not in revoked}
        self._forget(revoked)
        log.warning("ingest: lost %s (their in-flight work is dropped)", _names(partitions))

    def _settle(self) -> None:
        """Wait for the write in flight (a write cannot be called back) and reap it."""
        if self._inflight is not None:
            self._reap(wait_s=self._config.drain_timeout_s + 60.0)

    def _forget(self, revoked: set[TopicPartition]) -> None:
        dropped = self._batcher.drop_partitions(revoked)
        if self._pending is not None:
            dropped += len(self._pending.messages)
            self._pending.drop_partitions(revoked)
            dropped -= len(self._pending.messages)
            if self._pending.empty:
                self._pending = None
                self._retries = 0
        if dropped:
            log.info("ingest: dropped %d in-flight messages of revoked partitions", dropped)
        self._assigned -= revoked
        for topic, partition in revoked:
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(topic, str(partition))
        if self._pending is None:
            self._paused = False
            self._m_paused.set(0)

    # --- backpressure --------------------------------------------------------------------------

    def _schedule_retry(self, why: str) -> None:
        cfg = self._config
        ceiling = min(cfg.retry_max_backoff_s, cfg.retry_initial_backoff_s * 2.0**self._retries)
        delay = ceiling * (0.5 + 0.5 * self._rng.random())
        self._retries += 1
        self._retry_at = time.monotonic() + delay
        self._m_retries.inc()
        self._pause()
        log.warning("ingest: %s; paused, retry %d in %.2fs", why, self._retries, delay)

    def _wait_and_retry(self, consumer: ConsumerLike) -> None:
        """While paused: keep polling (group membership, rebalance callbacks), retry when due."""
        wait = max(0.0, min(self._retry_at - time.monotonic(), IDLE_POLL_S))
        if self._paused:
            consumer.pause(self._assignment())  # idempotent; also covers new assignments
        msg = consumer.poll(wait)
        if msg is not None:  # fetched before the pause took effect: kept for later, in order
            self._accept([msg])
        if self._pending is not None and time.monotonic() >= self._retry_at:
            self._submit(self._pending)

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._m_paused.set(1)
            self._require_consumer().pause(self._assignment())

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._m_paused.set(0)
            self._require_consumer().resume(self._assignment())
            log.info("ingest: the store is back; resumed '%s'", self._topic.topic)

    def drain(self) -> None:
        """On stop: finish the pending batch and what is buffered, within drain_timeout_s."""
        deadline = time.monotonic() + self._config.drain_timeout_s
        while True:
            if self._inflight is not None:
                self._reap(max(0.0, deadline - time.monotonic()))
                if self._inflight is not None:
                    log.warning("ingest: stopping with a write in flight; it is not committed")
                    return
                continue
            if self._pending is None:
                if not len(self._batcher):
                    return
                self._process(self._batcher.take())
                continue
            now = time.monotonic()
            if now >= deadline:
                log.warning(
                    "ingest: stopping with an unwritten batch of %d messages; not committed, "
                    "it will be read again", len(self._pending.messages) + len(self._batcher),
                )
                return
            time.sleep(max(0.0, min(self._retry_at, deadline) - now))
            self._submit(self._pending)

    # --- schema, lag ---------------------------------------------------------------------------

    def _load_schema(self, stop: threading.Event) -> bool:
        """Fetch the group's schema, retrying until it is there (or `stop`)."""
        delay = self._config.retry_initial_backoff_s
        while not stop.is_set():
            if self._refresh_schema():
                return True
            stop.wait(delay)
            delay = min(self._config.retry_max_backoff_s, delay * 2)
        return False

    def _refresh_schema(self) -> bool:
        self._schema_at = time.monotonic()
        try:
            self._schema = self._sink.schema(self._topic.feature_group)
            return True
        except TesseraError as exc:
            log.warning(
                "ingest: cannot get the schema of '%s': %s", self._topic.feature_group, exc.message
            )
        except Exception:
            log.exception("ingest: cannot get the schema of '%s'", self._topic.feature_group)
        return False

    def _schema_is_stale(self) -> bool:
        return time.monotonic() - self._schema_at >= SCHEMA_RECHECK_S

    def _current_schema(self) -> CompiledSchema:
        if self._schema is None:
            raise RuntimeError("the schema is not loaded")
        return self._schema

    def _update_lag(self, consumer: ConsumerLike) -> None:
        assignment = self._assignment()
        if not assignment:
            return
        try:
            positions = consumer.position(assignment)
            for tp in positions:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self._metrics.lag.labels(tp.topic, str(tp.partition)).set(high - tp.offset)
        except KafkaException as exc:
            log.debug("ingest: lag not available: %s", exc)

    def _assignment(self) -> list[KafkaTopicPartition]:
        return [KafkaTopicPartition(t, p) for t, p in sorted(self._assigned)]

    def _require_consumer(self) -> ConsumerLike:
        if self._consumer is None:
            raise RuntimeError("the consumer is not running")
        return self._consumer


def _kafka_consumer(conf: dict[str, Any]) -> ConsumerLike:
    return cast(ConsumerLike, Consumer(conf))


def _names(partitions: list[KafkaTopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing"
