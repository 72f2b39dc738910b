"""A group's aggregations compiled for the kernels.

Aggregations are grouped into streams by their key (the record id, or another feature): one
stream is one RocksDB value per key value, holding the tiles of every source the stream's
aggregations read. A stream's plan is a handful of small int64 arrays, one entry per aggregation
(`agg_*`), that the read and point-in-time kernels interpret, so one compiled signature serves
every group.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tessera.core.aggregation.spec import AggregationDefinition
    from tessera.core.schema import FeatureType

I64Array = npt.NDArray[np.int64]

# Function codes shared with the kernels.
COUNT, SUM, MEAN, MIN, MAX, LAST, LAST_N = range(7)
FUNCTION_CODES = {
    "count": COUNT,
    "sum": SUM,
    "mean": MEAN,
    "min": MIN,
    "max": MAX,
    "last": LAST,
    "last_n": LAST_N,
}
#: `agg_source` of a count of events (no source feature).
EVENTS = -1


@dataclass(frozen=True, slots=True)
class CompiledAggregation:
    """One aggregation feature, resolved: where its value comes from and what type it has."""

    name: str
    function: str
    source: str | None
    window_us: int
    n: int  # the list length of last_n; 1 for last; 0 otherwise
    key: str | None  # None: the record identifier
    #: The feature type of the value, as FeatureType.parse reads it: count is Integral, mean is
    #: Fractional, sum/min/max/last have the source's type, last_n a List of it.
    output_type: str
    stream: int
    column: int  # the aggregation's column in its stream's outputs


def _readonly(values: Sequence[int]) -> I64Array:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class StreamPlan:
    """The aggregations sharing one key, and the arrays the kernels take for them."""

    stream_id: int
    key: str | None
    sources: tuple[str, ...]
    aggregations: tuple[CompiledAggregation, ...]
    tile_us: int
    lateness_us: int
    window_tiles: I64Array  # the stream's distinct windows, in tiles, ascending
    agg_func: I64Array
    agg_source: I64Array  # index into `sources`, or EVENTS
    agg_window: I64Array  # index into `window_tiles`
    agg_n: I64Array
    list_offsets: I64Array  # (aggregations + 1,): each last_n's slice of the list output
    recent_caps: I64Array  # (sources,): how many most recent events to keep per source

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @functools.cached_property
    def recent_capacity(self) -> int:
        """Rows of the per-source recent-events arrays (the largest n of last/last_n)."""
        return int(self.recent_caps.max()) if len(self.recent_caps) else 0

    @property
    def retention_tiles(self) -> int:
        """Tiles older than `tile(commit) - retention_tiles` are in no window again: dropped."""
        return int(self.window_tiles[-1])

    @property
    def list_width(self) -> int:
        return int(self.list_offsets[-1])

    def kernel_plan(self) -> tuple[I64Array, I64Array, I64Array, I64Array, I64Array, I64Array]:
        """(window_tiles, agg_func, agg_source, agg_window, agg_n, list_offsets)."""
        return (
            self.window_tiles,
            self.agg_func,
            self.agg_source,
            self.agg_window,
            self.agg_n,
            self.list_offsets,
        )


@dataclass(frozen=True, eq=False)
class AggregationPlan:
    """All of a group's aggregations: the group's tile size and lateness bound, its streams."""

    tile_us: int
    lateness_us: int
    streams: tuple[StreamPlan, ...]
    aggregations: Mapping[str, CompiledAggregation] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> AggregationPlan:
        return cls(tile_us=60_000_000, lateness_us=0, streams=())

    @property
    def names(self) -> tuple[str, ...]:
        """The aggregation feature names, in declaration order."""
        return tuple(self.aggregations)

    @functools.cached_property
    def input_layout(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """Per stream: its key feature (None: the record identifier) and its sources."""
        return tuple((stream.key, stream.sources) for stream in self.streams)

    @functools.cached_property
    def input_features(self) -> frozenset[str]:
        """The features an event's aggregation inputs are read from: sources and keys."""
        names = {s for stream in self.streams for s in stream.sources}
        names.update(stream.key for stream in self.streams if stream.key is not None)
        return frozenset(names)


def compile_plan(
    definitions: Sequence[AggregationDefinition],
    windows_us: Sequence[int],
    feature_types: Mapping[str, FeatureType],
    *,
    record_identifier: str,
    tile_us: int,
    lateness_us: int,
) -> AggregationPlan:
    """The plan of validated definitions (spec.check calls this after validating)."""
    keys: list[str | None] = []
    for d in definitions:
        key = None if d.key in (None, record_identifier) else d.key
        if key not in keys:
            keys.append(key)
    streams: list[StreamPlan] = []
    compiled: dict[str, CompiledAggregation] = {}
    for stream_id, key in enumerate(keys):
        members = [
            (d, w)
            for d, w in zip(definitions, windows_us, strict=True)
            if (None if d.key in (None, record_identifier) else d.key) == key
        ]
        stream, aggs = _compile_stream(
            stream_id, key, members, feature_types, tile_us=tile_us, lateness_us=lateness_us
        )
        streams.append(stream)
        compiled.update((a.name, a) for a in aggs)
    ordered = {d.name: compiled[d.name] for d in definitions}
    return AggregationPlan(tile_us, lateness_us, tuple(streams), ordered)


def _compile_stream(
    stream_id: int,
    key: str | None,
    members: list[tuple[AggregationDefinition, int]],
    feature_types: Mapping[str, FeatureType],
    *,
    tile_us: int,
    lateness_us: int,
) -> tuple[StreamPlan, list[CompiledAggregation]]:
    sources: list[str] = []
    for d, _ in members:
        if d.source is not None and d.source not in sources:
            sources.append(d.source)
    windows = sorted({w for _, w in members})
    caps = [0] * len(sources)
    aggs: list[CompiledAggregation] = []
    func, src, win, ns, offsets = [], [], [], [], [0]
    for column, (d, w) in enumerate(members):
        n = (d.n or 0) if d.function == "last_n" else int(d.function == "last")
        source = EVENTS if d.source is None else sources.index(d.source)
        if source != EVENTS:
            caps[source] = max(caps[source], n)
        func.append(FUNCTION_CODES[d.function])
        src.append(source)
        win.append(windows.index(w))
        ns.append(n)
        offsets.append(offsets[-1] + (n if d.function == "last_n" else 0))
        aggs.append(
            CompiledAggregation(
                name=d.name,
                function=d.function,
                source=d.source,
                window_us=w,
                n=n,
                key=key,
                output_type=_output_type(d, feature_types),
                stream=stream_id,
                column=column,
            )
        )
    stream = StreamPlan(
        stream_id=stream_id,
        key=key,
        sources=tuple(sources),
        aggregations=tuple(aggs),
        tile_us=tile_us,
        lateness_us=lateness_us,
        window_tiles=_readonly([w // tile_us for w in windows]),
        agg_func=_readonly(func),
        agg_source=_readonly(src),
        agg_window=_readonly(win),
        agg_n=_readonly(ns),
        list_offsets=_readonly(offsets),
        recent_caps=_readonly(caps),
    )
    return stream, aggs


def _output_type(d: AggregationDefinition, feature_types: Mapping[str, FeatureType]) -> str:
    if d.function == "count":
        return "Integral"
    if d.function == "mean":
        return "Fractional"
    scalar = feature_types[d.source].scalar.value if d.source is not None else "Integral"
    return f"List[{scalar}]" if d.function == "last_n" else scalar
