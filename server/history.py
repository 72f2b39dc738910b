"""History rows: what a write leaves for the offline store, as kept in the outbox.

The request path encodes a row when it validates a write (`encode`); the writer prefixes the
commit's write time and files it under the commit sequence number, in the same RocksDB batch as
the online record, so a write is durable in history exactly when it is acknowledged. The flusher
decodes rows (`decode`) into Parquet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# group_id, api_invocation_time_us, event_time_us, expires_at_us, is_deleted, len(source)
_ROW = struct.Struct("<IqqqBH")
_WRITE_TIME = struct.Struct("<q")
NO_EXPIRY = -1


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
