"""The dataset builder's aggregation features: for the rows the point-in-time join stored (with
its hidden columns, `tessera.core.pit.PointInTimeQuery.unordered_sql`), every asked aggregation
computed by `offline.point_in_time`, as an Arrow table of ROW_COLUMN and one column per feature.

Per group and stream of its asked aggregations:
  queries  (key, t) per spine row: t the spine time in microseconds as the join computes it; the
           key the spine's record id cast to the group's id type, or for a stream keyed by a
           feature, that feature in the row the join picked for (id, t), whatever its deleted
           or expired state. A null key or time makes every aggregate of the stream null.
  events   the group's history rows with is_deleted false (write_time <= as_of), read through
           its catalog view in commit order, joined with the distinct query keys: the join is
           both the semi-join that keeps only keys the spine asks about and the factorization
           of event and query keys into shared dense codes (equal typed values, ints as ints
           and strings as strings, as the online side's key text of the same typed values).
A key with no events reads count 0, sum 0, null mean/min/max/last and [] for last_n.

The spine's keys and times, the events of one stream and the aggregate columns are held in
memory (numpy and Arrow), unlike the join's rows, which DuckDB spills.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tessera.core.aggregation.columns import AggregateValues, Events
from tessera.core.aggregation.offline import point_in_time
from tessera.core.aggregation.plan import CompiledAggregation, StreamPlan
from tessera.core.pit import (
    INTERNAL_PREFIX,
    ROW_COLUMN,
    T_US_COLUMN,
    GroupSelection,
    PointInTimeQuery,
    id_column,
    key_column,
)

if TYPE_CHECKING:
    import duckdb

_P = INTERNAL_PREFIX
_KEYS = _P + "keys"
_ARROW_TYPES = {
    "Integral": pa.int64(),
    "Fractional": pa.float64(),
    "List[Integral]": pa.large_list(pa.int64()),
    "List[Fractional]": pa.large_list(pa.float64()),
}

Bools = npt.NDArray[np.bool_]
I64s = npt.NDArray[np.int64]


def aggregate_table(
    cur: duckdb.DuckDBPyConnection, query: PointInTimeQuery, table: str
) -> pa.Table:
    """ROW_COLUMN and each asked aggregation feature (named as in the dataset) for the rows of
    `table`, which holds `query.unordered_sql()`'s result."""
    hidden = query.hidden_columns()
    spine = cur.sql(f"SELECT {ROW_COLUMN}, {', '.join(hidden)} FROM {table}").to_arrow_table()
    n = spine.num_rows
    t_col = spine.column(T_US_COLUMN)
    t_ok: Bools = t_col.is_valid().to_numpy(zero_copy_only=False)
    t_us: I64s = pc.fill_null(t_col, 0).to_numpy().astype(np.int64, copy=False)
    columns: dict[str, pa.Array] = {}
    for i, g in enumerate(query.groups):
        if not g.aggregations:
            continue
        for stream in g.aggregation_plan.streams:
            name = id_column(i) if stream.key is None else key_column(i, stream)
            keys = spine.column(name)
            rows, values = _stream(cur, query, g, stream, keys, t_us, t_ok)
            for agg in stream.aggregations:
                columns[query.out_name(g, agg.name)] = _column(agg, values, rows, n)
    return pa.table({ROW_COLUMN: spine.column(ROW_COLUMN), **columns})


def _stream(
    cur: duckdb.DuckDBPyConnection,
    query: PointInTimeQuery,
    g: GroupSelection,
    stream: StreamPlan,
    keys: pa.ChunkedArray,
    t_us: I64s,
    t_ok: Bools,
) -> tuple[I64s, AggregateValues | None]:
    """The spine rows with a key and a time, and the stream's aggregates for them (None when
    there are no such rows)."""
    asked = keys.filter(pa.array(t_ok)) if not t_ok.all() else keys
    distinct = pc.unique(asked.drop_null())
    codes = pc.index_in(keys, value_set=distinct)  # null: a null key
    ok = t_ok & codes.is_valid().to_numpy(zero_copy_only=False)
    rows: I64s = np.flatnonzero(ok).astype(np.int64)
    if not len(rows):
        return rows, None
    q_code = pc.fill_null(codes, 0).to_numpy().astype(np.int64)[rows]
    events = _events(cur, query, g, stream, distinct)
    return rows, point_in_time(stream, events, q_code, t_us[rows])


def _events(
    cur: duckdb.DuckDBPyConnection,
    query: PointInTimeQuery,
    g: GroupSelection,
    stream: StreamPlan,
    distinct: pa.Array,
) -> Events:
    """The stream's events whose key is one of `distinct`, coded by its position there."""
    s = stream.n_sources
    if not g.has_files:
        e = np.zeros(0, np.int64)
        return Events(e, e, e, e, np.zeros((0, s)))
    codes = pa.array(np.arange(len(distinct), dtype=np.int64))
    cur.register(_KEYS, pa.table({f"{_P}k": distinct, f"{_P}code": codes}))
    try:
        got = cur.sql(query.events_sql(g, stream, _KEYS)).fetchnumpy()
    finally:
        cur.unregister(_KEYS)
    m = len(got["code"])
    values = (
        np.column_stack([np.asarray(got[f"v{j}"], np.float64) for j in range(s)])
        if s
        else np.zeros((m, 0))
    )
    return Events(
        np.asarray(got["code"], np.int64),
        np.asarray(got["event_us"], np.int64),
        np.asarray(got["write_us"], np.int64),
        np.asarray(got["seq"], np.int64),
        np.ascontiguousarray(values),
    )


def _column(
    agg: CompiledAggregation, values: AggregateValues | None, rows: I64s, n: int
) -> pa.Array:
    """One aggregation's column over all n spine rows: null where the row has no key or time,
    or where the value is (an empty window's mean, min, max, last)."""
    arrow_type = _ARROW_TYPES[agg.output_type]
    if values is None:
        return pa.nulls(n, arrow_type)
    integral = "Integral" in agg.output_type
    missing = np.ones(n, np.bool_)
    if agg.function == "last_n":
        lists, lengths = values.list_column(agg.name)
        missing[rows] = False
        full_len = np.zeros(n, np.int64)
        full_len[rows] = lengths
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(full_len, out=offsets[1:])
        flat = lists[np.arange(lists.shape[1]) < lengths[:, None]]  # row by row, newest first
        items = pa.array(flat.astype(np.int64) if integral else flat)
        return pa.LargeListArray.from_arrays(
            pa.array(offsets), items, type=arrow_type, mask=pa.array(missing)
        )
    column, valid = values.column(agg.name)
    full = np.zeros(n, np.int64 if integral else np.float64)
    full[rows] = column
    missing[rows] = ~valid
    return pa.array(full, type=arrow_type, mask=missing)
