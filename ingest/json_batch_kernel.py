"""The compiled pass of ingest/json_batch.py: every record's `tessera.v1.Record` wire bytes from a
batch's columns. Imported (compiled, or loaded from Numba's on-disk cache) by
`json_batch.load()`, never on the light client's path.

Record i is the features j = 0..m-1 with present[j, i], in column order, each a
`Record.features` entry (tag 1, length) holding a FeatureValue: its name (the column's prefix:
tag 1, length, UTF-8) and its value: an Integral as a varint of its two's complement (tag 2), a
Fractional as 8 little-endian bytes (tag 3), a String as length-delimited UTF-8 (tag 4):
what upb writes, and what ingest/encode.py's FastEncoder writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from numba import types as nbt

INT, FLOAT, STRING = 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


def _compiled(signature: Any) -> Callable[[F], F]:
    return cast(Callable[[F], F], numba.njit(signature, cache=True, nogil=True))


@numba.njit(cache=True, nogil=True, inline="always")
def _varint_len(value: Any) -> int:
    v = np.uint64(value)
    n = 1
    while v >= np.uint64(0x80):
        v >>= np.uint64(7)
        n += 1
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _put_varint(out: Any, p: int, value: Any) -> int:
    v = np.uint64(value)
    while v >= np.uint64(0x80):
        out[p] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        p += 1
    out[p] = np.uint8(v)
    return p + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _inner_size(kind: int, prefix_len: int, value: Any, str_len: int) -> int:
    """The FeatureValue's size (without the entry's own tag and length)."""
    if kind == INT:
        return prefix_len + 1 + _varint_len(value)
    if kind == FLOAT:
        return prefix_len + 9
    return prefix_len + 1 + _varint_len(str_len) + str_len


_Tuple: Any = nbt.Tuple
_SIGNATURE = _Tuple((nbt.Array(nbt.uint8, 1, "C"), nbt.Array(nbt.int64, 1, "C")))(
    nbt.Array(nbt.int8, 1, "C"),  # kinds[m]
    nbt.Array(nbt.uint8, 1, "C", readonly=True),  # prefixes (each column's name, framed)
    nbt.Array(nbt.int64, 1, "C"),  # prefix_offsets[m + 1]
    nbt.Array(nbt.boolean, 2, "C"),  # present[m, n]
    nbt.Array(nbt.uint64, 2, "C"),  # values[m, n]: an int64's or a double's bits
    nbt.Array(nbt.uint8, 1, "C", readonly=True),  # the strings' UTF-8, concatenated
    nbt.Array(nbt.int64, 2, "C"),  # str_start[m, n]
    nbt.Array(nbt.int64, 2, "C"),  # str_len[m, n]
)


@_compiled(_SIGNATURE)
def assemble(kinds: Any, prefixes: Any, prefix_offsets: Any, present: Any, values: Any,
             strings: Any, str_start: Any, str_len: Any) -> tuple[Any, Any]:
    """(payloads, offsets): record i is payloads[offsets[i]:offsets[i + 1]]."""
    m, n = present.shape
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        total = 0
        for j in range(m):
            if present[j, i]:
                inner = _inner_size(kinds[j], prefix_offsets[j + 1] - prefix_offsets[j],
                                    values[j, i], str_len[j, i])
                total += 1 + _varint_len(inner) + inner
        offsets[i + 1] = offsets[i] + total
    out = np.empty(offsets[n], np.uint8)
    for i in range(n):
        p = offsets[i]
        for j in range(m):
            if not present[j, i]:
                continue
            kind = kinds[j]
            a, b = prefix_offsets[j], prefix_offsets[j + 1]
            inner = _inner_size(kind, b - a, values[j, i], str_len[j, i])
            out[p] = np.uint8(0x0A)
            p = _put_varint(out, p + 1, inner)
            out[p:p + b - a] = prefixes[a:b]
            p += b - a
            if kind == INT:
                out[p] = np.uint8(0x10)
                p = _put_varint(out, p + 1, values[j, i])
            elif kind == FLOAT:
                out[p] = np.uint8(0x19)
                p += 1
                v = values[j, i]
                for k in range(8):
                    out[p + k] = np.uint8((v >> np.uint64(8 * k)) & np.uint64(0xFF))
                p += 8
            else:
                size = str_len[j, i]
                out[p] = np.uint8(0x22)
                p = _put_varint(out, p + 1, size)
                s = str_start[j, i]
                out[p:p + size] = strings[s:s + size]
                p += size
    return out, offsets
