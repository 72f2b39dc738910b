"""Whole-batch encoding of decoded JSON messages: a poll batch's records validated and encoded in
columns, without a Python loop per feature.

`BatchEncoder.encode` takes the decoded objects of a batch (feature name -> value, as
`decode_json` gives them) and returns, for each, its `ValidatedRecord` or None. It groups the
objects by their key order (a producer writes its objects one way: one group, usually), takes
each group's values out a column at a time (C-level `itemgetter` and `zip`), checks each column's
types and ranges over the whole column, and writes every record's wire bytes in one compiled pass
(`_assemble`, Numba): the bytes `FastEncoder` (encode.py) writes, features in the object's order.

It accepts exactly what `FastEncoder` accepts (scalar features given in their own type, an int
within 2**53 for a Fractional, finite numbers, a record identifier and an event time that pass,
a record within MAX_RECORD_BYTES); for anything else, record by record, it returns None and the
caller takes the per-message path (`FastEncoder`, then `validate_record`), which decides with
PutRecord's exact messages: so a bad record never sinks its batch, and both paths write the same
bytes (the unit tests compare them on random batches). Groups with aggregations, collection
features or an Integral event time are left to the per-message path entirely.

The kernel has one explicit signature, compiled (or loaded from Numba's on-disk cache) on the
first `load()`, at the consumer's start; without Numba, `load()` is False and the consumer
encodes message by message as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from tessera.core import eventtime
from tessera.core.errors import InvalidRequestError
from tessera.core.keys import MAX_RECORD_ID_BYTES
from tessera.core.records import MAX_RECORD_BYTES, ValidatedRecord
from tessera.core.schema import CompiledSchema
from tessera.core.wire import varint

INT, FLOAT, STRING = 1, 2, 3
_KINDS = {"int_value": INT, "float_value": FLOAT, "string_value": STRING}
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_EXACT = 1 << 53
_US = eventtime.US_PER_S
_MAX_EVENT_TIME_S = eventtime.MAX_EVENT_TIME_S

_assemble: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
_tried = False


def load() -> bool:
    """Compile (or load from Numba's cache) the kernel; False without Numba."""
    global _assemble, _tried
    if not _tried:
        _tried = True
        try:
            from tessera.ingest import json_batch_kernel
        except ImportError:
            return False
        _assemble = json_batch_kernel.assemble
    return _assemble is not None


class _Group:
    """How objects with one key order are encoded: the columns kept, in order."""

    def __init__(self, names: tuple[str, ...], kinds: list[int], prefixes: list[bytes],
                 id_col: int, et_col: int) -> None:
        self.names = names
        self.getter: Callable[[Any], Any] = itemgetter(*names)
        self.kinds = np.array(kinds, np.int8)
        self.prefixes = np.frombuffer(b"".join(prefixes), np.uint8)
        self.prefix_offsets = np.zeros(len(prefixes) + 1, np.int64)
        np.cumsum([len(p) for p in prefixes], out=self.prefix_offsets[1:])
        self.id_col = id_col
        self.et_col = et_col


class BatchEncoder:
    """Encodes batches of one schema's records (see the module docstring)."""

    def __init__(self, schema: CompiledSchema, ttl_s: float | None, ignore_unknown: bool) -> None:
        self.schema = schema
        self._ignore_unknown = ignore_unknown
        self._specs: dict[str, tuple[int, bytes]] = {}
        usable = schema.aggregations is None
        for name, spec in schema.features.items():
            kind = _KINDS.get(spec.oneof, 0)
            if spec.type.collection is not None or kind == 0:
                usable = False
            raw = name.encode()
            self._specs[name] = (kind, b"\x0a" + varint(len(raw)) + raw)
        self._id_name = schema.record_identifier.name
        self._et_name = schema.event_time.name
        et_kind = self._specs[self._et_name][0]
        self.usable = usable and et_kind in (FLOAT, STRING)
        ttl = ttl_s if ttl_s is not None else schema.default_ttl_s
        self._ttl_us = round(ttl * _US) if ttl is not None else None
        self._groups: dict[tuple[str, ...], _Group | None] = {}

    def encode(self, objects: Sequence[dict[str, Any]]) -> list[ValidatedRecord | None]:
        """Each object's validated record, or None: take the per-message path for it."""
        out: list[ValidatedRecord | None] = [None] * len(objects)
        for encoded in self.encode_columns(objects):
            for k, i in enumerate(encoded.members.tolist()):
                out[i] = encoded.record(k)
        return out

    def encode_columns(self, objects: Sequence[dict[str, Any]]) -> list[Encoded]:
        """The records this path accepts, in columns, one `Encoded` per key order; an object
        none of them holds takes the per-message path."""
        if not self.usable or not objects or not load():
            return []
        by_order: dict[tuple[str, ...], list[int]] = {}
        for i, obj in enumerate(objects):
            key = tuple(obj)
            members = by_order.get(key)
            if members is None:
                by_order[key] = [i]
            else:
                members.append(i)
        out = []
        for key, members in by_order.items():
            group = self._group(key)
            if group is not None:
                encoded = self._encode_group(group, [objects[i] for i in members], members)
                if encoded is not None:
                    out.append(encoded)
        return out

    def _group(self, key: tuple[str, ...]) -> _Group | None:
        if key in self._groups:
            return self._groups[key]
        group = None
        names = tuple(n for n in key if n in self._specs)
        complete = self._id_name in names and self._et_name in names
        if complete and (self._ignore_unknown or len(names) == len(key)):
            specs = [self._specs[n] for n in names]
            group = _Group(names, [k for k, _ in specs], [p for _, p in specs],
                           names.index(self._id_name), names.index(self._et_name))
        if len(self._groups) < 64:  # a few key orders per topic; never grows without bound
            self._groups[key] = group
        return group

    def _encode_group(self, group: _Group, objects: list[dict[str, Any]], members: list[int]
                      ) -> Encoded | None:
        n, m = len(objects), len(group.names)
        rows = list(map(group.getter, objects))
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if m > 1 else [rows]
        present = np.ones((m, n), np.bool_)
        bad = np.zeros(n, np.bool_)
        values = np.zeros((m, n), np.uint64)
        str_start = np.zeros((m, n), np.int64)
        str_len = np.zeros((m, n), np.int64)
        blobs: list[bytes] = []
        base = 0
        floats: np.ndarray | None = None
        for j, column in enumerate(columns):
            kind = int(group.kinds[j])
            if kind == INT:
                ints, pres, wrong = _ints(column)
                values[j] = ints.view(np.uint64)
            elif kind == FLOAT:
                doubles, pres, wrong = _floats(column)
                values[j] = doubles.view(np.uint64)
                if j == group.et_col:
                    floats = doubles
            else:
                blob, lengths, pres, wrong = _strings(column)
                str_len[j] = lengths
                np.cumsum(lengths[:-1], out=str_start[j, 1:])
                str_start[j] += base
                base += len(blob)
                blobs.append(blob)
            if pres is not None:
                present[j] = pres
            if wrong is not None:
                bad |= wrong
        # The identifier and the event time must be there (the per-message path names them).
        bad |= ~present[group.id_col] | ~present[group.et_col]
        if group.kinds[group.id_col] != INT:
            id_len = str_len[group.id_col]
            bad |= (id_len == 0) | (id_len > MAX_RECORD_ID_BYTES)
        et_us = self._event_times(group, columns[group.et_col], floats, bad)
        strings = b"".join(blobs)
        assemble = _assemble
        if assemble is None:  # load() said otherwise; here for the type checker
            return None
        payloads, offsets = assemble(group.kinds, group.prefixes, group.prefix_offsets, present,
                                     values, np.frombuffer(strings, np.uint8), str_start,
                                     str_len)
        bad |= np.diff(offsets) > MAX_RECORD_BYTES  # the per-message path says "oversized"
        ok = np.flatnonzero(~bad)
        if group.kinds[group.id_col] == INT:  # the identifiers' decimal digits
            id_column = columns[group.id_col]
            digits = [str(id_column[k]) for k in ok.tolist()]
            strings = "".join(digits).encode()
            lengths = np.fromiter(map(len, digits), np.int64, len(digits))
            id_ends = np.cumsum(lengths)
            id_starts = id_ends - lengths
        else:
            id_starts = str_start[group.id_col][ok]
            id_ends = id_starts + str_len[group.id_col][ok]
        return Encoded(np.asarray(members, np.int64)[ok], payloads.tobytes(), offsets[:-1][ok],
                       offsets[1:][ok], strings, id_starts, id_ends, et_us[ok], self._ttl_us)

    def _event_times(self, group: _Group, column: Sequence[Any], floats: np.ndarray | None,
                     bad: np.ndarray) -> np.ndarray:
        if floats is not None:  # Fractional: epoch seconds
            # NaN compares false: refused too (the per-message path names it).
            bad |= ~((floats >= 0.0) & (floats < _MAX_EVENT_TIME_S))
            # round(v * 1e6) as FastEncoder does: the same double product, halves to even
            # (an integral double below 2**63: exact as an int64).
            scaled = np.where(bad, 0.0, floats) * float(_US)
            return np.rint(scaled).astype(np.int64)
        out = np.zeros(len(column), np.int64)
        for k, text in enumerate(column):
            if bad[k]:
                continue
            try:
                out[k] = eventtime.from_iso(text, "event time")
            except InvalidRequestError:
                bad[k] = True
        return out


@dataclass(frozen=True, slots=True)
class Encoded:
    """The records of one key order that the whole-batch path accepted, in columns: record k
    is the object members[k] (an index into the objects encoded); its payload
    payloads[payload_starts[k]:payload_ends[k]], its identifier's UTF-8 (an Integral's decimal
    digits) strings[id_starts[k]:id_ends[k]], its event time event_time_us[k]; every record
    expires ttl_us after its event time (None: never)."""

    members: np.ndarray
    payloads: bytes
    payload_starts: np.ndarray
    payload_ends: np.ndarray
    strings: bytes
    id_starts: np.ndarray
    id_ends: np.ndarray
    event_time_us: np.ndarray
    ttl_us: int | None

    def record(self, k: int) -> ValidatedRecord:
        """Record k as a ValidatedRecord."""
        t = int(self.event_time_us[k])
        return ValidatedRecord(
            self.strings[int(self.id_starts[k]):int(self.id_ends[k])].decode(), t,
            t + self.ttl_us if self.ttl_us is not None else None,
            self.payloads[int(self.payload_starts[k]):int(self.payload_ends[k])], None)


def _ints(column: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(int64 values, present or None: all, wrong or None: none) of an Integral column."""
    if set(map(type, column)) == {int}:
        try:
            return np.array(column, np.int64), None, None
        except OverflowError:
            pass
    n = len(column)
    values = np.zeros(n, np.int64)
    present = np.ones(n, np.bool_)
    wrong = np.zeros(n, np.bool_)
    for k, v in enumerate(column):
        if v is None:
            present[k] = False
        elif type(v) is int and _I64_MIN <= v <= _I64_MAX:
            values[k] = v
        else:
            wrong[k] = True
    return values, present, wrong


def _floats(column: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(float64 values, present, wrong) of a Fractional column: finite floats, and ints within
    2**53 (exactly representable)."""
    if set(map(type, column)) == {float}:
        values = np.array(column, np.float64)
        finite = np.isfinite(values)
        return values, None, None if finite.all() else ~finite
    n = len(column)
    values = np.zeros(n, np.float64)
    present = np.ones(n, np.bool_)
    wrong = np.zeros(n, np.bool_)
    for k, v in enumerate(column):
        t = type(v)
        if v is None:
            present[k] = False
        elif t is float and math.isfinite(v):
            values[k] = v
        elif t is int and -_EXACT <= v <= _EXACT:
            values[k] = float(v)
        else:
            wrong[k] = True
    return values, present, wrong


def _strings(column: Sequence[Any]
             ) -> tuple[bytes, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(the UTF-8 of every value, concatenated; byte lengths; present; wrong) of a String
    column. A lone surrogate (which the standard library's JSON decoder lets through) is
    wrong: the per-message path decides."""
    if set(map(type, column)) == {str}:
        try:
            encoded = [s.encode() for s in column]
        except UnicodeEncodeError:
            pass
        else:
            return (b"".join(encoded), np.fromiter(map(len, encoded), np.int64, len(encoded)),
                    None, None)
    n = len(column)
    parts: list[bytes] = []
    present = np.ones(n, np.bool_)
    wrong = np.zeros(n, np.bool_)
    for k, v in enumerate(column):
        raw = b""
        if v is None:
            present[k] = False
        elif type(v) is str:
            try:
                raw = v.encode()
            except UnicodeEncodeError:
                wrong[k] = True
        else:
            wrong[k] = True
        parts.append(raw)
    return b"".join(parts), np.fromiter(map(len, parts), np.int64, n), present, wrong
