"""The online store's side: fold a commit's events into the stored tile values, and read the
aggregations of stored values as of now. Storage-agnostic: values in, values out.

Write path, per commit and stream: multi-get the touched keys' values, `fold()` (decode, fold,
encode: one kernel call for all the keys), put the new values (delete where None) in the
same WriteBatch as the records, add `dropped` to a metric. Read path: get ONE value per stream,
`read()` with now: one kernel call for every aggregation of the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation import kernels
from tessera.core.aggregation._arrays import offsets, ro_f64, ro_i64
from tessera.core.aggregation.codec import TileState, check_bad, pack, unpack
from tessera.core.aggregation.columns import AggregateValues, Events
from tessera.core.aggregation.kernels import read_values
from tessera.core.aggregation.plan import StreamPlan
from tessera.core.wire import length_delimited


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
    (`events.key[i]` indexes `stored`; events of different keys may interleave). `commit_us`
    (default: the latest write time of the events) evicts tiles no window can reach again; it
    must not be later than any read that follows. With no events and a `commit_us`, it only
    evicts (a purge of idle keys). One kernel call (`kernels.fold_values`)."""
    k = len(stored)
    if len(events) and (events.key.min() < 0 or events.key.max() >= k):
        raise ValueError(f"event keys must index the {k} stored values")
    if commit_us is None:
        if not len(events):
            return FoldResult(list(stored), np.zeros(k, np.int64))
        commit_us = int(events.write_time_us.max())
    s, r = plan.n_sources, plan.recent_capacity
    buf, off = pack(stored, s, r)
    out, out_off, dropped, bad = kernels.fold_values(
        buf, off, ro_i64(events.key), ro_i64(events.event_time_us),
        ro_i64(events.write_time_us), ro_i64(events.seq), ro_f64(events.values),
        plan.recent_caps, plan.tile_us, plan.lateness_us, plan.retention_tiles, int(commit_us),
        s, r,
    )  # fmt: skip
    check_bad(bad, stored, s, r)
    return FoldResult(unpack(out, out_off), dropped)


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


@dataclass(frozen=True, eq=False)
class EncodedFields:
    """Which of a stream's aggregations `read_encoded` writes, in order, and how: kinds
    (kernels.KIND_*), output columns, and the encoded name field of each, concatenated."""

    kinds: npt.NDArray[np.int64]
    columns: npt.NDArray[np.int64]
    names: npt.NDArray[np.uint8]
    name_off: npt.NDArray[np.int64]


_KINDS = {
    "Integral": kernels.KIND_INT,
    "Fractional": kernels.KIND_FLOAT,
    "List[Integral]": kernels.KIND_INT_LIST,
    "List[Fractional]": kernels.KIND_FLOAT_LIST,
}


@functools.lru_cache(maxsize=4096)
def encoded_fields(plan: StreamPlan, wanted: frozenset[str] | None) -> EncodedFields:
    """The fields `read_encoded` writes for `wanted` (None: every aggregation of the stream)."""
    aggs = [a for a in plan.aggregations if wanted is None or a.name in wanted]
    names = [length_delimited(1, a.name.encode()) for a in aggs]
    name_off = np.zeros(len(names) + 1, np.int64)
    np.cumsum([len(n) for n in names], out=name_off[1:])
    return EncodedFields(
        ro_i64(np.array([_KINDS[a.output_type] for a in aggs], np.int64)),
        ro_i64(np.array([a.column for a in aggs], np.int64)),
        _ro_u8(np.frombuffer(b"".join(names), np.uint8).copy()),
        ro_i64(name_off),
    )


def _ro_u8(a: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    a.flags.writeable = False
    return a


def read_encoded(
    plan: StreamPlan, stored: Sequence[bytes | None], now_us: int, fields: EncodedFields
) -> list[bytes]:
    """The stream's aggregations as of `now_us`, per stored value, encoded as Record features
    entries (see kernels.read_encoded): the read path's one kernel call per stream."""
    s, r = plan.n_sources, plan.recent_capacity
    buf, off = pack(stored, s, r)
    out, out_off, bad = kernels.read_encoded(
        buf, off, int(now_us), plan.tile_us, s, r, *plan.kernel_plan(),
        fields.kinds, fields.columns, fields.names, fields.name_off,
    )  # fmt: skip
    check_bad(bad, stored, s, r)
    raw = out.tobytes()
    bounds = out_off.tolist()
    return [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


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
