"""History rows: what a write leaves for the offline store, as kept in the outbox.

The request path encodes a row when it validates a write (`encode`); the writer prefixes the
commit's write time and files it under the commit sequence number, in the same RocksDB batch as
the online record, so a write is durable in history exactly when it is acknowledged. The flusher
reads a range of rows as one `HistoryBatch` (`decode_batch`: the rows' bytes in one buffer, their
headers as columns) that the offline writer turns into Arrow column by column; `decode` reads one
row, the reference the batch is tested against.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# group_id, api_invocation_time_us, event_time_us, expires_at_us, is_deleted, len(source)
_ROW = struct.Struct("<IqqqBH")
_WRITE_TIME = struct.Struct("<q")
NO_EXPIRY = -1
#: A stored row's header: its write time, then _ROW.
HEADER_BYTES = _WRITE_TIME.size + _ROW.size


def encode(
    group_id: int,
    api_invocation_time_us: int,
    event_time_us: int,
    expires_at_us: int | None,
    is_deleted: bool,
    source: str,
    payload: bytes,
) -> bytes:
    """A history row without its write time (which only the commit knows)."""
    src = source.encode()[:65535]
    head = _ROW.pack(
        group_id,
        api_invocation_time_us,
        event_time_us,
        NO_EXPIRY if expires_at_us is None else expires_at_us,
        1 if is_deleted else 0,
        len(src),
    )
    return head + src + payload


def with_write_time(write_time_us: int, row: bytes) -> bytes:
    return _WRITE_TIME.pack(write_time_us) + row


@dataclass(frozen=True, slots=True)
class HistoryRow:
    seq: int
    write_time_us: int
    group_id: int
    api_invocation_time_us: int
    event_time_us: int
    expires_at_us: int | None
    is_deleted: bool
    source: str | None
    payload: bytes  # the Record's wire bytes (for a delete: identifier and event time only)


def decode(seq: int, value: bytes) -> HistoryRow:
    (write_time_us,) = _WRITE_TIME.unpack_from(value)
    gid, api_us, et_us, exp_us, deleted, src_len = _ROW.unpack_from(value, _WRITE_TIME.size)
    start = _WRITE_TIME.size + _ROW.size
    source = value[start : start + src_len].decode() if src_len else None
    return HistoryRow(
        seq=seq,
        write_time_us=write_time_us,
        group_id=gid,
        api_invocation_time_us=api_us,
        event_time_us=et_us,
        expires_at_us=None if exp_us == NO_EXPIRY else exp_us,
        is_deleted=bool(deleted),
        source=source,
        payload=value[start + src_len :],
    )


@dataclass(frozen=True, slots=True)
class HistoryBatch:
    """Rows of an outbox range, column-wise: every row's bytes in `buf`, row i being
    buf[starts[i]:ends[i]]; its header fields as arrays; its source at
    buf[starts[i] + HEADER_BYTES:][:source_lengths[i]] (none when 0) and its payload at
    buf[payload_starts[i]:ends[i]]. All arrays are read-only."""

    buf: np.ndarray  # uint8
    seqs: np.ndarray  # int64, like every array below but is_deleted (bool)
    starts: np.ndarray
    ends: np.ndarray
    write_time_us: np.ndarray
    group_ids: np.ndarray
    api_invocation_time_us: np.ndarray
    event_time_us: np.ndarray
    expires_at_us: np.ndarray  # NO_EXPIRY: none
    is_deleted: np.ndarray
    source_lengths: np.ndarray
    payload_starts: np.ndarray

    def __len__(self) -> int:
        return int(self.seqs.shape[0])

    def row(self, i: int) -> HistoryRow:
        """Row i decoded on its own (the reference path)."""
        start, end = int(self.starts[i]), int(self.ends[i])
        return decode(int(self.seqs[i]), self.buf[start:end].tobytes())

    def rows(self, picked: Sequence[int] | np.ndarray | None = None) -> list[HistoryRow]:
        return [self.row(int(i)) for i in (range(len(self)) if picked is None else picked)]


def decode_batch(seqs: Sequence[int] | np.ndarray, values: Sequence[bytes]) -> HistoryBatch:
    """Stored rows (with their write times) as one HistoryBatch; ValueError for a row shorter
    than its header."""
    n = len(values)
    lengths = np.fromiter(map(len, values), np.int64, n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    if n and int(lengths.min()) < HEADER_BYTES:
        bad = int(np.flatnonzero(lengths < HEADER_BYTES)[0])
        raise ValueError(f"outbox row {seqs[bad]} is {lengths[bad]} bytes, shorter than its header")
    buf = np.frombuffer(b"".join(values), np.uint8)

    def field(offset: int, dtype: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        raw = buf[starts[:, None] + np.arange(offset, offset + size)]
        out: np.ndarray = raw.view(dtype)[:, 0].astype(np.int64)
        return out

    # The offsets of _WRITE_TIME + _ROW's fields ("<q" + "<IqqqBH", packed).
    source_lengths = np.minimum(field(37, "<u2"), lengths - HEADER_BYTES)
    columns = [
        np.asarray(seqs, np.int64), starts, ends, field(0, "<i8"), field(8, "<u4"),
        field(12, "<i8"), field(20, "<i8"), field(28, "<i8"), field(36, "u1") != 0,
        source_lengths, np.minimum(starts + HEADER_BYTES + source_lengths, ends),
    ]
    for c in columns:
        c.setflags(write=False)
    return HistoryBatch(buf, *columns)
