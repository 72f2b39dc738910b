"""The hot path: a flat dict of Python values straight to a validated Record's wire bytes.

`FastEncoder` handles the common case, scalar features given in their own type (or an int for a
Fractional), without building protobuf objects: it checks what `validate_record` checks and
writes the bytes upb would write. Whenever anything is unusual (an unknown feature, a type to
coerce or refuse, a collection, a non-finite number, a bad identifier or event time, an
oversized record) it returns None, and the caller takes the reference path
(`to_record` + `validate_record`), which decides with PutRecord's exact messages. The unit tests
compare both paths byte for byte.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from tessera.core import eventtime
from tessera.core.aggregation.inputs import aggregation_input_of_values
from tessera.core.errors import InvalidRequestError
from tessera.core.keys import MAX_RECORD_ID_BYTES
from tessera.core.records import MAX_RECORD_BYTES, ValidatedRecord
from tessera.core.schema import CompiledSchema
from tessera.core.wire import varint

_INT, _FLOAT, _STRING = 1, 2, 3
_KINDS = {"int_value": _INT, "float_value": _FLOAT, "string_value": _STRING}
_DOUBLE = struct.Struct("<d").pack
_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_EXACT = 1 << 53
_US = eventtime.US_PER_S
_MAX_EVENT_TIME_S = eventtime.MAX_EVENT_TIME_S


_SMALL = [varint(i) for i in range(0x80)]
#: Varints of 0 .. 2**14 - 1 (1 or 2 bytes): counts, lengths and most Integral values.
_VARINTS = [varint(i) for i in range(1 << 14)]
_N_VARINTS = len(_VARINTS)
_THREE_BYTES = 1 << 21  # values below take a 3-byte varint


class FastEncoder:
    """Encodes records of one schema (see the module docstring)."""

    def __init__(self, schema: CompiledSchema, ttl_s: float | None) -> None:
        self.schema = schema
        # feature name -> (kind, head): the FeatureValue's bytes before its value, framing
        # included. An Integral's head depends on its varint's length (heads[length]); a
        # Fractional's is fixed; a String's is the FeatureValue's name and the value's tag
        # (its framing depends on the string's length).
        self._specs: dict[str, tuple[int, Any]] = {}
        for name, spec in schema.features.items():
            raw = name.encode()
            prefix = b"\x0a" + varint(len(raw)) + raw
            kind = _KINDS.get(spec.oneof, 0)
            head: Any
            if kind == _INT:
                head = [b""] + [
                    _frame(len(prefix) + 1 + n) + prefix + b"\x10" for n in range(1, 11)
                ]
            elif kind == _FLOAT:
                head = _frame(len(prefix) + 9) + prefix + b"\x19"
            else:
                head = prefix + b"\x22"
            self._specs[name] = (kind, head)
        self._id_name = schema.record_identifier.name
        self._et_name = schema.event_time.name
        self._et_is_float = schema.event_time.oneof == "float_value"
        ttl = ttl_s if ttl_s is not None else schema.default_ttl_s
        self._ttl_us = round(ttl * _US) if ttl is not None else None

    def encode(self, values: Mapping[str, Any]) -> ValidatedRecord | None:
        """The validated record, or None: take the reference path."""
        specs = self._specs
        varints = _VARINTS
        n_varints = _N_VARINTS
        double = _DOUBLE
        parts: list[bytes] = []
        append = parts.append
        for name, value in values.items():
            if value is None:
                continue
            spec = specs.get(name)
            if spec is None:
                return None
            kind, head = spec
            t = type(value)
            if t is float:
                if kind != _FLOAT or not math.isfinite(value):
                    return None
                append(head + double(value))
            elif t is str:
                if kind != _STRING:
                    return None
                try:
                    raw = value.encode()
                except UnicodeEncodeError:  # a lone surrogate: the reference path refuses it
                    return None
                n = len(raw)
                size = len(head) + n + (1 if n < 0x80 else len(varint(n)))
                if size < n_varints:
                    append(b"\x0a" + varints[size] + head + varints[n] + raw)
                else:
                    append(b"\x0a" + varint(size) + head + varint(n) + raw)
            elif t is int:
                if kind == _INT:
                    if 0 <= value < n_varints:
                        v = varints[value]
                    elif n_varints <= value < _THREE_BYTES:
                        v = bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80,
                                   value >> 14))
                    elif _I64_MIN <= value <= _I64_MAX:
                        v = varint(value & _U64)
                    else:
                        return None
                    append(head[len(v)] + v)
                elif kind == _FLOAT and -_EXACT <= value <= _EXACT:  # else float() would round
                    append(head + double(float(value)))
                else:
                    return None
            else:
                return None
        record_id = _record_id(values.get(self._id_name))
        if record_id is None:
            return None
        event_time_us = self._event_time_us(values.get(self._et_name))
        if event_time_us is None:
            return None
        payload = b"".join(parts)
        if len(payload) > MAX_RECORD_BYTES:
            return None
        expires = event_time_us + self._ttl_us if self._ttl_us is not None else None
        plan = self.schema.aggregations
        inputs = None if plan is None else aggregation_input_of_values(plan, record_id, values)
        return ValidatedRecord(record_id, event_time_us, expires, payload, inputs)

    def _event_time_us(self, value: Any) -> int | None:
        t = type(value)
        if self._et_is_float:
            if t is not float and t is not int:
                return None
            v = float(value)
            if not (math.isfinite(v) and 0.0 <= v < _MAX_EVENT_TIME_S):
                return None
            return round(v * _US)
        if t is not str:
            return None
        try:
            return eventtime.from_iso(value, "event time")
        except InvalidRequestError:
            return None


def _frame(size: int) -> bytes:
    """The tag and length of a Record.features entry of `size` bytes."""
    return b"\x0a" + varint(size)


def _record_id(value: Any) -> str | None:
    t = type(value)
    if t is str:
        if not value or len(value) * 4 > MAX_RECORD_ID_BYTES and (
            len(value.encode()) > MAX_RECORD_ID_BYTES
        ):
            return None
        return str(value)
    if t is int:
        return str(value)
    return None
