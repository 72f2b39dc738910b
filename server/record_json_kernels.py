"""Compiled writing of stored records (the wire bytes of `tessera.v1.Record`) straight into the
JSON text of the read answers, without protobuf's Python objects or a dict per record. Three
shapes: the REST runtime's GetRecord (GET) and batchGet (BATCH) answers, typed values; and
SageMaker's Record (SAGEMAKER: a list of {FeatureName, ValueAsString | ValueAsStringList}, values
as text, server/sagemaker_values.py).

Two passes over the records' bytes, each one kernel:

- `measure` checks every record and counts the bytes of the answer but its floats' text, and
  collects every float in order (Fractionals, float lists, vector members: widened to float64
  for the REST shapes; for SAGEMAKER the float32 vector members apart);
- the caller formats those floats in one call per kind (REST: msgspec's JSON of the list, NaN
  and infinities as null; SAGEMAKER: Python's repr of the list of floats and NumPy's text of the
  float32 array, what the reference path writes per value): the text is the reference path's
  by construction;
- `write` writes the answer, copying each float's text from those calls' output.

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
#: The answer's shape.
GET, BATCH, SAGEMAKER = 0, 1, 2
#: The expiry of a record without one (any other negative expiry falls back).
NO_EXPIRY = -(2**63)
#: Expiries from 1970 up to the end of year 9999 (what datetime formats), in microseconds.
MAX_EXPIRY_US = 253_402_300_800 * 1_000_000

_U8 = nbt.Array(nbt.uint8, 1, "C", readonly=True)
_OUT_U8 = nbt.Array(nbt.uint8, 1, "C")
_I64 = nbt.Array(nbt.int64, 1, "C")
_F64 = nbt.Array(nbt.float64, 1, "C")
_F32 = nbt.Array(nbt.float32, 1, "C")
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
_SM_NAME = np.frombuffer(b'{"FeatureName":', np.uint8)
_SM_SCALAR = np.frombuffer(b',"ValueAsString":', np.uint8)
_SM_LIST = np.frombuffer(b',"ValueAsStringList":', np.uint8)
# The state of a walk (an int64 array, updated in place): position in the doubles' text, doubles
# seen, position in the float32s' text, float32s seen.
_FP, _NF, _FP32, _NF32 = 0, 1, 2, 3


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
def _float(value: float, out: np.ndarray, o: int, write: bool, sm: bool, text: Any,
           floats: np.ndarray, st: np.ndarray) -> int:
    """One double: collected (measure), or its text copied from `text` (write: the list of
    every double, read in order; SageMaker's quoted, its list separated by ", ")."""
    if not write:
        floats[st[_NF]] = value
        st[_NF] += 1
        return o + 2 if sm else o
    return _copy_token(out, o, sm, text, st, _FP, 2 if sm else 1)


@numba.njit(cache=True, nogil=True)
def _float32(value: Any, out: np.ndarray, o: int, write: bool, sm: bool, text: Any,
             text32: Any, floats: np.ndarray, floats32: np.ndarray, st: np.ndarray) -> int:
    """One vector member: a double for the REST shapes, a float32 (its own text) for SageMaker's."""
    if not sm:
        return _float(np.float64(value), out, o, write, sm, text, floats, st)
    if not write:
        floats32[st[_NF32]] = value
        st[_NF32] += 1
        return o + 2
    return _copy_token(out, o, sm, text32, st, _FP32, 1)


@numba.njit(cache=True, nogil=True)
def _copy_token(out: np.ndarray, o: int, quoted: bool, text: Any, st: np.ndarray, at: int,
                sep: int) -> int:
    """Copy the token at text[st[at]] (up to "," or "]") to out, quoted if `quoted`; move
    st[at] past it and its separator (`sep` bytes)."""
    tp = st[at]
    if quoted:
        out[o] = _QUOTE
        o += 1
    while text[tp] != _COMMA and text[tp] != _RBRACKET:
        out[o] = text[tp]
        o += 1
        tp += 1
    st[at] = tp + sep
    if quoted:
        out[o] = _QUOTE
        o += 1
    return o


@numba.njit(cache=True, nogil=True)
def _name_hash(buf: Any, a: int, b: int) -> np.uint64:
    h = np.uint64(0xCBF29CE484222325)  # FNV-1a
    for p in range(a, b):
        h = (h ^ np.uint64(buf[p])) * np.uint64(0x100000001B3)
    return h ^ np.uint64(b - a)


@numba.njit(cache=True, nogil=True)
def _record(buf: Any, s: int, e: int, out: np.ndarray, o: int, write: bool, sm: bool,
            text: Any, text32: Any, floats: np.ndarray, floats32: np.ndarray, st: np.ndarray,
            hashes: np.ndarray, bits: np.ndarray) -> int:
    """The record at buf[s:e], features in the order stored (those without a value left out):
    a JSON object {name: value}, or SageMaker's list of FeatureValue objects (`sm`); -1 when
    the record needs the reference path."""
    o = _byte(out, o, _LBRACKET if sm else _LBRACE, write)
    as_f64 = bits.view(np.float64)
    as_f32 = bits.view(np.float32)
    count = 0
    p = s
    while p < e:
        t, p = _varint(buf, p, e)
        if p < 0 or t != np.uint64(10):  # Record.features: field 1, length-delimited
            return -1
        ln, p = _varint(buf, p, e)
        if p < 0 or ln > np.uint64(e - p):
            return -1
        q, fe = p, p + _i64(ln)
        p = fe
        name_a = name_b = q
        has_name = False
        field = 0
        va = vb = 0
        while q < fe:
            t, q = _varint(buf, q, fe)
            if q < 0:
                return -1
            f, wt = _i64(t >> np.uint64(3)), _i64(t & np.uint64(7))
            if f < 1 or f > 8 or (f == 1 and has_name) or (f > 1 and field):
                return -1
            if f == 2:
                if wt != 0:
                    return -1
                a = q
                _, q = _varint(buf, q, fe)
                if q < 0:
                    return -1
            elif f == 3:
                if wt != 1 or fe - q < 8:
                    return -1
                a = q
                q += 8
            else:
                if wt != 2:
                    return -1
                ln, q = _varint(buf, q, fe)
                if q < 0 or ln > np.uint64(fe - q):
                    return -1
                a = q
                q += _i64(ln)
            if f == 1:
                name_a, name_b, has_name = a, q, True
            else:
                va, vb, field = a, q, f
        if field == 0:  # no value (an aggregation without events): left out, its name checked
            if _string(buf, name_a, name_b, out, 0, False) < 0:
                return -1
            continue
        h = _name_hash(buf, name_a, name_b)
        if count == hashes.shape[0]:
            return -1
        for k in range(count):
            if hashes[k] == h:  # a name given twice (or a collision): the reference decides
                return -1
        hashes[count] = h
        if count:
            o = _byte(out, o, _COMMA, write)
        count += 1
        if sm:
            o = _put(out, o, _SM_NAME, write)
        o = _string(buf, name_a, name_b, out, o, write)
        if o < 0:
            return -1
        if sm:
            o = _put(out, o, _SM_SCALAR if 2 <= field <= 4 else _SM_LIST, write)
        else:
            o = _byte(out, o, _COLON, write)
        if field == 2:
            v, _ = _varint(buf, va, vb)
            if sm:
                o = _byte(out, o, _QUOTE, write)
            o = _decimal(out, o, _i64(v), write)
            if sm:
                o = _byte(out, o, _QUOTE, write)
        elif field == 3:
            word = np.uint64(0)
            for k in range(8):
                word |= np.uint64(buf[va + k]) << np.uint64(8 * k)
            bits[0] = word
            o = _float(as_f64[0], out, o, write, sm, text, floats, st)
        elif field == 4:
            o = _string(buf, va, vb, out, o, write)
            if o < 0:
                return -1
        elif field == 8:
            if (vb - va) % 4:
                return -1
            o = _byte(out, o, _LBRACKET, write)
            for k in range(va, vb, 4):
                if k > va:
                    o = _byte(out, o, _COMMA, write)
                word = np.uint64(0)
                for j in range(4):
                    word |= np.uint64(buf[k + j]) << np.uint64(8 * j)
                bits[0] = word
                o = _float32(as_f32[0], out, o, write, sm, text, text32, floats, floats32, st)
            o = _byte(out, o, _RBRACKET, write)
        else:
            o = _list(buf, va, vb, field, out, o, write, sm, text, floats, st, bits)
            if o < 0:
                return -1
        if sm:
            o = _byte(out, o, _RBRACE, write)
    return _byte(out, o, _RBRACKET if sm else _RBRACE, write)


@numba.njit(cache=True, nogil=True)
def _list(buf: Any, a: int, b: int, field: int, out: np.ndarray, o: int, write: bool, sm: bool,
          text: Any, floats: np.ndarray, st: np.ndarray, bits: np.ndarray) -> int:
    """An IntList (5), FloatList (6) or StringList (7) message at buf[a:b] as a JSON array
    (packed or not, in several runs or one, as protobuf reads them); members as text (`sm`)."""
    as_f64 = bits.view(np.float64)
    o = _byte(out, o, _LBRACKET, write)
    first = True
    q = a
    while q < b:
        t, q = _varint(buf, q, b)
        if q < 0 or (t >> np.uint64(3)) != np.uint64(1):
            return -1
        wt = _i64(t & np.uint64(7))
        stop = q
        if wt == 2:
            ln, q = _varint(buf, q, b)
            if q < 0 or ln > np.uint64(b - q):
                return -1
            stop = q + _i64(ln)
        if field == 7:
            if wt != 2:
                return -1
            if not first:
                o = _byte(out, o, _COMMA, write)
            first = False
            o = _string(buf, q, stop, out, o, write)
            if o < 0:
                return -1
            q = stop
            continue
        if wt == 2:  # a packed run (possibly empty)
            if field == 6 and (stop - q) % 8:
                return -1
            if q == stop:
                continue
        elif field == 5 and wt == 0:
            stop = -1  # one varint
        elif field == 6 and wt == 1:
            if b - q < 8:
                return -1
            stop = q + 8
        else:
            return -1
        while True:
            if not first:
                o = _byte(out, o, _COMMA, write)
            first = False
            if field == 5:
                v, q = _varint(buf, q, b if stop < 0 else stop)
                if q < 0:
                    return -1
                if sm:
                    o = _byte(out, o, _QUOTE, write)
                o = _decimal(out, o, _i64(v), write)
                if sm:
                    o = _byte(out, o, _QUOTE, write)
            else:
                word = np.uint64(0)
                for k in range(8):
                    word |= np.uint64(buf[q + k]) << np.uint64(8 * k)
                bits[0] = word
                o = _float(as_f64[0], out, o, write, sm, text, floats, st)
                q += 8
            if stop < 0 or q >= stop:
                break
    return _byte(out, o, _RBRACKET, write)


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
def _answer(buf: Any, offsets: np.ndarray, expires: np.ndarray, shape: int, out: np.ndarray,
            write: bool, text: Any, text32: Any, floats: np.ndarray, floats32: np.ndarray,
            ids: Any, missing: Any, st: np.ndarray) -> int:
    """The whole answer (its length without the floats', record ids' and missing ids' texts,
    when measuring); -1 for the reference path."""
    n = offsets.shape[0] - 1
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[i + 1] - offsets[i])
    hashes = np.empty(longest // 2 + 1, np.uint64)
    bits = np.zeros(1, np.uint64)
    sm = shape == SAGEMAKER
    batch = shape == BATCH
    if not batch and n != 1:
        return -1
    st[_FP] = st[_FP32] = 1  # past the "[" of the floats' lists
    st[_NF] = st[_NF32] = 0
    o = 0
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
        elif not sm:
            o = _put(out, o, _RECORD_HEAD, write)
        o = _record(buf, offsets[i], offsets[i + 1], out, o, write, sm, text, text32, floats,
                    floats32, st, hashes, bits)
        if o < 0:
            return -1
        if sm:
            continue
        o = _put(out, o, _EXPIRES, write)
        o = _iso(expires[i], out, o, write)
        if o < 0:
            return -1
        o = _byte(out, o, _RBRACE, write)
    if batch:
        o = _put(out, o, _MISSING, write)
        o = _put(out, o, missing, write)
        o = _byte(out, o, _RBRACE, write)
    return o


_NO_U8 = np.zeros(0, np.uint8)
_NO_F64 = np.zeros(0, np.float64)
_NO_F32 = np.zeros(0, np.float32)


@_compiled(_Tuple((nbt.int64, nbt.int64, nbt.int64, nbt.int64))(
    _U8, _I64, _I64, nbt.int64, _F64, _F32))
def measure(buf: np.ndarray, offsets: np.ndarray, expires: np.ndarray, shape: int,
            floats: np.ndarray, floats32: np.ndarray) -> tuple[int, int, int, int]:
    """(status, bytes, doubles, float32s) of the answer of `shape` for the records
    buf[offsets[i]:offsets[i + 1]] (one for GET and SAGEMAKER) with expiries `expires`
    (NO_EXPIRY: none; unused by SAGEMAKER). `bytes` leaves out the floats' texts and, for a
    batch, the record ids' and the missing ids' texts. The doubles are written to
    `floats[:doubles]`, the float32s (SAGEMAKER's vector members; in `floats` otherwise) to
    `floats32[:float32s]` (room: one per 4 bytes of the records)."""
    st = np.zeros(4, np.int64)
    # `write` is a literal here and in `write`: each kernel gets its own compiled walk with the
    # other's branches folded away (2x faster than one body for both, measured; the price is
    # ~30 s of CPU to compile after an install, then Numba's cache loads them in ~1 s).
    o = _answer(buf, offsets, expires, shape, _NO_U8.copy(), False, _NO_U8, _NO_U8, floats,
                floats32, _NO_U8, _NO_U8, st)
    if o < 0:
        return FALLBACK, 0, 0, 0
    return OK, o, st[_NF], st[_NF32]


@_compiled(_OUT_U8(_U8, _I64, _I64, nbt.int64, _U8, _U8, _U8, _U8, nbt.int64))
def write(buf: np.ndarray, offsets: np.ndarray, expires: np.ndarray, shape: int,
          text: np.ndarray, text32: np.ndarray, ids: np.ndarray, missing: np.ndarray,
          size: int) -> np.ndarray:
    """The answer `measure` measured, `size` bytes: `text` is the list of the doubles it
    collected as text (REST: msgspec's JSON; SAGEMAKER: Python's repr of the list), `text32`
    SAGEMAKER's float32s as text ("[a,b]"); for a batch, `ids` msgspec's JSON of the list of
    the records' ids and `missing` of the list of the ids not found."""
    out = np.empty(size, np.uint8)
    o = _answer(buf, offsets, expires, shape, out, True, text, text32, _NO_F64.copy(),
                _NO_F32.copy(), ids, missing, np.zeros(4, np.int64))
    if o != size:  # cannot happen after a measure of the same input; never send a short body
        raise ValueError("record_json_kernels.write: the answer's size differs from measure's")
    return out
