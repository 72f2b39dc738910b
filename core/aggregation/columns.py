"""The column sets the aggregation wrappers take (events) and return (aggregate values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation.plan import CompiledAggregation, StreamPlan

F64s = npt.NDArray[np.float64]
I64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
AggregateValue = int | float | list[int] | list[float] | None


@dataclass(frozen=True, eq=False)
class Events:
    """Events of one stream: one accepted put each (a history row with is_deleted false).

    `key` indexes the keys of the call (online: the stored values passed to `fold`; offline: a
    dense code of the key's value). `values` has one column per source of the stream, in
    `StreamPlan.sources` order, as float64 with NaN for null. Times are epoch microseconds;
    `write_time_us` is the commit time (`write_time`), `seq` the commit sequence (`tessera_seq`).
    """

    key: I64s
    event_time_us: I64s
    write_time_us: I64s
    seq: I64s
    values: F64s

    def __post_init__(self) -> None:
        m = len(self.key)
        shapes = (len(self.event_time_us), len(self.write_time_us), len(self.seq))
        if shapes != (m, m, m) or self.values.ndim != 2 or self.values.shape[0] != m:
            raise ValueError(
                f"event columns differ in length: key {m}, times/seq {shapes}, "
                f"values {self.values.shape}"
            )

    def __len__(self) -> int:
        return len(self.key)

    def take(self, order: I64s) -> Events:
        return Events(
            self.key[order],
            self.event_time_us[order],
            self.write_time_us[order],
            self.seq[order],
            self.values[order],
        )


@dataclass(frozen=True, eq=False)
class AggregateValues:
    """A stream's aggregations for k rows (keys of a read, or queries of a point-in-time run):
    `values[:, agg.column]` where `valid`, and for last_n `list_len` values from
    `lists[:, list_offsets[column]:]`, newest first."""

    plan: StreamPlan
    values: F64s  # (k, a), NaN where not valid
    valid: Bools  # (k, a)
    lists: F64s  # (k, list width)
    list_len: I64s  # (k, a)

    def __len__(self) -> int:
        return len(self.values)

    def row(self, i: int) -> dict[str, AggregateValue]:
        """Row i as Python values by aggregation name: int for Integral types, float for
        Fractional, a list (possibly empty) for last_n, None for an empty window's
        mean/min/max/last."""
        out: dict[str, AggregateValue] = {}
        for agg in self.plan.aggregations:
            x = agg.column
            integral = "Integral" in agg.output_type
            if agg.function == "last_n":
                start = int(self.plan.list_offsets[x])
                seq = self.lists[i, start : start + int(self.list_len[i, x])].tolist()
                out[agg.name] = [int(v) for v in seq] if integral else seq
            elif self.valid[i, x]:
                v = float(self.values[i, x])
                out[agg.name] = int(v) if integral else v
            else:
                out[agg.name] = None
        return out

    def column(self, name: str) -> tuple[npt.NDArray[Any], Bools]:
        """A scalar aggregation's column: (values, valid); int64 for Integral output types (0
        where not valid), float64 otherwise (NaN where not valid)."""
        agg = self._agg(name)
        if agg.function == "last_n":
            raise ValueError(f"aggregation '{name}' is a last_n list: use list_column")
        vals = self.values[:, agg.column]
        valid = self.valid[:, agg.column]
        if agg.output_type == "Integral":
            return np.where(valid, vals, 0.0).astype(np.int64), valid
        return vals, valid

    def list_column(self, name: str) -> tuple[F64s, I64s]:
        """A last_n aggregation's column: values (k, n) newest first, and lengths (k,)."""
        agg = self._agg(name)
        if agg.function != "last_n":
            raise ValueError(f"aggregation '{name}' is not a last_n list: use column")
        start = int(self.plan.list_offsets[agg.column])
        return self.lists[:, start : start + agg.n], self.list_len[:, agg.column]

    def _agg(self, name: str) -> CompiledAggregation:
        for agg in self.plan.aggregations:
            if agg.name == name:
                return agg
        known = ", ".join(a.name for a in self.plan.aggregations)
        raise KeyError(f"aggregation '{name}' is not in this stream; known: {known}")
