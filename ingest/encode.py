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


class FastEncoder:
    """Encodes records of one schema (see the module docstring)."""

    def __init__(self, schema: CompiledSchema, ttl_s: float | None) -> None:
        self.schema = schema
        # feature name -> (kind, the FeatureValue's encoded feature_name field)
        self._specs: dict[str, tuple[int, bytes]] = {}
        for name, spec in schema.features.items():
            raw = name.encode()
            self._specs[name] = (_KINDS.get(spec.oneof, 0), b"\x0a" + varint(len(raw)) + raw)
        self._id_name = schema.record_identifier.name
        self._et_name = schema.event_time.name
        self._et_is_float = schema.event_time.oneof == "float_value"
        ttl = ttl_s if ttl_s is not None else schema.default_ttl_s
        self._ttl_us = round(ttl * _US) if ttl is not None else None

    def encode(self, values: Mapping[str, Any]) -> ValidatedRecord | None:
        """The validated record, or None: take the reference path."""
        specs = self._specs
        small = _SMALL
        parts: list[bytes] = []
        append = parts.append
        for name, value in values.items():
            if value is None:
                continue
            spec = specs.get(name)
            if spec is None:
                return None
            kind, prefix = spec
            t = type(value)
            if kind == _INT and t is int:
                if not _I64_MIN <= value <= _I64_MAX:
                    return None
                v = small[value] if 0 <= value < 0x80 else varint(value & _U64)
                fv = prefix + b"\x10" + v
            elif kind == _FLOAT and t is float:
                if not math.isfinite(value):
                    return None
                fv = prefix + b"\x19" + _DOUBLE(value)
            elif kind == _FLOAT and t is int:
                if not -_EXACT <= value <= _EXACT:  # float() would round (or overflow)
                    return None
                fv = prefix + b"\x19" + _DOUBLE(float(value))
            elif kind == _STRING and t is str:
                raw = value.encode()
                n = len(raw)
                fv = prefix + b"\x22" + (small[n] if n < 0x80 else varint(n)) + raw
            else:
                return None
            n = len(fv)
            append(b"\x0a" + (small[n] if n < 0x80 else varint(n)) + fv)
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
