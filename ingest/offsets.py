"""Offsets of one topic's consumer: the partitions assigned, the commits, the lag gauges.

`OffsetTracker` commits offset+1 of a partition only while it is assigned, synchronously, and
keeps what failed to commit for the next commit (the records are durable: a failed commit only
means they may be read again). Thread: the poll loop only (rebalance callbacks run inside its
`consume` / `poll`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from tessera.ingest.batch import TopicPartition
from tessera.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)


class OffsetClient(Protocol):
    """The part of a Kafka consumer that offsets need."""

    def commit(self, *args: Any, **kwargs: Any) -> Any: ...
    def position(self, partitions: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]: ...
    def get_watermark_offsets(self, partition: KafkaTopicPartition, **kwargs: Any) -> Any: ...


class OffsetTracker:
    """Assigned partitions and offsets to commit (see the module docstring)."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self._metrics = metrics
        self._assigned: set[TopicPartition] = set()
        #: Offsets whose commit failed, committed with the next batch's.
        self._uncommitted: dict[TopicPartition, int] = {}

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._assigned |= set(partitions)

    def revoke(self, revoked: set[TopicPartition]) -> None:
        """The partitions are no longer ours; their lag gauges go."""
        self._assigned -= revoked
        for topic, partition in revoked:
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(topic, str(partition))

    def lose(self, lost: set[TopicPartition]) -> None:
        """The partitions are someone else's already: nothing of theirs is committed."""
        self._assigned -= lost
        self._uncommitted = {tp: o for tp, o in self._uncommitted.items() if tp not in lost}

    def assignment(self) -> list[KafkaTopicPartition]:
        return [KafkaTopicPartition(t, p) for t, p in sorted(self._assigned)]

    def commit(self, consumer: OffsetClient, next_offsets: dict[TopicPartition, int]) -> None:
        """Commit `next_offsets` (offset+1 per partition) of the partitions still assigned, and
        what failed to commit before."""
        todo = {**self._uncommitted, **next_offsets}
        todo = {tp: o for tp, o in todo.items() if tp in self._assigned}
        self._uncommitted = {}
        if not todo:
            return
        offsets = [KafkaTopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("ingest: commit failed (will retry with the next batch): %s", exc)
            self._uncommitted = todo

    def update_lag(self, consumer: OffsetClient) -> None:
        """Set each assigned partition's lag gauge (high watermark - position)."""
        assignment = self.assignment()
        if not assignment:
            return
        try:
            for tp in consumer.position(assignment):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self._metrics.lag.labels(tp.topic, str(tp.partition)).set(high - tp.offset)
        except KafkaException as exc:
            log.debug("ingest: lag not available: %s", exc)
