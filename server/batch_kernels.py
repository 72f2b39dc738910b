"""Compiled encoding of a PutRecords request's puts, on both sides of the writer socket, without a
Python loop per record.

Serving side (`encode_puts`): from the request's bytes and what core/record_scan.py found in
them, every record's key (`group_id | record_id`, core/keys.py), its payload (the record's wire
bytes, stored as sent) and its history row (server/history.py's layout, without the write time)
in three buffers with their offsets. Writer side (`stored_values`, `outbox_rows`): the stored
values (the online store's header, then the payload) of the records a commit applies, and the
history rows with the commit's write time in front.

Each kernel has one explicit signature, compiled (or loaded from Numba's on-disk cache) when this
module is imported, at start-up, never on a request. Callers pass read-only arrays (`np.frombuffer`
of bytes: one compiled signature per kernel). Every kernel is tested against the per-record
reference it replaces (tests/unit/server/test_put_batch.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from numba import types as nbt

_U8 = nbt.Array(nbt.uint8, 1, "C", readonly=True)
_I64 = nbt.Array(nbt.int64, 1, "C", readonly=True)
_OUT_U8 = nbt.Array(nbt.uint8, 1, "C")
_OUT_I64 = nbt.Array(nbt.int64, 1, "C")
_Tuple: Any = nbt.Tuple
F = TypeVar("F", bound=Callable[..., Any])

#: history.py's row header ("<IqqqBH": group id, api invocation time, event time, expiry or -1,
#: is_deleted, source length) and the online store's stored-value header ("<qqB").
ROW_HEADER_BYTES = 31
VALUE_HEADER_BYTES = 17
MAX_SOURCE_BYTES = 65535


def _compiled(signature: Any) -> Callable[[F], F]:
    return cast(Callable[[F], F], numba.njit(signature, cache=True, nogil=True))


@numba.njit(cache=True, nogil=True, inline="always")
def _put_le(out: np.ndarray, p: int, value: int, size: int) -> None:
    v = np.uint64(value)
    for b in range(size):
        out[p + b] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(0xFF))


@numba.njit(cache=True, nogil=True, inline="always")
def _decimal_len(value: int) -> int:
    if value == 0:
        return 1
    n = 0
    if value < 0:
        n = 1
        u = np.uint64(-(value + 1)) + np.uint64(1)  # |INT64_MIN| does not fit an int64
    else:
        u = np.uint64(value)
    while u:
        n += 1
        u //= np.uint64(10)
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _put_decimal(out: np.ndarray, p: int, value: int, size: int) -> None:
    """`str(value)` as ASCII into out[p:p + size] (size = `_decimal_len(value)`)."""
    if value < 0:
        out[p] = 45  # '-'
        u = np.uint64(-(value + 1)) + np.uint64(1)
    else:
        u = np.uint64(value)
    q = p + size - 1
    while True:
        out[q] = np.uint8(48 + u % np.uint64(10))
        u //= np.uint64(10)
        q -= 1
        if not u:
            break


@_compiled(_Tuple((_OUT_U8, _OUT_I64, _OUT_U8, _OUT_I64, _OUT_U8, _OUT_I64))(
    _U8, _I64, _I64, _I64, _I64, nbt.boolean, nbt.int64, _I64, _I64, nbt.boolean, nbt.int64,
    _I64, _I64, nbt.boolean))
def encode_puts(
    buf: np.ndarray, rec_starts: np.ndarray, rec_ends: np.ndarray, id_a: np.ndarray,
    id_b: np.ndarray, id_is_int: bool, group_id: int, event_time_us: np.ndarray,
    expires_at_us: np.ndarray, has_expiry: bool, api_us: int, src_starts: np.ndarray,
    src_ends: np.ndarray, with_history: bool,
) -> tuple[np.ndarray, ...]:
    """(keys, key offsets, payloads, payload offsets, history rows, row offsets): record i's
    key is keys[key_offsets[i]:key_offsets[i + 1]], and so on (offsets: n + 1 each; no rows
    unless `with_history`). Record i is buf[rec_starts[i]:rec_ends[i]]; its identifier the
    Integral id_a[i] (`id_is_int`) or the bytes buf[id_a[i]:id_a[i] + id_b[i]]; its source
    buf[src_starts[i]:src_ends[i]] (no sources: empty arrays, every source empty)."""
    n = rec_starts.shape[0]
    with_sources = src_starts.shape[0] == n and n > 0
    key_off = np.empty(n + 1, np.int64)
    pay_off = np.empty(n + 1, np.int64)
    row_off = np.zeros(n + 1 if with_history else 1, np.int64)
    key_off[0] = pay_off[0] = 0
    for i in range(n):
        id_len = _decimal_len(id_a[i]) if id_is_int else id_b[i]
        key_off[i + 1] = key_off[i] + 4 + id_len
        size = rec_ends[i] - rec_starts[i]
        pay_off[i + 1] = pay_off[i] + size
        if with_history:
            src = min(src_ends[i] - src_starts[i], MAX_SOURCE_BYTES) if with_sources else 0
            row_off[i + 1] = row_off[i] + ROW_HEADER_BYTES + src + size
    keys = np.empty(key_off[n], np.uint8)
    payloads = np.empty(pay_off[n], np.uint8)
    rows = np.empty(row_off[-1], np.uint8)
    for i in range(n):
        p = key_off[i]
        for b in range(4):  # the group id, big-endian: a group's keys are one range
            keys[p + b] = np.uint8((group_id >> (8 * (3 - b))) & 0xFF)
        p += 4
        if id_is_int:
            _put_decimal(keys, p, id_a[i], key_off[i + 1] - p)
        else:
            keys[p : key_off[i + 1]] = buf[id_a[i] : id_a[i] + id_b[i]]
        s, e = rec_starts[i], rec_ends[i]
        payloads[pay_off[i] : pay_off[i + 1]] = buf[s:e]
        if with_history:
            r = row_off[i]
            src = min(src_ends[i] - src_starts[i], MAX_SOURCE_BYTES) if with_sources else 0
            _put_le(rows, r, group_id, 4)
            _put_le(rows, r + 4, api_us, 8)
            _put_le(rows, r + 12, event_time_us[i], 8)
            _put_le(rows, r + 20, expires_at_us[i] if has_expiry else -1, 8)
            rows[r + 28] = 0  # not deleted
            _put_le(rows, r + 29, src, 2)
            r += ROW_HEADER_BYTES
            if src:
                rows[r : r + src] = buf[src_starts[i] : src_starts[i] + src]
                r += src
            rows[r : row_off[i + 1]] = buf[s:e]
    return keys, key_off, payloads, pay_off, rows, row_off


@_compiled(_Tuple((_OUT_U8, _OUT_I64))(_U8, _I64, _I64, _I64, _I64, nbt.boolean, nbt.uint8))
def stored_values(
    payloads: np.ndarray, offsets: np.ndarray, picked: np.ndarray, event_time_us: np.ndarray,
    expires_at_us: np.ndarray, has_expiry: bool, expiry_flag: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The stored values of the picked records (indexes into the batch): the header ("<qqB":
    event time, expiry or 0, `expiry_flag` or 0), then the payload; (values, offsets)."""
    m = picked.shape[0]
    off = np.empty(m + 1, np.int64)
    off[0] = 0
    for j in range(m):
        i = picked[j]
        off[j + 1] = off[j] + VALUE_HEADER_BYTES + offsets[i + 1] - offsets[i]
    out = np.empty(off[m], np.uint8)
    for j in range(m):
        i = picked[j]
        p = off[j]
        _put_le(out, p, event_time_us[i], 8)
        _put_le(out, p + 8, expires_at_us[i] if has_expiry else 0, 8)
        out[p + 16] = expiry_flag if has_expiry else 0
        out[p + VALUE_HEADER_BYTES : off[j + 1]] = payloads[offsets[i] : offsets[i + 1]]
    return out, off


@_compiled(_Tuple((_OUT_U8, _OUT_I64))(_U8, _I64, nbt.int64))
def outbox_rows(
    rows: np.ndarray, offsets: np.ndarray, write_time_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """The history rows with the commit's write time (8 bytes, little-endian) in front of each
    (history.with_write_time); (rows, offsets)."""
    n = offsets.shape[0] - 1
    off = np.empty(n + 1, np.int64)
    for i in range(n + 1):
        off[i] = offsets[i] + 8 * i
    out = np.empty(off[n], np.uint8)
    for i in range(n):
        _put_le(out, off[i], write_time_us, 8)
        out[off[i] + 8 : off[i + 1]] = rows[offsets[i] : offsets[i + 1]]
    return out, off


def split(blob: bytes, offsets: list[int]) -> list[bytes]:
    """blob[offsets[i]:offsets[i + 1]] for each i, as bytes (what RocksDB's put takes)."""
    return list(map(blob.__getitem__, map(slice, offsets[:-1], offsets[1:])))


def readonly(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr
