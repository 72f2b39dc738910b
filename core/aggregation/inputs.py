"""What one put contributes to its group's aggregations, read from the validated record.

No Numba here: the request path extracts the inputs while it validates, and the writer folds
them (tessera.core.aggregation.online) in its commit. `key_text` is also how the read path
finds a keyed stream's key in a stored record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation.plan import AggregationPlan
from tessera.proto.v1 import feature_store_pb2 as pb

_NAN = math.nan


@dataclass(frozen=True, slots=True)
class AggregationInput:
    """Per stream of the group's plan: the key text (the record identifier, or the key
    feature's value; None when that feature is null: the event is in none of the stream's
    keys) and each source's value as a float (NaN: null)."""

    keys: tuple[str | None, ...]
    values: tuple[tuple[float, ...], ...]


@dataclass(frozen=True, eq=False)
class AggregateColumns:
    """The aggregation events of m puts of one group, in columns: what m `AggregateEvent`s say,
    without an object per put (for a batch of puts, e.g. a PutRecords request's). Per stream of
    the plan: each put's key text (None: its key feature is null, the put is in none of the
    stream's keys) and its source values, float64 (m, sources), NaN for null."""

    group_name: str
    plan: AggregationPlan
    keys: tuple[Sequence[str | None], ...]
    values: tuple[npt.NDArray[np.float64], ...]

    def __post_init__(self) -> None:
        streams = self.plan.streams
        if len(self.keys) != len(streams) or len(self.values) != len(streams):
            raise ValueError(f"{len(self.keys)} key and {len(self.values)} value columns for "
                             f"{len(streams)} streams")
        m = len(self)
        for stream, keys, values in zip(streams, self.keys, self.values, strict=True):
            if len(keys) != m or values.shape != (m, stream.n_sources):
                raise ValueError(f"stream {stream.stream_id}: {len(keys)} keys and values "
                                 f"{values.shape} for {m} puts of {stream.n_sources} sources")

    def __len__(self) -> int:
        return len(self.keys[0]) if self.keys else 0


def aggregation_input_of_values(
    plan: AggregationPlan, record_id: str, values: Mapping[str, Any]
) -> AggregationInput:
    """The inputs of a record that passed validation, from its values (ints, floats and
    strings of the schema's types; absent or None for a null): `validate_record` collects the
    plan's `input_features` as it checks them, the ingest fast path has them as a dict."""
    get = values.get
    keys: list[str | None] = []
    numbers: list[tuple[float, ...]] = []
    for key, sources in plan.input_layout:  # per record: no attribute walk over the plan
        if key is None:
            keys.append(record_id)
        else:
            k = get(key)
            keys.append(None if k is None else str(k))
        numbers.append(tuple([_NAN if (v := get(s)) is None else float(v) for s in sources]))
    return AggregationInput(tuple(keys), tuple(numbers))


def key_text(fv: pb.FeatureValue | None) -> str | None:
    """A key feature's value as key text: an Integral's decimal digits, a String as is."""
    if fv is None:
        return None
    kind = fv.WhichOneof("value")
    if kind == "int_value":
        return str(fv.int_value)
    if kind == "string_value":
        return str(fv.string_value)
    return None
