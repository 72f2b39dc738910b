"""The dataset builder's side: every aggregation of a stream, point in time, for spine rows.

Feed it the group's history rows (is_deleted false; every row, not only the latest per id),
with the key's dense code, `tessera_event_time`, `write_time`, `tessera_seq` and the sources
as float64 (NaN for null); the queries are (key code, spine timestamp). The result equals what
GetRecord returned at each timestamp (the package docstring states the contract).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation._arrays import ro_f64, ro_i64
from tessera.core.aggregation.columns import AggregateValues, Events
from tessera.core.aggregation.kernels import pit_aggregate
from tessera.core.aggregation.plan import StreamPlan

I64s = npt.NDArray[np.int64]


def point_in_time(
    plan: StreamPlan, events: Events, query_key: I64s, query_time_us: I64s
) -> AggregateValues:
    """The stream's aggregations at each query (key code, time), rows in the queries' order.

    Key codes are dense integers shared by events and queries (`factorize_keys`). Events are
    wanted in commit order, (write_time, tessera_seq), as history is stored, and are sorted so
    otherwise; queries in any order.
    """
    if len(query_key) != len(query_time_us):
        raise ValueError(f"{len(query_key)} query keys but {len(query_time_us)} query times")
    n_keys = 1 + max(_max(events.key), _max(query_key))
    if min(_min(events.key), _min(query_key)) < 0:
        raise ValueError("key codes must be non-negative")
    if not _sorted(events.write_time_us, events.seq):
        events = events.take(np.lexsort((events.seq, events.write_time_us)))
    if _sorted(query_time_us):
        q_row = np.arange(len(query_time_us), dtype=np.int64)
        q_key, q_time = query_key, query_time_us
    else:
        q_row = np.argsort(query_time_us, kind="stable")
        q_key, q_time = query_key[q_row], query_time_us[q_row]
    values, valid, lists, list_len = pit_aggregate(
        *pit_arguments(plan, events, q_key, q_time, q_row, n_keys)
    )
    return AggregateValues(plan, values, valid, lists, list_len)


def pit_arguments(
    plan: StreamPlan,
    events: Events,
    query_key: I64s,
    query_time_us: I64s,
    query_row: I64s,
    n_keys: int,
) -> tuple[Any, ...]:
    """`pit_aggregate`'s arguments: events in commit order, queries in time order, each query's
    output row."""
    return (
        ro_i64(events.key),
        ro_i64(events.event_time_us),
        ro_i64(events.write_time_us),
        ro_i64(events.seq),
        ro_f64(events.values),
        ro_i64(query_key),
        ro_i64(query_time_us),
        ro_i64(query_row),
        n_keys,
        plan.tile_us,
        plan.lateness_us,
        *plan.kernel_plan(),
        plan.recent_caps,
    )


def factorize_keys(event_keys: npt.ArrayLike, query_keys: npt.ArrayLike) -> tuple[I64s, I64s]:
    """Dense int64 codes of key values (ints or strings) shared by events and queries."""
    ev = np.asarray(event_keys)
    qs = np.asarray(query_keys)
    _, codes = np.unique(np.concatenate([ev, qs]), return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    return codes[: len(ev)], codes[len(ev) :]


def _sorted(*columns: I64s) -> bool:
    """Whether rows are sorted by the columns lexicographically."""
    n = len(columns[0])
    if n < 2:
        return True
    ties = np.ones(n - 1, np.bool_)
    for col in columns:
        a, b = col[:-1], col[1:]
        if np.any(ties & (b < a)):
            return False
        ties &= a == b
    return True


def _max(a: I64s) -> int:
    return int(a.max()) if len(a) else -1


def _min(a: I64s) -> int:
    return int(a.min()) if len(a) else 0
