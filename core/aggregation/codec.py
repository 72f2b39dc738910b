"""Tile state in RocksDB: one value per (stream, key), its layout, and the key layout.

Key (column family "aggregates", `tessera.core.keys.aggregate_key`):
    group_id (4 bytes, big-endian) | stream id (1 byte) | key text
where key text is the record identifier (or the key feature's value) as `keys.record_key` writes
it: a group's aggregates are one contiguous range, and GetRecord reads ONE value per stream
(usually one: aggregations by record id), so the read is one get and one kernel call.

Value (little-endian, 8-byte words; n tiles, s sources, R recent rows; a struct of arrays):

    header   2 words: version u8 | flags u8 | s u16 | R u16 | pad u16 || n u32 | pad u32
    tiles    id i64[n] | events i64[n] | count i64[n,s] | sum_hi f64[n,s] | sum_lo f64[n,s]
             | min f64[n,s] | max f64[n,s]
    recent   len i64[s] | value f64[R,s] | time i64[R,s] | seq i64[R,s]

flags (kernels.COUNT_IS_EVENTS, LO_IS_ZERO): the count block is left out when every count
equals its tile's events (no null source), the sum_lo block when every sum_lo is +0.0 (exact
sums); the decoder fills them in. Values written before the flags existed have 0 there.

16 + n(16 + 8bs) + s(8 + 24R) bytes, b the blocks present (3 to 5): a key with 60 one-minute
tiles of one source (plus last_5) is 3.4 KB with all five; a key busy in every minute of a day,
1440 tiles, 81 KB. Every value is written again whole by each commit that folds an event into
it, so its size is what the write path pays per event (copies, WAL checksum and write). The kernels
(`decode_values` / `encode_values`) read and write this form themselves, for many keys in one
call: the write path passes the multi-get's values joined into one buffer and gets one buffer
back, sliced per key, with no Python per tile or per array.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation import kernels

F64s = npt.NDArray[np.float64]
I64s = npt.NDArray[np.int64]
U8s = npt.NDArray[np.uint8]

VERSION = kernels.VERSION
HEADER = struct.Struct("<BxHHxxI4x")


class TileLayoutError(ValueError):
    """A stored value does not have the stream's layout: corrupt, or written before the
    stream's sources or last_n sizes changed."""


def value_size(n_tiles: int, n_sources: int, rows: int, flags: int = 0) -> int:
    """Bytes of a stored value with these flags (0: every block present)."""
    blocks = 5 - bool(flags & kernels.COUNT_IS_EVENTS) - bool(flags & kernels.LO_IS_ZERO)
    return HEADER.size + n_tiles * (16 + 8 * blocks * n_sources) + n_sources * (8 + 24 * rows)


@functools.lru_cache(maxsize=256)
def empty_value(n_sources: int, rows: int) -> bytes:
    """The value of a key with no events (what an absent key reads as)."""
    return HEADER.pack(VERSION, n_sources, rows, 0) + bytes(value_size(0, n_sources, rows) - 16)


def pack(values: Sequence[bytes | None], n_sources: int, rows: int) -> tuple[U8s, I64s]:
    """Stored values (None: absent) as the kernels take them: one read-only byte buffer,
    8-byte aligned, and the offsets of each value in it."""
    empty = empty_value(n_sources, rows)
    if len(values) == 1:
        joined = values[0] if values[0] is not None else empty
        off = np.array([0, len(joined)], np.int64)
    else:
        parts = [v if v is not None else empty for v in values]
        joined = b"".join(parts)
        off = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=off[1:])
    buf = np.frombuffer(joined, np.uint8)
    if len(joined) % 8 or not buf.flags.aligned:
        # CPython's bytes are 8-aligned and a valid value is whole words: only a corrupt value
        # gets here; pad it so the kernel can read words and report which value is bad.
        padded = np.zeros(-(-len(joined) // 8) * 8, np.uint8)
        padded[: len(joined)] = buf
        buf = padded
    off.flags.writeable = False
    if buf.flags.writeable:
        buf.flags.writeable = False
    return buf, off


def check_bad(bad: int, values: Sequence[bytes | None], n_sources: int, rows: int) -> None:
    """Raise TileLayoutError for value `bad` (a kernel's first-bad index; -1: all good)."""
    if bad < 0:
        return
    value = values[bad] or b""
    head = HEADER.unpack_from(value) if len(value) >= HEADER.size else None
    raise TileLayoutError(
        f"aggregate value {bad} ({len(value)} bytes, header version/sources/recent rows/tiles "
        f"{head}) does not match the stream's layout (version {VERSION}, {n_sources} sources, "
        f"{rows} recent rows)"
    )


@dataclass(frozen=True, eq=False)
class TileState:
    """The tiles and recent events of k keys of one stream, in the kernels' CSR form."""

    off: I64s  # (k+1,)
    tile_id: I64s  # (n,)
    events: I64s  # (n,)
    count: I64s  # (n, s)
    sum_hi: F64s  # (n, s)
    sum_lo: F64s
    min: F64s
    max: F64s
    recent_len: I64s  # (k, s)
    recent_value: F64s  # (k, R, s)
    recent_time: I64s
    recent_seq: I64s

    @property
    def n_keys(self) -> int:
        return len(self.off) - 1

    def tiles(self) -> tuple[I64s, I64s, I64s, I64s, F64s, F64s, F64s, F64s]:
        return (
            self.off, self.tile_id, self.events, self.count,
            self.sum_hi, self.sum_lo, self.min, self.max,
        )  # fmt: skip

    def recent(self) -> tuple[I64s, F64s, I64s, I64s]:
        return self.recent_len, self.recent_value, self.recent_time, self.recent_seq


def decode(values: Sequence[bytes | None], n_sources: int, rows: int) -> TileState:
    """The state of k keys from their stored values (None: no events yet)."""
    buf, off = pack(values, n_sources, rows)
    tiles, recent, bad = kernels.decode_values(buf, off, n_sources, rows)
    check_bad(bad, values, n_sources, rows)
    return TileState(*tiles, *recent)


def encode(state: TileState) -> list[bytes | None]:
    """The stored value of each key of a state (None: nothing left, delete the key)."""
    arrays = [np.require(a, a.dtype, ("C", "A", "W")) for a in state.tiles() + state.recent()]
    buf, off = kernels.encode_values(*arrays)
    return unpack(buf, off)


def unpack(buf: U8s, off: I64s) -> list[bytes | None]:
    """Values from a kernel's buffer and offsets, each copied once from the buffer (a copy of
    the whole buffer first, then slices of it, cost 6-10x more: a fresh megabyte-sized block
    per commit); empty -> None."""
    view = buf.data  # the array's own memoryview: no copy
    bounds = off.tolist()
    return [bytes(view[a:b]) if b > a else None for a, b in zip(bounds, bounds[1:], strict=False)]
