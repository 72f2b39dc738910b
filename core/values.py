"""Python values to and from wire feature values (the SDK's and the ingest consumer's codec).

In: int, float, str, lists / tuples / sets of one of those, NumPy arrays (a float32 vector, or a
1-d array of numbers), bytes for a raw '<f4' vector, datetime for an event time. None means the
feature is absent. Out: int, float, str, lists, and NumPy float32 arrays for vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from tessera.core.errors import InvalidRequestError
from tessera.proto.v1 import feature_store_pb2 as pb


def to_record(values: Mapping[str, Any]) -> pb.Record:
    """A wire Record from a dict of feature name -> Python value (None entries are left out)."""
    record = pb.Record()
    add = record.features.add
    for name, value in values.items():
        if value is None:
            continue
        fill_value(add(feature_name=name), value)
    return record


def fill_value(fv: pb.FeatureValue, value: Any) -> None:
    """Set the oneof of `fv` that carries `value`."""
    if isinstance(value, bool | np.bool_):
        raise InvalidRequestError(
            f"feature '{fv.feature_name}': a bool is not a feature type; use an Integral 0 or 1"
        )
    if isinstance(value, int | np.integer):
        fv.int_value = int(value)
    elif isinstance(value, float | np.floating):
        fv.float_value = float(value)
    elif isinstance(value, str):
        fv.string_value = value
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidRequestError(
                f"feature '{fv.feature_name}': a naive datetime has no time zone; use UTC"
            )
        fv.float_value = value.timestamp()
    elif isinstance(value, np.ndarray):
        if value.dtype == np.float32:
            fv.vector_value = value.astype("<f4", copy=False).tobytes()
        elif value.dtype.kind in "iu":
            fv.int_list.values.extend(value.tolist())
        elif value.dtype.kind == "f":
            fv.float_list.values.extend(value.tolist())
        else:
            fv.string_list.values.extend(str(v) for v in value.tolist())
    elif isinstance(value, bytes | bytearray | memoryview):
        fv.vector_value = bytes(value)
    elif isinstance(value, list | tuple | set | frozenset):
        _fill_list(fv, sorted(value) if isinstance(value, set | frozenset) else value)
    else:
        raise InvalidRequestError(
            f"feature '{fv.feature_name}': {type(value).__name__} is not a feature value; "
            "allowed: int, float, str, a list/set of those, a NumPy array"
        )


def _fill_list(fv: pb.FeatureValue, values: Iterable[Any]) -> None:
    items = list(values)
    if all(isinstance(v, str) for v in items):
        fv.string_list.SetInParent()
        fv.string_list.values.extend(items)
    elif all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        fv.int_list.values.extend(int(v) for v in items)
    elif all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in items):
        fv.float_list.values.extend(float(v) for v in items)
    else:
        kinds = sorted({type(v).__name__ for v in items})
        raise InvalidRequestError(
            f"feature '{fv.feature_name}': a list must hold one kind of value "
            f"(all int, all float or all str); got {', '.join(kinds)}"
        )


def from_record(record: pb.Record) -> dict[str, Any]:
    """A dict of feature name -> Python value from a wire Record."""
    out: dict[str, Any] = {}
    for fv in record.features:
        out[fv.feature_name] = from_value(fv)
    return out


def from_value(fv: pb.FeatureValue) -> Any:
    kind = fv.WhichOneof("value")
    if kind is None:
        return None
    if kind == "vector_value":
        return np.frombuffer(fv.vector_value, dtype="<f4")
    value = getattr(fv, kind)
    if kind in ("int_list", "float_list", "string_list"):
        return list(value.values)
    return value
