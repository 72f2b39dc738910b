"""Batches: messages gathered by size and time (`Batcher`), then turned into records to write and
dead letters (`Preparer` -> `PreparedBatch`). No Kafka client here: the consumer feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

import numpy as np

from tessera.core.errors import InvalidRequestError, SerializationError
from tessera.core.records import MAX_RECORD_BYTES, validate_record
from tessera.core.schema import CompiledSchema
from tessera.ingest import json_batch
from tessera.ingest.columns import ColumnsBuilder, RecordColumns, collector_paused
from tessera.ingest.config import TopicConfig
from tessera.ingest.decode import Decoded, Decoder, decode_json_objects, decoder_for
from tessera.ingest.dlq import OVERSIZED, SCHEMA, UNDECODABLE, DeadLetter, KafkaMessage
from tessera.ingest.encode import FastEncoder
from tessera.ingest.json_batch import BatchEncoder
from tessera.ingest.mapping import WHERE, RecordMapper, record_from_values
from tessera.ingest.sinks import SinkRecord

TopicPartition = tuple[str, int]
_NO_TIMESTAMP = (0, -1)


def source_of(msg: KafkaMessage) -> str:
    """The record's source as the offline store keeps it: "kafka:<topic>/<partition>/<offset>"."""
    return f"kafka:{msg.topic()}/{msg.partition()}/{msg.offset()}"


def _tp(msg: KafkaMessage) -> TopicPartition:
    return (msg.topic() or "", msg.partition() or 0)


class Batcher:
    """Messages waiting to be processed: a batch is due when it holds `max_records` messages or
    its first message is `max_ms` old."""

    def __init__(
        self, max_records: int, max_ms: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_records = max_records
        self._max_s = max_ms / 1000.0
        self._clock = clock
        self._messages: list[KafkaMessage] = []
        self._started: float | None = None

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, messages: Iterable[KafkaMessage]) -> None:
        for msg in messages:
            if self._started is None:
                self._started = self._clock()
            self._messages.append(msg)

    def room(self) -> int:
        """How many more messages the batch takes."""
        return max(0, self.max_records - len(self._messages))

    def time_left_s(self) -> float:
        """Seconds until the batch is due by age (the full window while it is empty)."""
        if self._started is None:
            return self._max_s
        return max(0.0, self._started + self._max_s - self._clock())

    def due(self) -> bool:
        return bool(self._messages) and (
            len(self._messages) >= self.max_records or self.time_left_s() <= 0.0
        )

    def take(self) -> list[KafkaMessage]:
        out, self._messages, self._started = self._messages, [], None
        return out

    def drop_partitions(self, revoked: set[TopicPartition]) -> int:
        """Forget the messages of revoked partitions; returns how many were dropped."""
        kept = [m for m in self._messages if _tp(m) not in revoked]
        dropped = len(self._messages) - len(kept)
        self._messages = kept
        if not kept:
            self._started = None
        return dropped


@dataclass
class PreparedBatch:
    """A batch after decoding and validation, until it is durable and committed.

    `dead` holds the dead letters not yet acknowledged by the broker; `written` tells whether
    `records` are durable in the store.
    """

    messages: list[KafkaMessage]
    schema: CompiledSchema
    records: RecordColumns
    record_messages: list[KafkaMessage]  # the message of each record
    dead: list[DeadLetter]
    next_offsets: dict[TopicPartition, int]
    started: float = field(default_factory=time.monotonic)
    written: bool = False

    def drop_partitions(self, revoked: set[TopicPartition]) -> None:
        """Forget the work of revoked partitions (another consumer will redo it)."""
        keep = [i for i, m in enumerate(self.record_messages) if _tp(m) not in revoked]
        self.records = self.records.take(keep)
        self.record_messages = [self.record_messages[i] for i in keep]
        self.dead = [d for d in self.dead if _tp(d.message) not in revoked]
        self.messages = [m for m in self.messages if _tp(m) not in revoked]
        self.next_offsets = {tp: o for tp, o in self.next_offsets.items() if tp not in revoked}

    @property
    def empty(self) -> bool:
        return not self.next_offsets


class Preparer:
    """Decodes, maps and validates the messages of one topic.

    JSON topics whose features come from the fields of their own names take the whole-batch
    path (`json_batch.BatchEncoder`: a batch's records validated and encoded in columns); a
    message it does not accept goes the per-message way (`FastEncoder`, then
    `validate_record`), which decides and words the reason. Either way each message ends as a
    record or a dead letter with its reason, in the batch's order."""

    def __init__(
        self,
        topic: TopicConfig,
        max_message_bytes: int,
        decoder: Decoder | None = None,
    ) -> None:
        self._decode = decoder if decoder is not None else decoder_for(topic)
        self._mapper = RecordMapper(topic)
        self._ttl_s = topic.ttl_s
        self._max_bytes = max_message_bytes
        self._encoder: FastEncoder | None = None
        # The whole-batch path: JSON objects (the compiled kernel is loaded now, not on a batch).
        self._bulk_json = topic.format == "json" and decoder is None and json_batch.load()
        self._batch_encoder: BatchEncoder | None = None

    def _fast(self, schema: CompiledSchema) -> FastEncoder:
        encoder = self._encoder
        if encoder is None or encoder.schema is not schema:
            encoder = self._encoder = FastEncoder(schema, self._ttl_s)
        return encoder

    def _bulk(self, schema: CompiledSchema) -> BatchEncoder | None:
        """The whole-batch encoder of `schema`, when this topic and schema take that path."""
        if not self._bulk_json or self._mapper.renames(schema):
            return None
        encoder = self._batch_encoder
        if encoder is None or encoder.schema is not schema:
            encoder = self._batch_encoder = BatchEncoder(
                schema, self._ttl_s, self._mapper.ignores_unknown)
        return encoder if encoder.usable else None

    def prepare(self, messages: Sequence[KafkaMessage], schema: CompiledSchema) -> PreparedBatch:
        """The batch's records and dead letters, in the batch's order.

        Python's cyclic garbage collector is paused meanwhile: a batch allocates thousands of
        containers that all live until it is encoded (a decoded object per message, its row,
        its record), and each collection the allocations trigger would walk them, and every
        older object of the process as they get promoted (measured: ~3.5 us per record, a
        third of the whole consumer's CPU). None of them is part of a cycle; reference
        counting frees them, and collection resumes with the next batch's allocations."""
        with collector_paused():
            bulk = self._bulk(schema)
            if bulk is not None:
                return self._prepare_bulk(messages, schema, bulk)
            return self._prepare_each(messages, schema)

    def _prepare_each(self, messages: Sequence[KafkaMessage], schema: CompiledSchema
                      ) -> PreparedBatch:
        builder = ColumnsBuilder(len(messages))
        sources = _Sources(len(messages))
        dead: list[DeadLetter] = []
        for i, msg in enumerate(messages):
            outcome = self.prepare_one(msg, schema, sources.add(i, msg))
            if isinstance(outcome, DeadLetter):
                dead.append(outcome)
            else:
                builder.add_record(i, outcome.validated)
        return _batch(messages, schema, builder, sources, dead)

    def _prepare_bulk(self, messages: Sequence[KafkaMessage], schema: CompiledSchema,
                      bulk: BatchEncoder) -> PreparedBatch:
        """`prepare` through the whole-batch encoder: each message decoded, then the decoded
        objects encoded together, in columns; what it leaves goes the per-message way."""
        n = len(messages)
        builder = ColumnsBuilder(n)
        sources = _Sources.of(messages)
        dead_at: dict[int, DeadLetter] = {}
        decode, max_bytes = self._decode, self._max_bytes
        objects = decode_json_objects(list(map(_VALUE, messages)), max_bytes)
        where: list[int] = list(range(n)) if objects is not None else []
        objects_each: list[dict[str, Any]] = []  # when the whole batch is not all objects
        for i, msg in enumerate(messages if objects is None else ()):
            source = sources.of_message(i)
            value = msg.value()
            if value is None or len(value) > max_bytes:
                dead_at[i] = self._refused(msg, value)
                continue
            try:
                decoded = decode(value)
            except SerializationError as exc:
                dead_at[i] = DeadLetter(msg, UNDECODABLE, exc.message)
                continue
            if isinstance(decoded, dict):
                objects_each.append(decoded)
                where.append(i)
            else:  # not from the JSON decoder; here for the type checker
                self._place(builder, dead_at, i, self._from_decoded(msg, decoded, schema, source))
        if objects is None:
            objects = objects_each
        positions = np.asarray(where, np.int64)
        left = np.ones(len(objects), np.bool_)
        for enc in bulk.encode_columns(objects):
            builder.add_group(positions[enc.members], enc.payloads, enc.payload_starts,
                              enc.payload_ends, enc.strings, enc.id_starts, enc.id_ends,
                              enc.event_time_us, enc.ttl_us)
            left[enc.members] = False
        for k in np.flatnonzero(left).tolist():  # the per-message path decides and words why
            i = where[k]
            self._place(builder, dead_at, i,
                        self._from_decoded(messages[i], objects[k], schema, sources.of_message(i)))
        dead = [dead_at[i] for i in sorted(dead_at)]
        return _batch(messages, schema, builder, sources, dead)

    @staticmethod
    def _place(builder: ColumnsBuilder, dead_at: dict[int, DeadLetter], i: int,
               outcome: SinkRecord | DeadLetter) -> None:
        if isinstance(outcome, DeadLetter):
            dead_at[i] = outcome
        else:
            builder.add_record(i, outcome.validated)

    def _decoded(self, msg: KafkaMessage) -> Decoded | DeadLetter:
        """The message's decoded value, or why it cannot be decoded."""
        value = msg.value()
        if value is None or len(value) > self._max_bytes:
            return self._refused(msg, value)
        try:
            return self._decode(value)
        except SerializationError as exc:
            return DeadLetter(msg, UNDECODABLE, exc.message)

    def _refused(self, msg: KafkaMessage, value: bytes | None) -> DeadLetter:
        """Why a value that is None or over the size limit is not decoded."""
        if value is None:
            return DeadLetter(
                msg, UNDECODABLE, "the message has no value (a tombstone); deletes are not ingested"
            )
        return DeadLetter(
            msg,
            OVERSIZED,
            f"the message value is {len(value)} bytes; the limit is {self._max_bytes}",
        )

    def prepare_one(
        self, msg: KafkaMessage, schema: CompiledSchema, source: str | None = None
    ) -> SinkRecord | DeadLetter:
        """The message's record, or why it is refused."""
        if source is None:
            source = source_of(msg)
        decoded = self._decoded(msg)
        if isinstance(decoded, DeadLetter):
            return decoded
        return self._from_decoded(msg, decoded, schema, source)

    def _from_decoded(
        self, msg: KafkaMessage, decoded: Decoded, schema: CompiledSchema, source: str
    ) -> SinkRecord | DeadLetter:
        """The record of a decoded message, one message at a time, or why it is refused."""
        try:
            if isinstance(decoded, dict):
                if self._mapper.reads_message(schema):
                    values = self._mapper.flatten(decoded, msg.key(), msg.timestamp(), schema)
                else:
                    values = self._mapper.flatten(decoded, None, _NO_TIMESTAMP, schema)
                validated = self._fast(schema).encode(values)
                if validated is not None:
                    return SinkRecord(validated, source)
                record = record_from_values(values)
            else:
                record = self._mapper.to_record(decoded, msg.key(), msg.timestamp(), schema)
        except InvalidRequestError as exc:
            return DeadLetter(msg, SCHEMA, exc.message)
        try:
            validated = validate_record(schema, record, self._ttl_s, WHERE)
        except InvalidRequestError as exc:
            # The size is checked last, once the rest is valid and the record normalized.
            kind = OVERSIZED if record.ByteSize() > MAX_RECORD_BYTES else SCHEMA
            return DeadLetter(msg, kind, exc.message)
        return SinkRecord(validated, source)


_TOPIC, _PARTITION = methodcaller("topic"), methodcaller("partition")
_OFFSET, _VALUE = methodcaller("offset"), methodcaller("value")


class _Sources:
    """Each message's source ("kafka:<topic>/<partition>/<offset>") and each partition's next
    offset to commit."""

    def __init__(self, n: int) -> None:
        self.texts = [""] * n
        self.next_offsets: dict[TopicPartition, int] = {}
        self._prefixes: dict[TopicPartition, str] = {}

    @classmethod
    def of(cls, messages: Sequence[KafkaMessage]) -> _Sources:
        """Those of every message of a batch, a column at a time (no Python call per message
        beyond the client's getters)."""
        n = len(messages)
        out = cls(n)
        topics = list(map(_TOPIC, messages))
        partitions = list(map(_PARTITION, messages))
        offsets = list(map(_OFFSET, messages))
        if None in topics or None in partitions or None in offsets:  # not from a broker
            for i, msg in enumerate(messages):
                out.add(i, msg)
            return out
        tps = list(zip(topics, partitions, strict=True))
        prefixes = {tp: f"kafka:{tp[0]}/{tp[1]}/" for tp in set(tps)}
        out.texts = list(map(str.__add__, map(prefixes.__getitem__, tps), map(str, offsets)))
        if len(prefixes) == 1:
            out.next_offsets = {tps[0]: max(offsets) + 1}
        else:
            by_tp = np.fromiter(map(list(prefixes).index, tps), np.int64, n)
            last = np.full(len(prefixes), -1, np.int64)
            np.maximum.at(last, by_tp, np.asarray(offsets, np.int64))
            out.next_offsets = {tp: int(o) + 1 for tp, o in zip(prefixes, last.tolist(),
                                                                  strict=True)}
        return out

    def add(self, i: int, msg: KafkaMessage) -> str:
        tp = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        if offset + 1 > self.next_offsets.get(tp, -1):
            self.next_offsets[tp] = offset + 1
        prefix = self._prefixes.get(tp)
        if prefix is None:
            prefix = self._prefixes[tp] = f"kafka:{tp[0]}/{tp[1]}/"
        source = self.texts[i] = prefix + str(offset)
        return source

    def of_message(self, i: int) -> str:
        return self.texts[i]


def _batch(messages: Sequence[KafkaMessage], schema: CompiledSchema, builder: ColumnsBuilder,
           sources: _Sources, dead: list[DeadLetter]) -> PreparedBatch:
    records, positions = builder.build(sources.texts)
    record_messages = [messages[i] for i in positions.tolist()]
    return PreparedBatch(list(messages), schema, records, record_messages, dead,
                         sources.next_offsets)
