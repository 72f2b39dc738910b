"""A batch's validated records in columns: what the consumer hands its sink.

`RecordColumns` holds n records as arrays over one buffer: record i's payload (the Record's wire
bytes) is buf[payload_starts[i]:payload_ends[i]], its identifier's UTF-8 (an Integral's decimal
digits) buf[id_starts[i]:id_ends[i]], its source ("kafka:<topic>/<partition>/<offset>", ASCII)
buf[source_starts[i]:source_ends[i]]; its event time event_time_us[i] and its expiry
expires_at_us[i] (None: no record of the batch expires: the ttl is the topic's or the group's,
the same for all). A sink that writes columns (the embedded sink: one PutBatch per batch,
server/ingest_sink.py) reads the arrays and never makes an object per record; any other sink
reads it as a sequence of `SinkRecord`s, each built when it is reached.

`ColumnsBuilder` assembles one in the batch's order from the whole-batch encoder's groups (their
buffers kept whole: a record's bytes are not copied here) and the per-message path's records.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import overload

import numpy as np

from tessera.core.aggregation.inputs import AggregationInput
from tessera.core.records import ValidatedRecord
from tessera.ingest.sinks import SinkRecord


@dataclass(frozen=True, eq=False)
class RecordColumns(Sequence[SinkRecord]):
    """n validated records in columns (see the module docstring)."""

    buf: bytes
    payload_starts: np.ndarray  # int64, one per record, like every array here
    payload_ends: np.ndarray
    id_starts: np.ndarray
    id_ends: np.ndarray
    source_starts: np.ndarray
    source_ends: np.ndarray
    event_time_us: np.ndarray
    expires_at_us: np.ndarray | None
    #: What each record adds to its group's aggregations; None when the group has none.
    aggregations: list[AggregationInput | None] | None = None

    def __len__(self) -> int:
        return int(self.event_time_us.shape[0])

    @overload
    def __getitem__(self, index: int) -> SinkRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SinkRecord]: ...

    def __getitem__(self, index: int | slice) -> SinkRecord | Sequence[SinkRecord]:
        if isinstance(index, slice):
            return self.take(np.arange(len(self), dtype=np.int64)[index])
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} of a batch of {n}")
        return self._record(index % n)

    def __iter__(self) -> Iterator[SinkRecord]:
        return iter(self.records())

    def records(self) -> list[SinkRecord]:
        """Every record as a SinkRecord (built once, on the first call: a sink that reads
        records one by one pays for the objects, one that reads columns never does)."""
        cached: list[SinkRecord] | None = self.__dict__.get("_records")
        if cached is not None:
            return cached
        n = len(self)
        expires = ([None] * n if self.expires_at_us is None
                   else self.expires_at_us.tolist())
        aggregations = self.aggregations if self.aggregations is not None else [None] * n
        with collector_paused():  # thousands of acyclic objects (batch.Preparer.prepare)
            ids = [raw.decode() for raw in _slices(self.buf, self.id_starts, self.id_ends)]
            out = list(map(
                SinkRecord,
                map(ValidatedRecord, ids, self.event_time_us.tolist(), expires,
                    _slices(self.buf, self.payload_starts, self.payload_ends), aggregations),
                self.sources()))
        self.__dict__["_records"] = out
        return out

    def payloads(self) -> list[bytes]:
        """Each record's payload."""
        return _slices(self.buf, self.payload_starts, self.payload_ends)

    def sources(self) -> list[str]:
        """Each record's source."""
        return [raw.decode() for raw in _slices(self.buf, self.source_starts, self.source_ends)]

    def _record(self, i: int) -> SinkRecord:
        buf = self.buf
        expires = None if self.expires_at_us is None else int(self.expires_at_us[i])
        aggregation = None if self.aggregations is None else self.aggregations[i]
        validated = ValidatedRecord(
            buf[int(self.id_starts[i]):int(self.id_ends[i])].decode(),
            int(self.event_time_us[i]), expires,
            buf[int(self.payload_starts[i]):int(self.payload_ends[i])], aggregation)
        return SinkRecord(validated, buf[int(self.source_starts[i]):int(self.source_ends[i])]
                          .decode())

    def take(self, indexes: np.ndarray | Sequence[int]) -> RecordColumns:
        """The records at `indexes`, in that order (the buffer is shared, not copied)."""
        picked = np.asarray(indexes, np.int64)
        aggregations = self.aggregations
        return RecordColumns(
            self.buf, self.payload_starts[picked], self.payload_ends[picked],
            self.id_starts[picked], self.id_ends[picked], self.source_starts[picked],
            self.source_ends[picked], self.event_time_us[picked],
            None if self.expires_at_us is None else self.expires_at_us[picked],
            None if aggregations is None else [aggregations[i] for i in picked.tolist()],
        )

    @classmethod
    def of(cls, records: Sequence[SinkRecord]) -> RecordColumns:
        """The columns of records given one by one."""
        builder = ColumnsBuilder(len(records))
        for i, record in enumerate(records):
            builder.add_record(i, record.validated)
        columns, _ = builder.build([r.source for r in records])
        return columns


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide) for the block, if it runs; whoever
    paused it resumes it (a block that found it paused leaves it be)."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _slices(buf: bytes, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
    return list(map(buf.__getitem__, map(slice, starts.tolist(), ends.tolist())))


class ColumnsBuilder:
    """Builds the `RecordColumns` of a batch of n messages: each position 0..n-1 gets a record
    (`add_group`, `add_record`) or none (a dead letter); `build` keeps the records in position
    order."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._chunks: list[bytes] = []
        self._size = 0
        self._has = np.zeros(n, np.bool_)
        self._pay_s = np.zeros(n, np.int64)
        self._pay_e = np.zeros(n, np.int64)
        self._id_s = np.zeros(n, np.int64)
        self._id_e = np.zeros(n, np.int64)
        self._et = np.zeros(n, np.int64)
        self._exp = np.zeros(n, np.int64)
        self._expiry: bool | None = None  # whether the records expire (all or none)
        self._aggregations: dict[int, AggregationInput] = {}

    def _blob(self, data: bytes) -> int:
        """Appends `data` to the buffer; its offset there."""
        base = self._size
        if data:
            self._chunks.append(data)
            self._size += len(data)
        return base

    def _expires(self, expiry: bool) -> None:
        if self._expiry is None:
            self._expiry = expiry
        elif self._expiry != expiry:
            # The ttl is the topic's or the group's: one for the whole batch.
            raise ValueError("a batch whose records disagree on having an expiry")

    def add_group(
        self, positions: np.ndarray, payloads: bytes, payload_starts: np.ndarray,
        payload_ends: np.ndarray, strings: bytes, id_starts: np.ndarray, id_ends: np.ndarray,
        event_time_us: np.ndarray, ttl_us: int | None,
    ) -> None:
        """Records at `positions` whose payloads lie in `payloads` and identifiers in `strings`
        (the arrays: one entry per position, offsets into those buffers); expiring `ttl_us`
        after their event time (None: never)."""
        if not len(positions):
            return
        self._expires(ttl_us is not None)
        base = self._blob(payloads)
        self._pay_s[positions] = payload_starts + base
        self._pay_e[positions] = payload_ends + base
        base = self._blob(strings)
        self._id_s[positions] = id_starts + base
        self._id_e[positions] = id_ends + base
        self._et[positions] = event_time_us
        if ttl_us is not None:
            self._exp[positions] = event_time_us + ttl_us
        self._has[positions] = True

    def add_record(self, position: int, record: ValidatedRecord) -> None:
        """One record, at `position`."""
        self._expires(record.expires_at_us is not None)
        payload = record.payload
        base = self._blob(payload)
        self._pay_s[position], self._pay_e[position] = base, base + len(payload)
        raw = record.record_id.encode()
        base = self._blob(raw)
        self._id_s[position], self._id_e[position] = base, base + len(raw)
        self._et[position] = record.event_time_us
        if record.expires_at_us is not None:
            self._exp[position] = record.expires_at_us
        if record.aggregation is not None:
            self._aggregations[position] = record.aggregation
        self._has[position] = True

    def build(self, sources: Sequence[str]) -> tuple[RecordColumns, np.ndarray]:
        """(the columns, the position of each record); `sources[p]` is position p's source."""
        kept = np.flatnonzero(self._has)
        picked = [sources[p] for p in kept.tolist()]
        text = "".join(picked)
        raw = text.encode()
        lengths = np.fromiter(map(len, picked), np.int64, len(picked))
        if len(raw) != len(text):  # not ASCII (a topic name Kafka would refuse): byte lengths
            lengths = np.fromiter((len(s.encode()) for s in picked), np.int64, len(picked))
        base = self._blob(raw)
        src_e = np.cumsum(lengths) + base
        src_s = src_e - lengths
        aggregations: list[AggregationInput | None] | None = None
        if self._aggregations:
            aggregations = [self._aggregations.get(p) for p in kept.tolist()]
        buf = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        columns = RecordColumns(
            buf, self._pay_s[kept], self._pay_e[kept], self._id_s[kept], self._id_e[kept],
            src_s, src_e, self._et[kept],
            self._exp[kept] if self._expiry else None, aggregations,
        )
        return columns, kept
