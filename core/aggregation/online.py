"""The online store's side: fold a commit's events into the stored tile values, and read the
aggregations of stored values as of now. Storage-agnostic: values in, values out.

Write path, per commit and stream: multi-get the touched keys' values, `fold()` (decode, fold,
encode: three kernel calls for all the keys), put the new values (delete where None) in the
same WriteBatch as the records, add `dropped` to a metric. Read path: get ONE value per stream,
`read()` with now: one kernel call for every aggregation of the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation._arrays import offsets, ro_f64, ro_i64
from tessera.core.aggregation.codec import TileState, check_bad, decode, pack, unpack
from tessera.core.aggregation.columns import AggregateValues, Events
from tessera.core.aggregation.kernels import encode_values, fold_tiles, read_values
from tessera.core.aggregation.plan import StreamPlan


@dataclass(frozen=True, eq=False)
class FoldResult:
    """New stored values aligned with `fold`'s `stored` argument (None: nothing left, delete
    the key), and the events dropped as too late, per key."""

    values: list[bytes | None]
    dropped: npt.NDArray[np.int64]


def fold(
    plan: StreamPlan,
    stored: Sequence[bytes | None],
    events: Events,
    commit_us: int | None = None,
) -> FoldResult:
    """Fold events, in commit order, into the stored values of the keys they belong to
    (`events.key[i]` indexes `stored`). `commit_us` (default: the latest write time of the
    events) evicts tiles no window can reach again; it must not be later than any read that
    follows. With no events and a `commit_us`, it only evicts (a purge of idle keys)."""
    k = len(stored)
    if len(events) and (events.key.min() < 0 or events.key.max() >= k):
        raise ValueError(f"event keys must index the {k} stored values")
    if commit_us is None:
        if not len(events):
            return FoldResult(list(stored), np.zeros(k, np.int64))
        commit_us = int(events.write_time_us.max())
    if len(events) > 1 and np.any(events.key[1:] < events.key[:-1]):
        events = events.take(np.argsort(events.key, kind="stable"))
    state = decode(stored, plan.n_sources, plan.recent_capacity)
    tiles, recent, dropped = fold_tiles(*fold_arguments(plan, state, events, int(commit_us)))
    buf, off = encode_values(*tiles, *recent)
    return FoldResult(unpack(buf, off), dropped)


def read(plan: StreamPlan, stored: Sequence[bytes | None], now_us: int) -> AggregateValues:
    """Every aggregation of the stream, as of `now_us`, for each stored value (None: a key with
    no events: counts and sums 0, the rest null). One kernel call."""
    s, r = plan.n_sources, plan.recent_capacity
    buf, off = pack(stored, s, r)
    values, valid, lists, list_len, bad = read_values(
        buf, off, int(now_us), plan.tile_us, s, r, *plan.kernel_plan()
    )
    check_bad(bad, stored, s, r)
    return AggregateValues(plan, values, valid, lists, list_len)


def fold_arguments(
    plan: StreamPlan, state: TileState, events: Events, commit_us: int
) -> tuple[Any, ...]:
    """`kernels.fold_tiles`' arguments: the state as `codec.decode` returns it, the events
    (sorted by key) read-only."""
    return (
        *state.tiles(),
        *state.recent(),
        ro_i64(offsets(events.key, state.n_keys)),
        ro_i64(events.event_time_us),
        ro_i64(events.write_time_us),
        ro_i64(events.seq),
        ro_f64(events.values),
        plan.recent_caps,
        plan.tile_us,
        plan.lateness_us,
        plan.retention_tiles,
        int(commit_us),
    )


def read_arguments(plan: StreamPlan, state: TileState, now_us: int) -> tuple[Any, ...]:
    """`kernels.read_tiles`' arguments: for tests and benchmarks."""
    return (
        *state.tiles(),  # as codec.decode returns them (writable, C-contiguous)
        *state.recent(),
        int(now_us),
        plan.tile_us,
        *plan.kernel_plan(),
    )
