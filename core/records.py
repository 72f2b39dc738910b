"""Validating records against a feature group's schema, once, at the boundary.

`validate_record` checks a wire `Record` (types, finiteness, set uniqueness, vector dimension,
identifier and event time, size) and returns a `ValidatedRecord`: the domain value the online
store takes, whose payload is the record's wire bytes, stored as is, so that reads send them back
without decoding. Values given in a wider form are normalized first (an int for a Fractional
feature, a list of numbers for a Vector), so the payload is always in the schema's own form.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.core import eventtime
from tessera.core.aggregation.inputs import AggregationInput, aggregation_input_of_values
from tessera.core.errors import InvalidRequestError
from tessera.core.keys import check_record_id
from tessera.core.schema import MAX_TTL_S, TTL_RULE, CollectionType, CompiledSchema, FeatureSpec
from tessera.proto.v1 import feature_store_pb2 as pb

MAX_RECORD_BYTES = 350 * 1024  # like SageMaker: 350 KB per record

_LISTS = ("int_list", "float_list", "string_list")


@dataclass(frozen=True, slots=True)
class ValidatedRecord:
    """A record that passed validation: what the store writes."""

    record_id: str
    event_time_us: int
    expires_at_us: int | None
    payload: bytes  # the wire encoding of the Record message
    #: What the put adds to the group's aggregation features; None when it has none.
    aggregation: AggregationInput | None = None


def validate_record(
    schema: CompiledSchema, record: pb.Record, ttl_s: float | None = None, where: str = "record"
) -> ValidatedRecord:
    """Validate `record` (normalizing it in place where needed); raise InvalidRequestError."""
    validated = _validate_common(schema, record, ttl_s)
    if validated is not None:
        return validated
    return validate_record_reference(schema, record, ttl_s, where)


def validate_record_reference(
    schema: CompiledSchema, record: pb.Record, ttl_s: float | None = None, where: str = "record"
) -> ValidatedRecord:
    """`validate_record`, feature by feature: what decides every record the table-driven path
    leaves to it (values to normalize, any error), and its reference in the tests."""
    features = schema.features
    id_name = schema.record_identifier.name
    et_name = schema.event_time.name
    seen: set[str] = set()
    record_id: str | None = None
    event_time_us: int | None = None
    plan = schema.aggregations
    inputs: frozenset[str] = plan.input_features if plan is not None else frozenset()
    input_values: dict[str, int | float | str] = {}
    for fv in record.features:
        name = fv.feature_name
        spec = features.get(name)
        if spec is None:
            raise _at(where, schema.unknown_feature(name))
        if name in seen:
            raise InvalidRequestError(f"{where}: feature '{name}' is given twice")
        seen.add(name)
        kind = fv.WhichOneof("value")
        if kind != spec.oneof:
            _coerce(fv, spec, kind, where)
        elif kind == "float_value":
            if not math.isfinite(fv.float_value):
                raise _not_finite(where, name, fv.float_value)
        elif kind != "int_value" and kind != "string_value":
            _check_collection(fv, spec, where)
        if name in inputs:  # an aggregation's source or key: a scalar, in the schema's form
            input_values[name] = getattr(fv, spec.oneof)
        if name == id_name:
            if kind == "int_value":
                record_id = str(fv.int_value)
            else:
                record_id = fv.string_value
                try:
                    check_record_id(name, record_id)
                except InvalidRequestError as exc:
                    raise _at(where, exc) from None
        elif name == et_name:
            field = f"{where}: event time '{name}'"
            if spec.oneof == "float_value":
                event_time_us = eventtime.from_epoch_s(fv.float_value, field)
            else:
                event_time_us = eventtime.from_iso(fv.string_value, field)
    if record_id is None:
        raise InvalidRequestError(f"{where}: the record identifier feature '{id_name}' is missing")
    if event_time_us is None:
        raise InvalidRequestError(f"{where}: the event time feature '{et_name}' is missing")
    payload = record.SerializeToString()
    if len(payload) > MAX_RECORD_BYTES:
        raise InvalidRequestError(
            f"{where}: the record is {len(payload)} bytes; the limit is {MAX_RECORD_BYTES} (350 KB)"
        )
    if ttl_s is None:
        ttl_s = schema.default_ttl_s
    expires_at_us = None
    if ttl_s is not None:
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_TTL_S):
            raise InvalidRequestError(f"ttl_s {ttl_s} is out of range; allowed: {TTL_RULE}")
        expires_at_us = event_time_us + round(ttl_s * eventtime.US_PER_S)
    aggregation = None
    if plan is not None:
        aggregation = aggregation_input_of_values(plan, record_id, input_values)
    return ValidatedRecord(record_id, event_time_us, expires_at_us, payload, aggregation)


# --- the compiled path: the common case, without protobuf's Python objects -------------------


@dataclass(frozen=True, slots=True)
class _Table:
    """A schema as `record_scan.scan` takes it."""

    names: np.ndarray
    name_offsets: np.ndarray
    fields: np.ndarray
    checks: np.ndarray
    vector_bytes: np.ndarray
    id_col: int
    et_col: int
    id_is_int: bool
    et_is_float: bool
    #: Aggregation inputs: (column, feature name, its oneof); empty without aggregations.
    inputs: tuple[tuple[int, str, str], ...]


_TABLES: dict[int, tuple[CompiledSchema, _Table]] = {}
_MAX_TABLES = 256
_NO_VALUES = np.zeros((0, 3), np.int64)
_FIELD_OF_ONEOF = {
    "int_value": 2, "float_value": 3, "string_value": 4, "int_list": 5, "float_list": 6,
    "string_list": 7, "vector_value": 8,
}
_DOUBLE = struct.Struct("<d")


def _table(schema: CompiledSchema) -> _Table:
    cached = _TABLES.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    from tessera.core import record_scan as rs

    specs = list(schema.features.values())
    raw = [spec.name.encode() for spec in specs]
    checks = []
    for spec in specs:
        flags = 0
        if spec.oneof == "float_value":
            flags |= rs.FINITE
        if spec.oneof == "float_list":
            flags |= rs.FINITE_LIST
        if spec.type.collection is CollectionType.SET:
            flags |= rs.SET
        if spec.oneof == "vector_value":
            flags |= rs.VECTOR
        checks.append(flags)
    cols = {spec.name: j for j, spec in enumerate(specs)}
    plan = schema.aggregations
    inputs = plan.input_features if plan is not None else frozenset()
    table = _Table(
        names=np.frombuffer(b"".join(raw), np.uint8),
        name_offsets=np.cumsum([0] + [len(r) for r in raw], dtype=np.int64),
        fields=np.array([_FIELD_OF_ONEOF[spec.oneof] for spec in specs], np.int8),
        checks=np.array(checks, np.int8),
        vector_bytes=np.array([4 * (spec.type.dimension or 0) for spec in specs], np.int64),
        id_col=cols[schema.record_identifier.name],
        et_col=cols[schema.event_time.name],
        id_is_int=schema.record_identifier.oneof == "int_value",
        et_is_float=schema.event_time.oneof == "float_value",
        inputs=tuple((cols[n], n, schema.features[n].oneof) for n in sorted(inputs)),
    )
    if len(_TABLES) >= _MAX_TABLES:  # schemas are replaced when groups change: forget old ones
        _TABLES.clear()
    _TABLES[id(schema)] = (schema, table)
    return table


_scan: Any = None  # record_scan.scan once loaded
_scan_tried = False


def load_compiled_validation() -> bool:
    """Load (compile, or read from Numba's cache) the compiled path; False without Numba, and
    validation stays in Python. `validate_record` does this on its first call; the server calls
    it at start-up so that no request waits for it. Deferred rather than imported with this
    module: the client imports this module and stays light (no Numba)."""
    global _scan, _scan_tried
    if not _scan_tried:
        try:
            from tessera.core import record_scan
        except ImportError:
            pass
        else:
            record_scan.warm_up()
            _scan = record_scan.scan
        _scan_tried = True
    return _scan is not None


def _validate_common(
    schema: CompiledSchema, record: pb.Record, ttl_s: float | None
) -> ValidatedRecord | None:
    """The record validated when it is the common case (every value already in its schema's
    form, nothing wrong with it); None otherwise, and `validate_record_reference` decides, with
    its exact error messages."""
    scan = _scan
    if scan is None:
        if _scan_tried or not load_compiled_validation():
            return None
        scan = _scan
    table = _table(schema)
    payload = record.SerializeToString()
    values = np.zeros((len(table.fields), 3), np.int64) if table.inputs else _NO_VALUES
    status, id_a, id_b, et_a, et_b, et_s = scan(
        payload, table.names, table.name_offsets, table.fields, table.checks,
        table.vector_bytes, table.id_col, table.et_col, values,
    )
    if status:
        return None
    try:
        if table.id_is_int:
            record_id = str(id_a)
        else:
            record_id = payload[id_a : id_a + id_b].decode()
            check_record_id("", record_id)
        if table.et_is_float:
            event_time_us = eventtime.from_epoch_s(et_s, "")
        else:
            event_time_us = eventtime.from_iso(payload[et_a : et_a + et_b].decode(), "")
    except InvalidRequestError:
        return None
    if len(payload) > MAX_RECORD_BYTES:
        return None
    if ttl_s is None:
        ttl_s = schema.default_ttl_s
    expires_at_us = None
    if ttl_s is not None:
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_TTL_S):
            return None
        expires_at_us = event_time_us + round(ttl_s * eventtime.US_PER_S)
    aggregation = None
    plan = schema.aggregations
    if plan is not None:
        aggregation = aggregation_input_of_values(
            plan, record_id, _input_values(payload, table, values))
    return ValidatedRecord(record_id, event_time_us, expires_at_us, payload, aggregation)


def _input_values(
    payload: bytes, table: _Table, values: np.ndarray
) -> dict[str, int | float | str]:
    out: dict[str, int | float | str] = {}
    for col, name, oneof in table.inputs:
        a, b, present = values[col].tolist()
        if not present:
            continue
        if oneof == "int_value":
            out[name] = a
        elif oneof == "float_value":
            out[name] = _DOUBLE.unpack(struct.pack("<q", a))[0]
        elif oneof == "string_value":
            out[name] = payload[a : a + b].decode()
    return out


def _at(where: str, exc: InvalidRequestError) -> InvalidRequestError:
    return InvalidRequestError(f"{where}: {exc.message}")


def _not_finite(where: str, name: str, value: float) -> InvalidRequestError:
    return InvalidRequestError(
        f"{where}: feature '{name}' is {value}; Fractional values must be finite "
        "(NaN and infinities are not allowed; omit the feature for a null)"
    )


def _type_error(where: str, spec: FeatureSpec, kind: str | None) -> InvalidRequestError:
    if kind is None:
        return InvalidRequestError(
            f"{where}: feature '{spec.name}' has no value; expected {spec.type} "
            "(omit the feature for a null)"
        )
    return InvalidRequestError(
        f"{where}: feature '{spec.name}' has type {spec.type}; got {_KIND_NAMES[kind]}"
    )


_KIND_NAMES = {
    "int_value": "an Integral (int_value)",
    "float_value": "a Fractional (float_value)",
    "string_value": "a String (string_value)",
    "int_list": "a list of Integral (int_list)",
    "float_list": "a list of Fractional (float_list)",
    "string_list": "a list of String (string_list)",
    "vector_value": "a vector (vector_value)",
}


def _coerce(fv: pb.FeatureValue, spec: FeatureSpec, kind: str | None, where: str) -> None:
    """Normalize a value given in a wider form into the schema's form, or refuse it."""
    target = spec.oneof
    if target == "float_value" and kind == "int_value":
        fv.float_value = float(fv.int_value)
        return
    if target == "vector_value" and kind in ("float_list", "int_list"):
        values = getattr(fv, kind).values
        vec = np.asarray(values, dtype="<f4")
        _check_vector(spec, vec, where)
        fv.vector_value = vec.tobytes()
        return
    if target in _LISTS and kind in _LISTS:
        values = getattr(fv, kind).values
        if not values:  # an empty list has no element type to disagree with
            getattr(fv, target).SetInParent()
            return
        if target == "float_list" and kind == "int_list":
            fv.float_list.values.extend([float(v) for v in values])
            _check_collection(fv, spec, where)
            return
    raise _type_error(where, spec, kind)


def _check_collection(fv: pb.FeatureValue, spec: FeatureSpec, where: str) -> None:
    kind = spec.oneof
    if kind == "vector_value":
        raw = fv.vector_value
        dim = spec.type.dimension or 0
        if len(raw) != 4 * dim:
            raise InvalidRequestError(
                f"{where}: feature '{spec.name}' has type Vector[{dim}]; got "
                + (f"{len(raw) // 4} values" if len(raw) % 4 == 0 else f"{len(raw)} bytes")
                + f" (a vector is {dim} little-endian float32, {4 * dim} bytes)"
            )
        _check_vector(spec, np.frombuffer(raw, dtype="<f4"), where)
        return
    values = getattr(fv, kind).values
    if kind == "float_list":
        for v in values:
            if not math.isfinite(v):
                raise _not_finite(where, spec.name, v)
    if spec.type.collection is CollectionType.SET and len(set(values)) != len(values):
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' has type {spec.type}; its values must be distinct"
        )


def _check_vector(spec: FeatureSpec, vec: np.ndarray, where: str) -> None:
    dim = spec.type.dimension
    if vec.shape[0] != dim:
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' has type Vector[{dim}]; got {vec.shape[0]} values"
        )
    if not np.isfinite(vec).all():
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' holds NaN or infinity; vector values must be finite"
        )
