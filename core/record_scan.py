"""Compiled validation of a serialized `tessera.v1.Record` against a schema: the common case of
`records.validate_record` without touching protobuf's Python objects (each FeatureValue a Python
proxy costs ~0.4 us to reach; the whole scan of a record's bytes costs about as much as one).

`scan` walks the record's wire bytes once and accepts it only when every feature is known, given
once, carries a value of its schema's own oneof, and passes the checks `validate_record` makes
(finite Fractionals, vector length and finiteness, distinct set members); it also locates the
record identifier, the event time and the values the schema's aggregations read. Anything else
(a value to normalize, any error, an unusual encoding) returns FALLBACK, and the reference path
decides, with its exact messages. Needs Numba: imported on first use, never by a light client.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

OK, FALLBACK = 0, 1
#: Check flags of a column (combined): a finite scalar, finite list members, distinct members,
#: a vector (length and finiteness).
FINITE, FINITE_LIST, SET, VECTOR = 1, 2, 4, 8
INT_VALUE, FLOAT_VALUE, STRING_VALUE = 2, 3, 4
INT_LIST, FLOAT_LIST, STRING_LIST, VECTOR_VALUE = 5, 6, 7, 8
_MAX_STRING_SET = 64


@numba.njit(cache=True, nogil=True, inline="always")
def _varint(buf: Any, p: int, end: int) -> tuple[Any, int]:
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
def _le(buf: Any, p: int, size: int) -> np.uint64:
    v = np.uint64(0)
    for b in range(size):
        v |= np.uint64(buf[p + b]) << np.uint64(8 * b)
    return v


@numba.njit(cache=True, nogil=True)
def _members(buf: Any, p: int, end: int, field: int, checks: int, strict: bool) -> bool:
    """Whether the members of an IntList/FloatList/StringList message pass `checks` (and, when
    `strict`, whether string members are UTF-8)."""
    # Pass 1: count (and check finiteness); pass 2: collect and compare when a set.
    count = 0
    q = p
    while q < end:
        t, q = _varint(buf, q, end)
        if q < 0 or (t >> 3) != 1:
            return False
        wt = t & 7
        if field == STRING_LIST:
            if wt != 2:
                return False
            ln, q = _varint(buf, q, end)
            if q < 0 or ln > end - q:
                return False
            if strict and not _utf8(buf, q, q + ln):
                return False
            q += ln
            count += 1
        elif wt == 2:  # packed
            ln, q = _varint(buf, q, end)
            if q < 0 or ln > end - q:
                return False
            stop = q + ln
            while q < stop:
                if field == FLOAT_LIST:
                    if stop - q < 8:
                        return False
                    if (checks & FINITE_LIST) and (_le(buf, q, 8) >> np.uint64(52)) & np.uint64(
                            0x7FF) == np.uint64(0x7FF):
                        return False
                    q += 8
                else:
                    _, q = _varint(buf, q, stop)
                    if q < 0:
                        return False
                count += 1
        elif field == FLOAT_LIST and wt == 1:
            if end - q < 8:
                return False
            if (checks & FINITE_LIST) and (_le(buf, q, 8) >> np.uint64(52)) & np.uint64(
                    0x7FF) == np.uint64(0x7FF):
                return False
            q += 8
            count += 1
        elif field == INT_LIST and wt == 0:
            _, q = _varint(buf, q, end)
            if q < 0:
                return False
            count += 1
        else:
            return False
    if not (checks & SET) or count < 2:
        return True
    if field == STRING_LIST:
        if count > _MAX_STRING_SET:
            return False  # the reference path compares them
        starts = np.empty(count, np.int64)
        lens = np.empty(count, np.int64)
        q = p
        for m in range(count):
            _, q = _varint(buf, q, end)
            ln, q = _varint(buf, q, end)
            starts[m] = q
            lens[m] = ln
            q += ln
        for a in range(count):
            for b in range(a + 1, count):
                if lens[a] == lens[b]:
                    same = True
                    for c in range(lens[a]):
                        if buf[starts[a] + c] != buf[starts[b] + c]:
                            same = False
                            break
                    if same:
                        return False
        return True
    ints = np.empty(count, np.int64)
    floats = np.empty(count, np.float64)
    m = 0
    q = p
    while q < end:
        t, q = _varint(buf, q, end)
        wt = t & 7
        stop = end
        if wt == 2:
            ln, q = _varint(buf, q, end)
            stop = q + ln
        else:
            stop = q + 1  # one member
        while q < stop:
            if field == FLOAT_LIST:
                floats[m] = np.array([_le(buf, q, 8)]).view(np.float64)[0]
                q += 8
            else:
                v, q = _varint(buf, q, end)
                ints[m] = v
            m += 1
    if field == FLOAT_LIST:
        floats.sort()  # -0.0 == 0.0: one member, as in a Python set
        for a in range(1, count):
            if floats[a] == floats[a - 1]:
                return False
    else:
        ints.sort()
        for a in range(1, count):
            if ints[a] == ints[a - 1]:
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _utf8(buf: Any, p: int, end: int) -> bool:
    """Whether buf[p:end] is well-formed UTF-8, as protobuf and Python's decoder require it (no
    overlong forms, no surrogates, nothing past U+10FFFF)."""
    while p < end:
        b = buf[p]
        if b < 0x80:
            p += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= b <= 0xDF:
            n = 1
        elif b == 0xE0:
            n, lo = 2, 0xA0
        elif b == 0xED:
            n, hi = 2, 0x9F
        elif 0xE1 <= b <= 0xEF:
            n = 2
        elif b == 0xF0:
            n, lo = 3, 0x90
        elif b == 0xF4:
            n, hi = 3, 0x8F
        elif 0xF1 <= b <= 0xF3:
            n = 3
        else:
            return False
        if end - p <= n or not lo <= buf[p + 1] <= hi:
            return False
        for q in range(p + 2, p + n + 1):
            if not 0x80 <= buf[q] <= 0xBF:
                return False
        p += n + 1
    return True


@numba.njit(cache=True, nogil=True)
def _scan_record(
    buf: Any, start: int, end: int, names: np.ndarray, name_offsets: np.ndarray,
    fields: np.ndarray, checks: np.ndarray, vector_bytes: np.ndarray, id_col: int, et_col: int,
    values: np.ndarray, seen: np.ndarray, strict: bool,
) -> tuple[int, int, int, int, int, float]:
    """`scan` of the record at buf[start:end] (positions are buf's). `strict`: the bytes were
    not parsed by protobuf first, so also check what its parser would (the lists' wire format,
    UTF-8 strings)."""
    k = fields.shape[0]
    seen[:] = 0
    keep = values.shape[0] == k
    id_a = id_b = et_a = et_b = 0
    et_s = 0.0
    p = start
    guess = 0
    while p < end:
        tag, p = _varint(buf, p, end)
        if p < 0 or tag != 10:
            return FALLBACK, 0, 0, 0, 0, 0.0
        ln, p = _varint(buf, p, end)
        if p < 0 or ln > end - p:
            return FALLBACK, 0, 0, 0, 0, 0.0
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
                return FALLBACK, 0, 0, 0, 0, 0.0
            fnum = t >> 3
            wt = t & 7
            if fnum == 1 and wt == 2 and name_s < 0:
                ln2, q = _varint(buf, q, fv_end)
                if q < 0 or ln2 > fv_end - q:
                    return FALLBACK, 0, 0, 0, 0, 0.0
                name_s = q
                name_l = ln2
                q += ln2
            elif vf != 0:
                return FALLBACK, 0, 0, 0, 0, 0.0
            elif fnum == INT_VALUE and wt == 0:
                vs = q
                _, q = _varint(buf, q, fv_end)
                if q < 0:
                    return FALLBACK, 0, 0, 0, 0, 0.0
                vl = q - vs
                vf = fnum
            elif fnum == FLOAT_VALUE and wt == 1:
                if fv_end - q < 8:
                    return FALLBACK, 0, 0, 0, 0, 0.0
                vs = q
                vl = 8
                q += 8
                vf = fnum
            elif STRING_VALUE <= fnum <= VECTOR_VALUE and wt == 2:
                ln2, q = _varint(buf, q, fv_end)
                if q < 0 or ln2 > fv_end - q:
                    return FALLBACK, 0, 0, 0, 0, 0.0
                vs = q
                vl = ln2
                q += ln2
                vf = fnum
            else:
                return FALLBACK, 0, 0, 0, 0, 0.0
        p = fv_end
        if name_s < 0 or vf == 0:
            return FALLBACK, 0, 0, 0, 0, 0.0
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
        if col < 0 or seen[col] or vf != fields[col]:
            return FALLBACK, 0, 0, 0, 0, 0.0
        seen[col] = 1
        guess = col + 1
        c = checks[col]
        ival: Any = 0
        if vf == INT_VALUE:
            ival, _ = _varint(buf, vs, vs + vl)
        elif vf == FLOAT_VALUE:
            ival = np.int64(_le(buf, vs, 8))
            if (c & FINITE) and (np.uint64(ival) >> np.uint64(52)) & np.uint64(
                    0x7FF) == np.uint64(0x7FF):
                return FALLBACK, 0, 0, 0, 0, 0.0
        elif vf == VECTOR_VALUE:
            if vl != vector_bytes[col]:
                return FALLBACK, 0, 0, 0, 0, 0.0
            for b in range(vs, vs + vl, 4):
                if (_le(buf, b, 4) >> np.uint64(23)) & np.uint64(0xFF) == np.uint64(0xFF):
                    return FALLBACK, 0, 0, 0, 0, 0.0
        elif vf == STRING_VALUE:
            if strict and not _utf8(buf, vs, vs + vl):
                return FALLBACK, 0, 0, 0, 0, 0.0
        elif (c != 0 or strict) and not _members(buf, vs, vs + vl, vf, c, strict):
            return FALLBACK, 0, 0, 0, 0, 0.0
        if keep:
            values[col, 0] = ival if vf != STRING_VALUE else vs
            values[col, 1] = vl
            values[col, 2] = 1
        if col == id_col:
            if vf == INT_VALUE:
                id_a = ival
            else:
                id_a = vs
                id_b = vl
        elif col == et_col:
            if vf == FLOAT_VALUE:
                et_s = np.array([np.uint64(ival)]).view(np.float64)[0]
            else:
                et_a = vs
                et_b = vl
    if not seen[id_col] or not seen[et_col]:
        return FALLBACK, 0, 0, 0, 0, 0.0
    return OK, id_a, id_b, et_a, et_b, et_s


@numba.njit(cache=True, nogil=True)
def scan(
    buf: Any, names: np.ndarray, name_offsets: np.ndarray, fields: np.ndarray,
    checks: np.ndarray, vector_bytes: np.ndarray, id_col: int, et_col: int,
    values: np.ndarray,
) -> tuple[int, int, int, int, int, float]:
    """(status, identifier a, b, event time a, b, event time seconds): an Integral identifier is
    a = its value; a String one and an ISO event time are buf[a:a + b]. `values` (one row per
    column, or none) receives each given column's value: (an Integral, a Fractional's bits or a
    String's start; the value's length; 1). `buf` is a record protobuf has parsed."""
    seen = np.zeros(fields.shape[0], np.uint8)
    return _scan_record(buf, 0, len(buf), names, name_offsets, fields, checks, vector_bytes,
                        id_col, et_col, values, seen, False)


# --- a whole PutRecordsRequest, from its bytes ---------------------------------------------------
# PutRecordsRequest: 1 feature_group_name (string), 2 records (Record), 3 ttl_s (optional
# double), 4 sources (repeated string).
_NAME_TAG, _RECORD_TAG, _TTL_TAG, _SOURCE_TAG = 10, 18, 25, 34
_EMPTY = np.zeros(0, np.int64)


@numba.njit(cache=True, nogil=True)
def scan_request(buf: Any) -> tuple[int, int, int, int, float, np.ndarray, np.ndarray,
                                    np.ndarray, np.ndarray]:
    """The top level of a serialized PutRecordsRequest: (status, group name start, its length
    (start -1: absent), ttl given (0/1), ttl_s, records' starts, ends, sources' starts, ends).
    FALLBACK for anything protobuf's parser might read otherwise (an unknown or repeated
    singular field, malformed bytes, a source that is not UTF-8): the caller parses it then."""
    end = len(buf)
    name_s = -1
    name_l = 0
    has_ttl = 0
    ttl = 0.0
    n_rec = 0
    n_src = 0
    p = 0
    while p < end:
        tag, p = _varint(buf, p, end)
        if p < 0:
            return FALLBACK, 0, 0, 0, 0.0, _EMPTY, _EMPTY, _EMPTY, _EMPTY
        if tag == _TTL_TAG:
            if has_ttl or end - p < 8:
                return FALLBACK, 0, 0, 0, 0.0, _EMPTY, _EMPTY, _EMPTY, _EMPTY
            has_ttl = 1
            ttl = np.array([_le(buf, p, 8)]).view(np.float64)[0]
            p += 8
            continue
        if tag != _NAME_TAG and tag != _RECORD_TAG and tag != _SOURCE_TAG:
            return FALLBACK, 0, 0, 0, 0.0, _EMPTY, _EMPTY, _EMPTY, _EMPTY
        ln, p = _varint(buf, p, end)
        if p < 0 or ln > end - p:
            return FALLBACK, 0, 0, 0, 0.0, _EMPTY, _EMPTY, _EMPTY, _EMPTY
        if tag == _NAME_TAG:
            if name_s >= 0 or not _utf8(buf, p, p + ln):
                return FALLBACK, 0, 0, 0, 0.0, _EMPTY, _EMPTY, _EMPTY, _EMPTY
            name_s = p
            name_l = ln
        elif tag == _RECORD_TAG:
            n_rec += 1
        elif not _utf8(buf, p, p + ln):
            return FALLBACK, 0, 0, 0, 0.0, _EMPTY, _EMPTY, _EMPTY, _EMPTY
        else:
            n_src += 1
        p += ln
    rec_starts = np.empty(n_rec, np.int64)
    rec_ends = np.empty(n_rec, np.int64)
    src_starts = np.empty(n_src, np.int64)
    src_ends = np.empty(n_src, np.int64)
    r = s = 0
    p = 0
    while p < end:
        tag, p = _varint(buf, p, end)
        if tag == _TTL_TAG:
            p += 8
            continue
        ln, p = _varint(buf, p, end)
        if tag == _RECORD_TAG:
            rec_starts[r] = p
            rec_ends[r] = p + ln
            r += 1
        elif tag == _SOURCE_TAG:
            src_starts[s] = p
            src_ends[s] = p + ln
            s += 1
        p += ln
    return OK, name_s, name_l, has_ttl, ttl, rec_starts, rec_ends, src_starts, src_ends


@numba.njit(cache=True, nogil=True)
def scan_records(
    buf: Any, starts: np.ndarray, ends: np.ndarray, names: np.ndarray, name_offsets: np.ndarray,
    fields: np.ndarray, checks: np.ndarray, vector_bytes: np.ndarray, id_col: int, et_col: int,
    et_is_float: bool, max_record_bytes: int, max_id_bytes: int, max_event_time_s: float,
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`scan` of every record of a request (`scan_request`'s starts and ends), strictly (the
    bytes were not parsed by protobuf), with the checks `validate_record` makes after it: size,
    identifier length, a Fractional event time's range. (status, index of the first record
    that is not the common case, identifiers' a, b, event times in microseconds (Fractional
    event times) or ISO strings' starts and lengths)."""
    n = starts.shape[0]
    k = fields.shape[0]
    id_a = np.empty(n, np.int64)
    id_b = np.empty(n, np.int64)
    et_us = np.zeros(n, np.int64)
    et_a = np.zeros(n, np.int64)
    et_b = np.zeros(n, np.int64)
    seen = np.zeros(k, np.uint8)
    values = np.zeros((0, 3), np.int64)
    for i in range(n):
        status, a, b, ea, eb, es = _scan_record(
            buf, starts[i], ends[i], names, name_offsets, fields, checks, vector_bytes, id_col,
            et_col, values, seen, True)
        if status != OK or ends[i] - starts[i] > max_record_bytes:
            return FALLBACK, i, id_a, id_b, et_us, et_a, et_b
        if fields[id_col] == STRING_VALUE and (b == 0 or b > max_id_bytes):
            return FALLBACK, i, id_a, id_b, et_us, et_a, et_b
        if et_is_float:
            if not (np.isfinite(es) and 0.0 <= es < max_event_time_s):
                return FALLBACK, i, id_a, id_b, et_us, et_a, et_b
            et_us[i] = np.int64(np.rint(es * 1e6))
        id_a[i] = a
        id_b[i] = b
        et_a[i] = ea
        et_b[i] = eb
    return OK, n, id_a, id_b, et_us, et_a, et_b


def warm_up() -> None:
    """Compile (or load from Numba's cache) `scan`, `scan_request` and `scan_records` for the
    arguments `records.py` and the PutRecords path pass."""
    names = np.frombuffer(b"ab", np.uint8)
    offsets = np.array([0, 1, 2], np.int64)
    fields = np.array([STRING_VALUE, FLOAT_VALUE], np.int8)
    checks = np.array([0, FINITE], np.int8)
    vector_bytes = np.zeros(2, np.int64)
    record = b"\x0a\x06\x0a\x01a\x22\x01x\x0a\x0c\x0a\x01b\x19" + b"\0" * 8
    for values in (np.zeros((0, 3), np.int64), np.zeros((2, 3), np.int64)):
        if scan(record, names, offsets, fields, checks, vector_bytes, 0, 1, values)[0] != OK:
            raise RuntimeError("the record scanner rejects a valid record")
    request = (b"\x0a\x01g\x12" + bytes((len(record),)) + record + b"\x19" + b"\0" * 8
               + b"\x22\x01s")
    top = scan_request(request)
    if top[0] != OK or top[5].shape[0] != 1 or top[7].shape[0] != 1:
        raise RuntimeError("the request scanner rejects a valid request")
    for et_is_float in (True, False):
        if scan_records(request, top[5], top[6], names, offsets, fields, checks, vector_bytes,
                        0, 1, et_is_float, 1 << 20, 2048, 1e12)[0] != OK:
            raise RuntimeError("the request scanner rejects a valid record")
