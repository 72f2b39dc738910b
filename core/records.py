"""Validating records against a feature group's schema, once, at the boundary.

`validate_record` checks a wire `Record` (types, finiteness, set uniqueness, vector dimension,
identifier and event time, size) and returns a `ValidatedRecord`: the domain value the online
store takes, whose payload is the record's wire bytes, stored as is, so that reads send them back
without decoding. Values given in a wider form are normalized first (an int for a Fractional
feature, a list of numbers for a Vector), so the payload is always in the schema's own form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
