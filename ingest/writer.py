"""Writing batches: one batch at a time made durable through the sink, and its dead letters
acknowledged by the broker, on a thread of its own, while the poll loop gathers and prepares the
next batch (the sink's wait releases the GIL).

Threads: the poll loop calls `start`, `outcome`, `wait` and `close`; the batch in flight belongs
to the writer thread from `start` until its outcome is taken (the loop does not touch it
meanwhile). The writer thread also re-validates a batch the store refuses: it uses the schema
cache (which locks) and a Preparer of its own (the loop's is busy preparing the next batch).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from dataclasses import dataclass

from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.ingest.batch import PreparedBatch, Preparer
from tessera.ingest.config import TopicConfig
from tessera.ingest.dlq import SCHEMA, DeadLetter, DeadLetterQueue
from tessera.ingest.metrics import IngestMetrics, observe_many
from tessera.ingest.schemas import SchemaCache
from tessera.ingest.sinks import Sink

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """The batch cannot be finished now; keep it and try again after a backoff."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a batch's write."""

    batch: PreparedBatch
    #: None: durable and its dead letters acknowledged (commit it); else why it must be retried.
    retry_why: str | None = None


class BatchWriter:
    """Makes one topic's prepared batches durable through `sink` (see the module docstring)."""

    def __init__(
        self,
        topic: TopicConfig,
        sink: Sink,
        schemas: SchemaCache,
        preparer: Preparer,
        metrics: IngestMetrics,
    ) -> None:
        self._topic = topic
        self._sink = sink
        self._schemas = schemas
        self._preparer = preparer
        self._metrics = metrics
        self._m_records = metrics.records.labels(topic.topic, topic.feature_group)
        self._m_freshness = metrics.freshness.labels(topic.feature_group)
        self._executor = futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"ingest-{topic.topic}"
        )
        self._inflight: tuple[PreparedBatch, futures.Future[None]] | None = None
        #: Set once the dead-letter producer exists (TopicConsumer.open).
        self.dead_letters: DeadLetterQueue | None = None
        #: Records made durable (written by the writer thread; tests and benchmarks read it).
        self.records_written = 0

    # --- the poll loop's side ------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def start(self, batch: PreparedBatch) -> None:
        """Hand `batch` to the writer thread."""
        if self._inflight is not None:
            raise RuntimeError("a batch is already being written")
        self._inflight = (batch, self._executor.submit(self._finish, batch))

    def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the write in flight to end (its outcome is not taken)."""
        if self._inflight is not None:
            futures.wait([self._inflight[1]], timeout=timeout_s)

    def outcome(self, wait_s: float = 0.0) -> Finished | None:
        """The write in flight's end, waiting up to `wait_s` for it; None while it runs (or when
        none is in flight). An error that is not RetryLater is raised (the consumer stops)."""
        if self._inflight is None:
            return None
        batch, future = self._inflight
        try:
            future.result(timeout=wait_s)
        except futures.TimeoutError:
            return None
        except RetryLater as exc:
            self._inflight = None
            return Finished(batch, str(exc))
        except BaseException:
            self._inflight = None
            raise
        self._inflight = None
        return Finished(batch)

    def close(self) -> None:
        """Finish the write in flight and stop the thread."""
        self._executor.shutdown(wait=True)

    # --- the writer thread's side --------------------------------------------------------------

    def _finish(self, batch: PreparedBatch) -> None:
        """Make the batch durable and its dead letters acknowledged; RetryLater when the store
        or the dead-letter topic cannot take them now."""
        if not batch.written:
            self._write(batch)
        if batch.dead:
            self._send_dead_letters(batch)

    def _write(self, batch: PreparedBatch) -> None:
        try:
            self._sink.write(batch.schema, batch.records, self._topic.ttl_s)
        except InvalidRequestError as exc:
            log.warning("ingest: the store refused a batch (%s); validating it again", exc.message)
            self._rewrite_refused(batch)
        except TesseraError as exc:
            raise RetryLater(f"the store is unavailable: {exc.message}") from exc
        except Exception as exc:  # a transport or sink failure we have no class for: retried
            log.exception("ingest: unexpected error writing a batch; retrying")
            raise RetryLater(f"unexpected error: {exc!r}") from exc
        batch.written = True
        self._observe_written(batch)

    def _rewrite_refused(self, batch: PreparedBatch) -> None:
        """The store refused the batch's content (its schema changed since validation): validate
        again against a fresh schema, then write; records still refused one by one are
        dead-lettered with the store's reason."""
        self._schemas.refresh()
        fresh = self._preparer.prepare(batch.messages, self._schemas.current())
        batch.schema, batch.records = fresh.schema, fresh.records
        batch.record_messages, batch.dead = fresh.record_messages, fresh.dead
        try:
            self._sink.write(batch.schema, batch.records, self._topic.ttl_s)
            return
        except InvalidRequestError:
            pass
        except TesseraError as exc:
            raise RetryLater(f"the store is unavailable: {exc.message}") from exc
        kept: list[int] = []
        for i, (record, msg) in enumerate(zip(batch.records, batch.record_messages,
                                              strict=True)):
            try:
                self._sink.write(batch.schema, [record], self._topic.ttl_s)
            except InvalidRequestError as exc:
                batch.dead.append(DeadLetter(msg, SCHEMA, exc.message))
                continue
            except TesseraError as exc:
                raise RetryLater(f"the store is unavailable: {exc.message}") from exc
            kept.append(i)
        batch.records = batch.records.take(kept)
        batch.record_messages = [batch.record_messages[i] for i in kept]

    def _observe_written(self, batch: PreparedBatch) -> None:
        n = len(batch.records)
        if not n:
            return
        self.records_written += n
        self._m_records.inc(n)
        now_us = time.time_ns() // 1000
        observe_many(self._m_freshness, (now_us - batch.records.event_time_us) / 1e6)

    def _send_dead_letters(self, batch: PreparedBatch) -> None:
        dlq = self.dead_letters
        if dlq is None:
            raise RetryLater("no dead-letter producer")
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
            raise RetryLater(
                f"the dead-letter topic '{dlq.topic}' did not take {len(failed)} messages"
            )
