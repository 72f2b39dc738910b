"""Compiled writing of stored records (the wire bytes of `tessera.v1.Record`) straight into the
JSON text of the REST runtime's answers, without protobuf's Python objects or a dict per record.

Two passes over the records' bytes, each one kernel:

- `measure` checks every record and counts the bytes of the answer but its floats' text, and
  collects every float (Fractionals, float lists, vector members widened to float64) in order;
- the caller formats those floats in one msgspec call (the text msgspec gives each float, NaN and
  infinities as null, is the answer's by construction);
- `write` writes the answer, copying each float's text from that call's output.

Anything a record's bytes hold that is not what the server stores (an unknown field, a value field
given twice, a feature name given twice, malformed UTF-8 or wire data, a vector that is not whole
float32s, an expiry outside years 1970-9999) makes `measure` answer FALLBACK, and the caller
uses the reference path (server/record_json.py), which answers (or fails) as it always did.

Each kernel has one explicit signature, compiled (or loaded from Numba's on-disk cache) when this
module is imported, at start-up, never on a request. Tested against their `.py_func` and against
the reference path (tests/unit/server/test_record_json.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from numba import types as nbt

OK, FALLBACK = 0, 1
#: The expiry of a record without one (any other negative expiry falls back).
NO_EXPIRY = -(2**63)
#: Expiries from 1970 up to the end of year 9999 (what datetime formats), in microseconds.
MAX_EXPIRY_US = 253_402_300_800 * 1_000_000

_U8 = nbt.Array(nbt.uint8, 1, "C", readonly=True)
_OUT_U8 = nbt.Array(nbt.uint8, 1, "C")
_I64 = nbt.Array(nbt.int64, 1, "C")
_F64 = nbt.Array(nbt.float64, 1, "C")
_Tuple: Any = nbt.Tuple
F = TypeVar("F", bound=Callable[..., Any])

_QUOTE, _BACKSLASH, _COMMA, _COLON = 34, 92, 44, 58
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 123, 125, 91, 93
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
#: JSON's short escapes (msgspec's): \b \t \n \f \r; other control characters are \u00XX.
_SHORT = np.zeros(32, np.uint8)
for _c, _s in ((8, "b"), (9, "t"), (10, "n"), (12, "f"), (13, "r")):
    _SHORT[_c] = ord(_s)
# The fixed texts of the answers.
_NULL = np.frombuffer(b"null", np.uint8)
_RECORD_HEAD = np.frombuffer(b'{"record":', np.uint8)
_EXPIRES = np.frombuffer(b',"expires_at":', np.uint8)
_RECORDS_HEAD = np.frombuffer(b'{"records":[', np.uint8)
_RECORD_ID = np.frombuffer(b'{"record_id":', np.uint8)
_RECORD_KEY = np.frombuffer(b',"record":', np.uint8)
_MISSING = np.frombuffer(b'],"missing":', np.uint8)


def _compiled(signature: Any) -> Callable[[F], F]:
    return cast(Callable[[F], F], numba.njit(signature, cache=True, nogil=True))


@numba.njit(cache=True, nogil=True, inline="always")
def _varint(buf: Any, p: int, end: int) -> tuple[Any, int]:
    """(value as uint64, position after it); position -1 when malformed or truncated."""
    if p < end and buf[p] < 0x80:  # the common case: one byte
        return np.uint64(buf[p]), p + 1
    result = np.uint64(0)
    shift = np.uint64(0)
    while p < end:
        b = buf[p]
        p += 1
        if shift < np.uint64(64):
            result |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += np.uint64(7)
        if shift >= np.uint64(70):
            return np.uint64(0), -1
    return np.uint64(0), -1


@numba.njit(cache=True, nogil=True, inline="always")
def _i64(value: Any) -> Any:
    """An int64 (a uint64 read from the wire wraps, as protobuf reads an int64)."""
    return np.int64(value)


@numba.njit(cache=True, nogil=True, inline="always")
def _put(out: np.ndarray, o: int, text: np.ndarray, write: bool) -> int:
    if write:
        out[o : o + text.shape[0]] = text
    end: int = o + text.shape[0]
    return end


@numba.njit(cache=True, nogil=True, inline="always")
def _byte(out: np.ndarray, o: int, b: int, write: bool) -> int:
    if write:
        out[o] = b
    return o + 1


@numba.njit(cache=True, nogil=True)
def _decimal(out: np.ndarray, o: int, value: int, write: bool) -> int:
    """`str(value)` of an int64 (what msgspec writes for an int)."""
    neg = value < 0
    u = np.uint64(-(value + 1)) + np.uint64(1) if neg else np.uint64(value)
    n = 1
    v = u // np.uint64(10)
    while v:
        n += 1
        v //= np.uint64(10)
    if neg:
        o = _byte(out, o, 45, write)  # '-'
    if write:
        q = o + n - 1
        for _ in range(n):
            out[q] = np.uint8(48 + u % np.uint64(10))
            u //= np.uint64(10)
            q -= 1
    return o + n


@numba.njit(cache=True, nogil=True)
def _string(buf: Any, a: int, b: int, out: np.ndarray, o: int, write: bool) -> int:
    """buf[a:b] (UTF-8) as a JSON string, escaped as msgspec escapes it (`"`, `\\`, and control
    characters; everything else as is); -1 when buf[a:b] is not well-formed UTF-8 (no overlong
    forms, no surrogates, nothing past U+10FFFF: what protobuf and Python accept)."""
    o = _byte(out, o, _QUOTE, write)
    p = a
    while p < b:
        c = buf[p]
        if c >= 0x80:
            lo, hi = 0x80, 0xBF
            if 0xC2 <= c <= 0xDF:
                n = 1
            elif c == 0xE0:
                n, lo = 2, 0xA0
            elif c == 0xED:
                n, hi = 2, 0x9F
            elif 0xE1 <= c <= 0xEF:
                n = 2
            elif c == 0xF0:
                n, lo = 3, 0x90
            elif c == 0xF4:
                n, hi = 3, 0x8F
            elif 0xF1 <= c <= 0xF3:
                n = 3
            else:
                return -1
            if b - p <= n or not lo <= buf[p + 1] <= hi:
                return -1
            for q in range(p + 2, p + n + 1):
                if not 0x80 <= buf[q] <= 0xBF:
                    return -1
            if write:
                out[o : o + n + 1] = buf[p : p + n + 1]
            o += n + 1
            p += n + 1
            continue
        if (c == _QUOTE) | (c == _BACKSLASH):
            o = _byte(out, o, _BACKSLASH, write)
            o = _byte(out, o, c, write)
        elif c < 0x20:
            o = _byte(out, o, _BACKSLASH, write)
            if _SHORT[c]:
                o = _byte(out, o, _SHORT[c], write)
            else:
                if write:
                    out[o] = 117  # u
                    out[o + 1] = out[o + 2] = 48
                    out[o + 3] = _HEX[c >> 4]
                    out[o + 4] = _HEX[c & 15]
                o += 5
        else:
            o = _byte(out, o, c, write)
        p += 1
    return _byte(out, o, _QUOTE, write)


@numba.njit(cache=True, nogil=True)
def _float(value: float, out: np.ndarray, o: int, write: bool, ftext: Any, fp: int,
           floats: np.ndarray, nf: int) -> tuple[int, int, int]:
    """One float: counted and collected (measure), or its text copied from `ftext` at `fp`
    (write: msgspec's list of every float, read in order); (o, fp, nf)."""
    if not write:
        floats[nf] = value
        return o, fp, nf + 1
    while ftext[fp] != _COMMA and ftext[fp] != _RBRACKET:
        out[o] = ftext[fp]
        o += 1
        fp += 1
    return o, fp + 1, nf + 1


@numba.njit(cache=True, nogil=True)
def _name_hash(buf: Any, a: int, b: int) -> np.uint64:
    h = np.uint64(0xCBF29CE484222325)  # FNV-1a
    for p in range(a, b):
        h = (h ^ np.uint64(buf[p])) * np.uint64(0x100000001B3)
    return h ^ np.uint64(b - a)


@numba.njit(cache=True, nogil=True)
def _record(buf: Any, s: int, e: int, out: np.ndarray, o: int, write: bool, ftext: Any,
            fp: int, floats: np.ndarray, nf: int, hashes: np.ndarray, bits: np.ndarray
            ) -> tuple[int, int, int]:
    """The record at buf[s:e] as a JSON object {name: value} in the order stored (features
    without a value left out); (o, fp, nf), o = -1 when the record needs the reference path."""
    o = _byte(out, o, _LBRACE, write)
    as_f64 = bits.view(np.float64)
    as_f32 = bits.view(np.float32)
    count = 0
    p = s
    while p < e:
        t, p = _varint(buf, p, e)
        if p < 0 or t != np.uint64(10):  # Record.features: field 1, length-delimited
            return -1, fp, nf
        ln, p = _varint(buf, p, e)
        if p < 0 or ln > np.uint64(e - p):
            return -1, fp, nf
        q, fe = p, p + _i64(ln)
        p = fe
        name_a = name_b = q
        has_name = False
        field = 0
        va = vb = 0
        while q < fe:
            t, q = _varint(buf, q, fe)
            if q < 0:
                return -1, fp, nf
            f, wt = _i64(t >> np.uint64(3)), _i64(t & np.uint64(7))
            if f < 1 or f > 8 or (f == 1 and has_name) or (f > 1 and field):
                return -1, fp, nf
            if f == 2:
                if wt != 0:
                    return -1, fp, nf
                a = q
                _, q = _varint(buf, q, fe)
                if q < 0:
                    return -1, fp, nf
            elif f == 3:
                if wt != 1 or fe - q < 8:
                    return -1, fp, nf
                a = q
                q += 8
            else:
                if wt != 2:
                    return -1, fp, nf
                ln, q = _varint(buf, q, fe)
                if q < 0 or ln > np.uint64(fe - q):
                    return -1, fp, nf
                a = q
                q += _i64(ln)
            if f == 1:
                name_a, name_b, has_name = a, q, True
            else:
                va, vb, field = a, q, f
        if field == 0:  # no value (an aggregation without events): left out
            continue
        h = _name_hash(buf, name_a, name_b)
        if count == hashes.shape[0]:
            return -1, fp, nf
        for k in range(count):
            if hashes[k] == h:  # a name given twice (or a collision): the reference decides
                return -1, fp, nf
        hashes[count] = h
        if count:
            o = _byte(out, o, _COMMA, write)
        count += 1
        o = _string(buf, name_a, name_b, out, o, write)
        if o < 0:
            return -1, fp, nf
        o = _byte(out, o, _COLON, write)
        if field == 2:
            v, _ = _varint(buf, va, vb)
            o = _decimal(out, o, _i64(v), write)
        elif field == 3:
            out_bits = np.uint64(0)
            for k in range(8):
                out_bits |= np.uint64(buf[va + k]) << np.uint64(8 * k)
            bits[0] = out_bits
            o, fp, nf = _float(as_f64[0], out, o, write, ftext, fp, floats, nf)
        elif field == 4:
            o = _string(buf, va, vb, out, o, write)
            if o < 0:
                return -1, fp, nf
        elif field == 8:
            if (vb - va) % 4:
                return -1, fp, nf
            o = _byte(out, o, _LBRACKET, write)
            for k in range(va, vb, 4):
                if k > va:
                    o = _byte(out, o, _COMMA, write)
                bits[0] = np.uint64(0)
                word = np.uint64(0)
                for j in range(4):
                    word |= np.uint64(buf[k + j]) << np.uint64(8 * j)
                bits[0] = word
                o, fp, nf = _float(np.float64(as_f32[0]), out, o, write, ftext, fp, floats, nf)
            o = _byte(out, o, _RBRACKET, write)
        else:
            o, fp, nf = _list(buf, va, vb, field, out, o, write, ftext, fp, floats, nf, bits)
            if o < 0:
                return -1, fp, nf
    return _byte(out, o, _RBRACE, write), fp, nf


@numba.njit(cache=True, nogil=True)
def _list(buf: Any, a: int, b: int, field: int, out: np.ndarray, o: int, write: bool,
          ftext: Any, fp: int, floats: np.ndarray, nf: int, bits: np.ndarray
          ) -> tuple[int, int, int]:
    """An IntList (5), FloatList (6) or StringList (7) message at buf[a:b] as a JSON array
    (packed or not, in several runs or one, as protobuf reads them)."""
    as_f64 = bits.view(np.float64)
    o = _byte(out, o, _LBRACKET, write)
    first = True
    q = a
    while q < b:
        t, q = _varint(buf, q, b)
        if q < 0 or (t >> np.uint64(3)) != np.uint64(1):
            return -1, fp, nf
        wt = _i64(t & np.uint64(7))
        stop = q
        if wt == 2:
            ln, q = _varint(buf, q, b)
            if q < 0 or ln > np.uint64(b - q):
                return -1, fp, nf
            stop = q + _i64(ln)
        if field == 7:
            if wt != 2:
                return -1, fp, nf
            if not first:
                o = _byte(out, o, _COMMA, write)
            first = False
            o = _string(buf, q, stop, out, o, write)
            if o < 0:
                return -1, fp, nf
            q = stop
            continue
        if wt == 2:  # a packed run (possibly empty)
            if field == 6 and (stop - q) % 8:
                return -1, fp, nf
            if q == stop:
                continue
        elif field == 5 and wt == 0:
            stop = -1  # one varint
        elif field == 6 and wt == 1:
            if b - q < 8:
                return -1, fp, nf
            stop = q + 8
        else:
            return -1, fp, nf
        while True:
            if not first:
                o = _byte(out, o, _COMMA, write)
            first = False
            if field == 5:
                v, q = _varint(buf, q, b if stop < 0 else stop)
                if q < 0:
                    return -1, fp, nf
                o = _decimal(out, o, _i64(v), write)
            else:
                word = np.uint64(0)
                for k in range(8):
                    word |= np.uint64(buf[q + k]) << np.uint64(8 * k)
                bits[0] = word
                o, fp, nf = _float(as_f64[0], out, o, write, ftext, fp, floats, nf)
                q += 8
            if stop < 0 or q >= stop:
                break
    return _byte(out, o, _RBRACKET, write), fp, nf


@numba.njit(cache=True, nogil=True, inline="always")
def _two(out: np.ndarray, o: int, v: int, write: bool) -> int:
    if write:
        out[o] = 48 + v // 10
        out[o + 1] = 48 + v % 10
    return o + 2


@numba.njit(cache=True, nogil=True)
def _iso(us: int, out: np.ndarray, o: int, write: bool) -> int:
    """eventtime.to_iso(us) as a JSON string ("YYYY-MM-DDTHH:MM:SS[.ffffff]Z"), or null for
    NO_EXPIRY; -1 outside the years datetime formats (the reference path decides)."""
    if us == NO_EXPIRY:
        return _put(out, o, _NULL, write)
    if us < 0 or us >= MAX_EXPIRY_US:
        return -1
    seconds, micros = us // 1_000_000, us % 1_000_000
    days, sod = seconds // 86_400, seconds % 86_400
    # Civil date of a day count (H. Hinnant's days_from_civil, inverted; days >= 0 here).
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    o = _byte(out, o, _QUOTE, write)
    o = _two(out, o, year // 100, write)
    o = _two(out, o, year % 100, write)
    o = _byte(out, o, 45, write)
    o = _two(out, o, month, write)
    o = _byte(out, o, 45, write)
    o = _two(out, o, day, write)
    o = _byte(out, o, 84, write)  # T
    o = _two(out, o, sod // 3600, write)
    o = _byte(out, o, _COLON, write)
    o = _two(out, o, sod // 60 % 60, write)
    o = _byte(out, o, _COLON, write)
    o = _two(out, o, sod % 60, write)
    if micros:
        o = _byte(out, o, 46, write)  # .
        o = _two(out, o, micros // 10_000, write)
        o = _two(out, o, micros // 100 % 100, write)
        o = _two(out, o, micros % 100, write)
    o = _byte(out, o, 90, write)  # Z
    return _byte(out, o, _QUOTE, write)


@numba.njit(cache=True, nogil=True)
def _token(text: Any, tp: int, out: np.ndarray, o: int) -> tuple[int, int]:
    """Copy the JSON string at text[tp] (msgspec's encoding of a list of strings) to out;
    (o, position after it and its separator)."""
    out[o] = text[tp]
    o += 1
    tp += 1
    while True:
        c = text[tp]
        out[o] = c
        o += 1
        tp += 1
        if c == _BACKSLASH:
            out[o] = text[tp]
            o += 1
            tp += 1
        elif c == _QUOTE:
            return o, tp + 1


@numba.njit(cache=True, nogil=True)
def _answer(buf: Any, offsets: np.ndarray, expires: np.ndarray, batch: bool, out: np.ndarray,
            write: bool, ftext: Any, floats: np.ndarray, ids: Any, missing: Any
            ) -> tuple[int, int]:
    """The whole answer (its length, without the floats', record ids' and missing ids' texts,
    when measuring); (o, nf), o = -1 for the reference path."""
    n = offsets.shape[0] - 1
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[i + 1] - offsets[i])
    hashes = np.empty(longest // 2 + 1, np.uint64)
    bits = np.zeros(1, np.uint64)
    o = nf = 0
    fp = 1  # past the "[" of the floats' list
    tp = 1
    if batch:
        o = _put(out, o, _RECORDS_HEAD, write)
    for i in range(n):
        if batch:
            if i:
                o = _byte(out, o, _COMMA, write)
            o = _put(out, o, _RECORD_ID, write)
            if write:
                o, tp = _token(ids, tp, out, o)
            o = _put(out, o, _RECORD_KEY, write)
        else:
            o = _put(out, o, _RECORD_HEAD, write)
        o, fp, nf = _record(buf, offsets[i], offsets[i + 1], out, o, write, ftext, fp,
                            floats, nf, hashes, bits)
        if o < 0:
            return -1, nf
        o = _put(out, o, _EXPIRES, write)
        o = _iso(expires[i], out, o, write)
        if o < 0:
            return -1, nf
        o = _byte(out, o, _RBRACE, write)
    if batch:
        o = _put(out, o, _MISSING, write)
        o = _put(out, o, missing, write)
        o = _byte(out, o, _RBRACE, write)
    elif n != 1:
        return -1, nf
    return o, nf


_NO_U8 = np.zeros(0, np.uint8)
_NO_F64 = np.zeros(0, np.float64)


@_compiled(_Tuple((nbt.int64, nbt.int64, nbt.int64))(_U8, _I64, _I64, nbt.boolean, _F64))
def measure(buf: np.ndarray, offsets: np.ndarray, expires: np.ndarray, batch: bool,
            floats: np.ndarray) -> tuple[int, int, int]:
    """(status, bytes, floats) of the answer of the records buf[offsets[i]:offsets[i + 1]]
    with expiries `expires` (NO_EXPIRY: none): a batchGet answer up to its missing ids'
    text (`batch`) or a GetRecord answer (one record). `bytes` leaves out the floats' and the
    record ids' texts; the floats are written to `floats[:count]` (room: one per 4 bytes)."""
    o, nf = _answer(buf, offsets, expires, batch, _NO_U8.copy(), False, _NO_U8, floats,
                    _NO_U8, _NO_U8)
    if o < 0:
        return FALLBACK, 0, 0
    return OK, o, nf


@_compiled(_OUT_U8(_U8, _I64, _I64, nbt.boolean, _U8, _U8, _U8, nbt.int64))
def write(buf: np.ndarray, offsets: np.ndarray, expires: np.ndarray, batch: bool,
          ftext: np.ndarray, ids: np.ndarray, missing: np.ndarray, size: int) -> np.ndarray:
    """The answer `measure` measured, `size` bytes: `ftext` is msgspec's JSON of the list of
    floats `measure` collected; for a batch, `ids` its JSON of the list of the records' ids and
    `missing` of the list of the ids not found."""
    out = np.empty(size, np.uint8)
    o, _ = _answer(buf, offsets, expires, batch, out, True, ftext, _NO_F64.copy(), ids,
                   missing)
    if o != size:  # cannot happen after a measure of the same input; never send a short body
        raise ValueError("record_json_kernels.write: the answer's size differs from measure's")
    return out
