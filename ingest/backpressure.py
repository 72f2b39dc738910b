"""Backpressure of one topic's consumer: the batch that could not be written, the pause, the
backoff.

When the store (or the dead-letter topic) cannot take a batch, `Backpressure.hold` keeps it,
pauses the assigned partitions (they stay assigned: the loop keeps polling, so the member stays
in its group) and schedules a retry with exponential backoff and jitter; `recovered` resumes them
once a write succeeds. Thread: the poll loop only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import TopicPartition as KafkaTopicPartition

from tessera.ingest.batch import PreparedBatch, TopicPartition
from tessera.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)


class PauseClient(Protocol):
    """The part of a Kafka consumer that pausing needs."""

    def pause(self, partitions: list[KafkaTopicPartition]) -> None: ...
    def resume(self, partitions: list[KafkaTopicPartition]) -> None: ...


class Backpressure:
    """The held batch, the paused flag and the retry schedule of one topic."""

    def __init__(
        self,
        topic: str,
        initial_backoff_s: float,
        max_backoff_s: float,
        metrics: IngestMetrics,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._topic = topic
        self._initial_s = initial_backoff_s
        self._max_s = max_backoff_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._m_retries = metrics.store_retries.labels(topic)
        self._m_paused = metrics.paused.labels(topic)
        #: The batch waiting for its retry (None: nothing held).
        self.pending: PreparedBatch | None = None
        self.paused = False
        self.retries = 0
        self.retry_at = 0.0

    def hold(
        self, batch: PreparedBatch, why: str, consumer: PauseClient,
        assignment: list[KafkaTopicPartition],
    ) -> None:
        """Keep `batch` for a retry after the next backoff, and pause consumption."""
        self.pending = batch
        ceiling = min(self._max_s, self._initial_s * 2.0**self.retries)
        delay = ceiling * (0.5 + 0.5 * self._rng.random())
        self.retries += 1
        self.retry_at = self._clock() + delay
        self._m_retries.inc()
        if not self.paused:
            self.paused = True
            self._m_paused.set(1)
            consumer.pause(assignment)
        log.warning("ingest: %s; paused, retry %d in %.2fs", why, self.retries, delay)

    def take(self) -> PreparedBatch | None:
        """The held batch, handed back for its retry (consumption stays paused)."""
        batch, self.pending = self.pending, None
        return batch

    def wait_s(self, limit: float) -> float:
        """How long to wait for the retry to be due, at most `limit`."""
        return max(0.0, min(self.retry_at - self._clock(), limit))

    def due(self) -> bool:
        return self.pending is not None and self._clock() >= self.retry_at

    def recovered(self, consumer: PauseClient, assignment: list[KafkaTopicPartition]) -> None:
        """A write succeeded: the backoff starts over and consumption resumes."""
        self.retries = 0
        if self.paused:
            self.paused = False
            self._m_paused.set(0)
            consumer.resume(assignment)
            log.info("ingest: the store is back; resumed '%s'", self._topic)

    def forget(self, revoked: set[TopicPartition]) -> int:
        """Drop the held work of revoked partitions; returns how many messages were dropped.
        With nothing left held, the pause is over (the partitions that were paused are gone)."""
        dropped = 0
        if self.pending is not None:
            dropped = len(self.pending.messages)
            self.pending.drop_partitions(revoked)
            dropped -= len(self.pending.messages)
            if self.pending.empty:
                self.pending = None
                self.retries = 0
        if self.pending is None:
            self.paused = False
            self._m_paused.set(0)
        return dropped
