"""The aggregation inputs of many records at once, read from their wire bytes by one compiled
pass: what `inputs.aggregation_input_of_values` gives per record, as `AggregateColumns` (for a
batch of puts: a PutRecords request, a Kafka poll), with no Python per record but the key texts.

The records are `tessera.v1.Record` messages that passed validation: each feature once, each
value in its schema's form (an Integral source or key as int_value, a Fractional source as
float_value, a String key as string_value). The kernel lives here, not in kernels.py, and calls
nothing of another file: Numba's on-disk cache checks only the kernel's own source file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation._arrays import ro_i64
from tessera.core.aggregation._jit import I64_1, U8_1, kernel
from tessera.core.aggregation.inputs import AggregateColumns
from tessera.core.aggregation.plan import AggregationPlan

U8s = npt.NDArray[np.uint8]
I64s = npt.NDArray[np.int64]
F64s = npt.NDArray[np.float64]

# What scan_inputs found of a feature in a record (its `kind` output).
ABSENT, INT, FLOAT, STRING, OTHER = 0, 1, 2, 3, 4
SCAN_SIGNATURE = (U8_1, I64_1, U8_1, I64_1)


@kernel
def _varint(buf: U8s, p: int, end: int) -> tuple[int, int]:
    """(value, position after it); position -1 when the varint runs past `end`."""
    result = 0
    shift = 0
    while p < end:
        b = buf[p]
        p += 1
        result |= (int(b) & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += 7
        if shift >= 70:
            return 0, -1
    return 0, -1


@kernel
def _skip(buf: U8s, p: int, end: int, wire: int) -> int:
    """The position after a field of wire type `wire` starting at p (-1: malformed)."""
    if wire == 0:
        return _varint(buf, p, end)[1]
    if wire == 1:
        return p + 8 if p + 8 <= end else -1
    if wire == 5:
        return p + 4 if p + 4 <= end else -1
    if wire == 2:
        n, q = _varint(buf, p, end)
        return q + n if q >= 0 and q + n <= end else -1
    return -1


@kernel
def scan_inputs(
    buf: U8s, off: I64s, names: U8s, name_off: I64s
) -> tuple[I64s, I64s, F64s, I64s, I64s, int]:
    """For each record i (bytes off[i]:off[i+1]) and feature j (name bytes
    names[name_off[j]:name_off[j+1]]): (kind (n, f) ABSENT/INT/FLOAT/STRING/OTHER, the
    int_value (n, f), the float_value (n, f), a string_value's start and length (n, f), the
    first malformed record or -1). A feature given twice: its last entry."""
    n = off.shape[0] - 1
    f = name_off.shape[0] - 1
    kind = np.zeros((n, f), np.int64)
    ints = np.zeros((n, f), np.int64)
    floats = np.zeros((n, f))
    str_a = np.zeros((n, f), np.int64)
    str_b = np.zeros((n, f), np.int64)
    for i in range(n):
        p = off[i]
        end = off[i + 1]
        while p < end:
            tag, p = _varint(buf, p, end)
            if p < 0:
                return kind, ints, floats, str_a, str_b, i
            if tag != 0x0A:  # not Record.features: skip it
                p = _skip(buf, p, end, tag & 7)
                if p < 0:
                    return kind, ints, floats, str_a, str_b, i
                continue
            size, p = _varint(buf, p, end)
            if p < 0 or p + size > end:
                return kind, ints, floats, str_a, str_b, i
            q = p
            stop = p + size
            p = stop
            feature = -1
            k = ABSENT
            iv = 0
            fv = 0.0
            sa = 0
            sb = 0
            while q < stop:
                t, q = _varint(buf, q, stop)
                if q < 0:
                    return kind, ints, floats, str_a, str_b, i
                field = t >> 3
                wire = t & 7
                if field == 1 and wire == 2:  # feature_name
                    ln, q = _varint(buf, q, stop)
                    if q < 0 or q + ln > stop:
                        return kind, ints, floats, str_a, str_b, i
                    feature = -1
                    for j in range(f):
                        a = name_off[j]
                        if name_off[j + 1] - a != ln:
                            continue
                        same = True
                        for x in range(ln):
                            if names[a + x] != buf[q + x]:
                                same = False
                                break
                        if same:
                            feature = j
                            break
                    q += ln
                elif field == 2 and wire == 0:  # int_value
                    v, q = _varint(buf, q, stop)
                    if q < 0:
                        return kind, ints, floats, str_a, str_b, i
                    k = INT
                    iv = v  # the low 64 bits: int64 two's complement, as protobuf reads it
                elif field == 3 and wire == 1:  # float_value
                    if q + 8 > stop:
                        return kind, ints, floats, str_a, str_b, i
                    fv = buf[q : q + 8].view(np.float64)[0]
                    k = FLOAT
                    q += 8
                elif field == 4 and wire == 2:  # string_value
                    ln, q = _varint(buf, q, stop)
                    if q < 0 or q + ln > stop:
                        return kind, ints, floats, str_a, str_b, i
                    k = STRING
                    sa = q
                    sb = ln
                    q += ln
                else:  # another value (a list, a vector) or an unknown field
                    if 5 <= field <= 8:
                        k = OTHER
                    q = _skip(buf, q, stop, wire)
                    if q < 0:
                        return kind, ints, floats, str_a, str_b, i
            if feature >= 0:
                kind[i, feature] = k
                ints[i, feature] = iv
                floats[i, feature] = fv
                str_a[i, feature] = sa
                str_b[i, feature] = sb
    return kind, ints, floats, str_a, str_b, -1


class RecordInputsError(ValueError):
    """A record's bytes are not a `tessera.v1.Record` the scan can read, or a value is not in
    its schema's form: the caller takes the per-record path, which names the problem."""


def aggregate_columns(
    group_name: str,
    plan: AggregationPlan,
    record_ids: Sequence[str],
    payloads: bytes,
    payload_offsets: npt.NDArray[np.int64],
) -> AggregateColumns:
    """The aggregation events of validated records (record i: its identifier `record_ids[i]`,
    its Record bytes payloads[payload_offsets[i]:payload_offsets[i + 1]]), as
    `aggregation_input_of_values` reads each one: a key feature's text is an Integral's
    decimal digits or a String as is (None: null); a source is float64 (NaN: null). Raises
    RecordInputsError for bytes it cannot read or a value of another form."""
    features = sorted(plan.input_features)
    raw = [name.encode() for name in features]
    names = np.frombuffer(b"".join(raw), np.uint8)
    name_off = np.zeros(len(raw) + 1, np.int64)
    np.cumsum([len(r) for r in raw], out=name_off[1:])
    buf = np.frombuffer(payloads, np.uint8)
    kind, ints, floats, str_a, str_b, bad = scan_inputs(
        buf, ro_i64(payload_offsets), names, ro_i64(name_off)
    )
    if bad >= 0:
        raise RecordInputsError(f"record {bad} is not a Record the aggregation scan can read")
    n = len(record_ids)
    if kind.shape[0] != n:
        raise ValueError(f"{n} record ids for {kind.shape[0]} payloads")
    col = {name: j for j, name in enumerate(features)}
    keys: list[Sequence[str | None]] = []
    values: list[F64s] = []
    for stream in plan.streams:
        if stream.key is None:
            keys.append(record_ids)
        else:
            keys.append(_key_texts(stream.key, kind[:, col[stream.key]], ints[:, col[stream.key]],
                                   str_a[:, col[stream.key]], str_b[:, col[stream.key]],
                                   payloads))
        out = np.empty((n, stream.n_sources))
        for c, source in enumerate(stream.sources):
            j = col[source]
            k = kind[:, j]
            if np.any((k != ABSENT) & (k != INT) & (k != FLOAT)):
                raise RecordInputsError(f"source feature '{source}' has a value that is not a "
                                        "number in some record")
            out[:, c] = np.where(k == INT, ints[:, j].astype(np.float64),
                                 np.where(k == FLOAT, floats[:, j], np.nan))
        values.append(out)
    return AggregateColumns(group_name, plan, tuple(keys), tuple(values))


def _key_texts(
    name: str, kind: I64s, ints: I64s, str_a: I64s, str_b: I64s, payloads: bytes
) -> list[str | None]:
    if np.any((kind != ABSENT) & (kind != INT) & (kind != STRING)):
        raise RecordInputsError(f"key feature '{name}' has a value that is neither an "
                                "Integral nor a String in some record")
    out: list[str | None] = [None] * len(kind)
    for i in np.flatnonzero(kind == INT).tolist():
        out[i] = str(int(ints[i]))
    strings = np.flatnonzero(kind == STRING).tolist()
    if strings:
        try:
            for i, a, b in zip(strings, str_a[strings].tolist(), str_b[strings].tolist(),
                               strict=True):
                out[i] = payloads[a : a + b].decode()
        except UnicodeDecodeError as exc:
            raise RecordInputsError(f"key feature '{name}': {exc}") from exc
    return out
