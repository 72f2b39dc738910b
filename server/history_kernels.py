"""Compiled decoding of an outbox range: history rows to columns, without a Python loop per row.

The flusher reads a range of outbox values into one buffer (`starts`/`ends` delimit each row).
`history.HistoryBatch` has split every row into its header, its source and its payload (a
`tessera.v1.Record`'s wire bytes); `scan` walks the payloads' protobuf wire format and notes, for
each feature column and row, where its value lies; the `*_column` kernels then gather each column
into the buffers Arrow takes. Anything the kernels do not expect (a malformed payload, a feature
given twice, a value of another type than the column's, a field of another kind) makes them
return an error code, and the caller takes the reference path (protobuf decoding per row), so
the Parquet output never depends on which path ran.

Each kernel has one explicit signature, compiled (or loaded from Numba's on-disk cache) when this
module is imported, at start-up, never on a flush.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from numba import types as nbt

# Arguments are read-only C-contiguous arrays (callers pass read-only views: one compiled
# signature per kernel); results are arrays the kernels allocate.
_U8 = nbt.Array(nbt.uint8, 1, "C", readonly=True)
_I8 = nbt.Array(nbt.int8, 1, "C", readonly=True)
_I64 = nbt.Array(nbt.int64, 1, "C", readonly=True)
_I8_2 = nbt.Array(nbt.int8, 2, "C")
_I64_2 = nbt.Array(nbt.int64, 2, "C")
_OUT_U8 = nbt.Array(nbt.uint8, 1, "C")
_OUT_I64 = nbt.Array(nbt.int64, 1, "C")
_OUT_B1 = nbt.Array(nbt.boolean, 1, "C")
_Tuple: Any = nbt.Tuple
F = TypeVar("F", bound=Callable[..., Any])


def _compiled(signature: Any) -> Callable[[F], F]:
    """`numba.njit` with one explicit signature (compiled, or loaded from the on-disk cache, at
    import), the GIL released while it runs."""
    return cast(Callable[[F], F], numba.njit(signature, cache=True, nogil=True))

#: The value fields of tessera.v1.FeatureValue (its oneof `value`), by field number.
INT_VALUE, FLOAT_VALUE, STRING_VALUE = 2, 3, 4
INT_LIST, FLOAT_LIST, STRING_LIST, VECTOR_VALUE = 5, 6, 7, 8


@numba.njit(cache=True, nogil=True, inline="always")
def _varint(buf: np.ndarray, p: int, end: int) -> tuple[Any, int]:
    """(value as the low 64 bits, next position); next position -1 when malformed."""
    result = np.uint64(0)
    shift = np.uint64(0)
    while p < end:
        b = buf[p]
        p += 1
        if shift < 64:
            result |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return np.int64(result), p
        shift += np.uint64(7)
        if shift >= 70:
            return 0, -1
    return 0, -1


@numba.njit(cache=True, nogil=True, inline="always")
def _le64(buf: np.ndarray, p: int) -> np.uint64:
    v = np.uint64(0)
    for b in range(8):
        v |= np.uint64(buf[p + b]) << np.uint64(8 * b)
    return v


@_compiled(nbt.int64(_U8, _I64, _I64, _U8, _I64, _I8, _I8_2, _I64_2, _I64_2))
def scan(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, names: np.ndarray,
    name_offsets: np.ndarray, fields: np.ndarray,
    kind: np.ndarray, vstart: np.ndarray, vlen: np.ndarray,
) -> int:
    """Locate every feature value of the Records buf[starts[i]:ends[i]].

    Column j is named names[name_offsets[j]:name_offsets[j+1]] and takes value field fields[j].
    Fills kind[j, i] (0: absent, -1: named without a value, else the value field), and the
    value's bytes vstart[j, i], vlen[j, i] (a varint's own bytes; a length-delimited field's
    content). Features of other names are skipped, as the reference path does. Returns 0, or
    1 + the row that needs the reference path."""
    k = fields.shape[0]
    n = starts.shape[0]
    for i in range(n):
        p = starts[i]
        end = ends[i]
        guess = 0
        while p < end:
            tag, p = _varint(buf, p, end)
            if p < 0 or tag != 10:  # Record.features: field 1, length-delimited
                return i + 1
            ln, p = _varint(buf, p, end)
            if p < 0 or ln > end - p:
                return i + 1
            fv_end = p + ln
            name_s = -1
            name_l = 0
            vf = 0
            vs = 0
            vl = 0
            q = p
            while q < fv_end:
                t, q = _varint(buf, q, fv_end)
                if q < 0:
                    return i + 1
                fnum = t >> 3
                wt = t & 7
                if fnum == 1 and wt == 2:
                    if name_s >= 0:
                        return i + 1
                    ln2, q = _varint(buf, q, fv_end)
                    if q < 0 or ln2 > fv_end - q:
                        return i + 1
                    name_s = q
                    name_l = ln2
                    q += ln2
                elif vf != 0:
                    return i + 1  # two values in one oneof: the reference path decides
                elif fnum == INT_VALUE and wt == 0:
                    vs = q
                    _, q = _varint(buf, q, fv_end)
                    if q < 0:
                        return i + 1
                    vl = q - vs
                    vf = fnum
                elif fnum == FLOAT_VALUE and wt == 1:
                    if fv_end - q < 8:
                        return i + 1
                    vs = q
                    vl = 8
                    q += 8
                    vf = fnum
                elif STRING_VALUE <= fnum <= VECTOR_VALUE and wt == 2:
                    ln2, q = _varint(buf, q, fv_end)
                    if q < 0 or ln2 > fv_end - q:
                        return i + 1
                    vs = q
                    vl = ln2
                    q += ln2
                    vf = fnum
                else:
                    return i + 1
            p = fv_end
            if name_s < 0:
                return i + 1
            col = -1
            for step in range(k):
                j = (guess + step) % k
                a = name_offsets[j]
                if name_offsets[j + 1] - a != name_l:
                    continue
                same = True
                for b in range(name_l):
                    if names[a + b] != buf[name_s + b]:
                        same = False
                        break
                if same:
                    col = j
                    break
            if col < 0:
                continue  # not a feature of this schema version: skipped
            guess = col + 1
            if kind[col, i] != 0:
                return i + 1  # a feature given twice
            if vf == 0:
                kind[col, i] = -1
                continue
            if vf != fields[col]:
                return i + 1
            kind[col, i] = vf
            vstart[col, i] = vs
            vlen[col, i] = vl
    return 0


@_compiled(_Tuple((_OUT_I64, _OUT_B1))(_U8, _I8, _I64))
def int_column(buf: np.ndarray, kind: np.ndarray, vstart: np.ndarray) -> tuple[np.ndarray, ...]:
    """Integral values and their validity."""
    n = kind.shape[0]
    out = np.zeros(n, np.int64)
    valid = np.zeros(n, np.bool_)
    for i in range(n):
        if kind[i] > 0:
            v, _ = _varint(buf, vstart[i], vstart[i] + 10)
            out[i] = v
            valid[i] = True
    return out, valid


@_compiled(_Tuple((_OUT_I64, _OUT_B1))(_U8, _I8, _I64))
def float_column(buf: np.ndarray, kind: np.ndarray, vstart: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fractional values (their IEEE bits, as int64: view them as float64) and validity."""
    n = kind.shape[0]
    out = np.zeros(n, np.int64)
    valid = np.zeros(n, np.bool_)
    for i in range(n):
        if kind[i] > 0:
            out[i] = np.int64(_le64(buf, vstart[i]))
            valid[i] = True
    return out, valid


@_compiled(_Tuple((_OUT_I64, _OUT_U8, _OUT_B1))(_U8, _I8, _I64, _I64))
def bytes_column(
    buf: np.ndarray, kind: np.ndarray, vstart: np.ndarray, vlen: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Length-delimited values gathered: offsets (n + 1), data, validity."""
    n = kind.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + (vlen[i] if kind[i] > 0 else 0)
    data = np.empty(offsets[n], np.uint8)
    valid = np.zeros(n, np.bool_)
    for i in range(n):
        if kind[i] > 0:
            valid[i] = True
            o = offsets[i]
            s = vstart[i]
            for b in range(vlen[i]):
                data[o + b] = buf[s + b]
    return offsets, data, valid


@_compiled(_Tuple((_OUT_I64, _OUT_I64, _OUT_B1, nbt.int64))(_U8, _I8, _I64, _I64, nbt.int64))
def number_list_column(
    buf: np.ndarray, kind: np.ndarray, vstart: np.ndarray, vlen: np.ndarray, fixed64: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """IntList / FloatList messages (`fixed64`: doubles, as their bits): list offsets, values,
    validity, and 0 or 1 + the first row the reference path must take. Packed and unpacked
    encodings are both read, as protobuf reads them."""
    n = kind.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for rnd in range(2):
        total = offsets[n]
        values = np.empty(total if rnd == 1 else 0, np.int64)
        count = 0
        for i in range(n):
            if rnd == 0:
                offsets[i] = count
            if kind[i] <= 0:
                continue
            q = vstart[i]
            end = q + vlen[i]
            while q < end:
                t, q = _varint(buf, q, end)
                if q < 0 or (t >> 3) != 1:
                    return offsets, values, np.zeros(n, np.bool_), i + 1
                wt = t & 7
                if wt == 2:
                    ln, q = _varint(buf, q, end)
                    if q < 0 or ln > end - q:
                        return offsets, values, np.zeros(n, np.bool_), i + 1
                    stop = q + ln
                    while q < stop:
                        if fixed64:
                            if stop - q < 8:
                                return offsets, values, np.zeros(n, np.bool_), i + 1
                            v = np.int64(_le64(buf, q))
                            q += 8
                        else:
                            v, q = _varint(buf, q, stop)
                            if q < 0:
                                return offsets, values, np.zeros(n, np.bool_), i + 1
                        if rnd == 1:
                            values[count] = v
                        count += 1
                elif (wt == 1 and fixed64) or (wt == 0 and not fixed64):
                    if fixed64:
                        if end - q < 8:
                            return offsets, values, np.zeros(n, np.bool_), i + 1
                        v = np.int64(_le64(buf, q))
                        q += 8
                    else:
                        v, q = _varint(buf, q, end)
                        if q < 0:
                            return offsets, values, np.zeros(n, np.bool_), i + 1
                    if rnd == 1:
                        values[count] = v
                    count += 1
                else:
                    return offsets, values, np.zeros(n, np.bool_), i + 1
        if rnd == 0:
            offsets[n] = count
    valid = np.zeros(n, np.bool_)
    for i in range(n):
        valid[i] = kind[i] > 0
    return offsets, values, valid, 0


@_compiled(_Tuple((_OUT_I64, _OUT_I64, _OUT_U8, _OUT_B1, nbt.int64))(_U8, _I8, _I64, _I64))
def string_list_column(
    buf: np.ndarray, kind: np.ndarray, vstart: np.ndarray, vlen: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """StringList messages: list offsets, string offsets, string data, validity, and 0 or 1 +
    the first row the reference path must take."""
    n = kind.shape[0]
    list_offsets = np.zeros(n + 1, np.int64)
    strings = 0
    nbytes = 0
    for i in range(n):  # count
        list_offsets[i] = strings
        if kind[i] <= 0:
            continue
        q = vstart[i]
        end = q + vlen[i]
        while q < end:
            t, q = _varint(buf, q, end)
            if q < 0 or t != 10:
                return list_offsets, list_offsets, buf[:0].copy(), np.zeros(n, np.bool_), i + 1
            ln, q = _varint(buf, q, end)
            if q < 0 or ln > end - q:
                return list_offsets, list_offsets, buf[:0].copy(), np.zeros(n, np.bool_), i + 1
            q += ln
            strings += 1
            nbytes += ln
    list_offsets[n] = strings
    str_offsets = np.zeros(strings + 1, np.int64)
    data = np.empty(nbytes, np.uint8)
    s = 0
    o = 0
    for i in range(n):  # fill
        if kind[i] <= 0:
            continue
        q = vstart[i]
        end = q + vlen[i]
        while q < end:
            _, q = _varint(buf, q, end)
            ln, q = _varint(buf, q, end)
            for b in range(ln):
                data[o + b] = buf[q + b]
            o += ln
            q += ln
            s += 1
            str_offsets[s] = o
    valid = np.zeros(n, np.bool_)
    for i in range(n):
        valid[i] = kind[i] > 0
    return list_offsets, str_offsets, data, valid, 0


@_compiled(_Tuple((_OUT_U8, _OUT_B1, nbt.int64))(_U8, _I8, _I64, _I64, nbt.int64))
def vector_column(
    buf: np.ndarray, kind: np.ndarray, vstart: np.ndarray, vlen: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Raw vectors of `width` bytes gathered (zeros for a null), validity, and 0 or 1 + the first
    row whose vector has another length."""
    n = kind.shape[0]
    data = np.zeros(n * width, np.uint8)
    valid = np.zeros(n, np.bool_)
    for i in range(n):
        if kind[i] <= 0:
            continue
        if vlen[i] != width:
            return data, valid, i + 1
        valid[i] = True
        s = vstart[i]
        o = i * width
        for b in range(width):
            data[o + b] = buf[s + b]
    return data, valid, 0
