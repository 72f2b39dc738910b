"""A plain-Python reference of the aggregation semantics (the package docstring's contract,
transcribed literally), random event streams for hypothesis, and the comparison rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from tessera.core.aggregation.columns import AggregateValue, AggregateValues, Events
from tessera.core.aggregation.plan import StreamPlan
from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition, check
from tessera.core.schema import FeatureType

S = 1_000_000
MIN = 60 * S


@dataclass(frozen=True)
class Ev:
    key: int
    event_us: int
    write_us: int
    seq: int
    values: tuple[float, ...]  # NaN = null

    @property
    def agg_us(self) -> int:
        return min(self.event_us, self.write_us)


def reference(plan: StreamPlan, events: Sequence[Ev], key: int, t: int) -> dict[str, object]:
    """Every aggregation of `key` at time `t`, by brute force over all events."""
    tile = plan.tile_us
    now_tile = t // tile
    visible = [
        e
        for e in events
        if e.key == key and e.write_us <= t and e.write_us - e.event_us <= plan.lateness_us
    ]
    out: dict[str, object] = {}
    for agg in plan.aggregations:
        span = agg.window_us // tile
        inside = [
            e for e in visible if now_tile - span < e.agg_us // tile <= now_tile and e.agg_us <= t
        ]
        if agg.source is None:
            out[agg.name] = len(inside)
            continue
        c = plan.sources.index(agg.source)
        vals = [(e.agg_us, e.seq, e.values[c]) for e in inside if math.isfinite(e.values[c])]
        newest = [v for _, _, v in sorted(vals, reverse=True)]
        f = agg.function
        if f == "count":
            out[agg.name] = len(vals)
        elif f == "sum":
            out[agg.name] = math.fsum(newest)
        elif f == "last_n":
            out[agg.name] = newest[: agg.n]
        elif not vals:
            out[agg.name] = None
        elif f == "mean":
            out[agg.name] = math.fsum(newest) / len(newest)
        elif f == "min":
            out[agg.name] = min(newest)
        elif f == "max":
            out[agg.name] = max(newest)
        else:  # last
            out[agg.name] = newest[0]
    return out


def magnitude(plan: StreamPlan, events: Sequence[Ev], key: int, t: int) -> dict[str, float]:
    """Sum of |value| over each aggregation's window: the scale of its rounding error."""
    absolute = [
        Ev(e.key, e.event_us, e.write_us, e.seq, tuple(abs(v) for v in e.values)) for e in events
    ]
    ref = reference(plan, absolute, key, t)
    return {a.name: float(ref[a.name] or 0.0) for a in plan.aggregations if a.function == "sum"}


def assert_same(
    plan: StreamPlan,
    got: dict[str, AggregateValue],
    want: dict[str, object],
    scale: dict[str, float],
    where: str,
) -> None:
    """count/min/max/last/last_n exactly; sum and mean to 1e-9 of the window's sum of |value|
    (relative to the value itself whenever the values do not cancel)."""
    for agg in plan.aggregations:
        g, w = got[agg.name], want[agg.name]
        msg = f"{where}: {agg.name} ({agg.function} {agg.window_us // S}s) got {g!r} want {w!r}"
        if agg.function in ("sum", "mean") and w is not None:
            assert isinstance(g, float | int), msg
            assert isinstance(w, float | int), msg
            bound = 1e-9 * max(scale.get(agg.name, 0.0), abs(w), 1e-300)
            if agg.function == "mean":
                bound = 1e-9 * max(abs(w), 1e-300) + bound
            assert abs(g - w) <= bound, msg
        else:
            assert g == w, msg


def to_columns(events: Sequence[Ev], n_sources: int) -> Events:
    return Events(
        np.array([e.key for e in events], np.int64),
        np.array([e.event_us for e in events], np.int64),
        np.array([e.write_us for e in events], np.int64),
        np.array([e.seq for e in events], np.int64),
        np.array([e.values for e in events], np.float64).reshape(len(events), n_sources),
    )


def rows(values: AggregateValues) -> list[dict[str, AggregateValue]]:
    return [values.row(i) for i in range(len(values))]


# --- plans and random streams -------------------------------------------------------------------

TYPES = {
    "id": FeatureType.parse("String"),
    "x": FeatureType.parse("Fractional"),
    "y": FeatureType.parse("Integral"),
}


def _defs(windows: Sequence[str]) -> list[AggregationDefinition]:
    defs = []
    for w in windows:
        defs += [
            AggregationDefinition(name=f"events_{w}", function="count", window=w),
            AggregationDefinition(name=f"x_count_{w}", source="x", function="count", window=w),
            AggregationDefinition(name=f"x_sum_{w}", source="x", function="sum", window=w),
            AggregationDefinition(name=f"x_mean_{w}", source="x", function="mean", window=w),
            AggregationDefinition(name=f"x_min_{w}", source="x", function="min", window=w),
            AggregationDefinition(name=f"x_max_{w}", source="x", function="max", window=w),
            AggregationDefinition(name=f"x_last_{w}", source="x", function="last", window=w),
            AggregationDefinition(name=f"y_sum_{w}", source="y", function="sum", window=w),
            AggregationDefinition(name=f"y_max_{w}", source="y", function="max", window=w),
        ]
    defs.append(
        AggregationDefinition(name="x_last3", source="x", function="last_n", n=3, window=windows[0])
    )
    defs.append(
        AggregationDefinition(
            name="y_last2", source="y", function="last_n", n=2, window=windows[-1]
        )
    )
    return defs


#: Minute tiles, three windows, lateness inside the largest window (so some late events in a
#: window are dropped); and the default lateness (largest window + one tile) with 5m tiles.
PLANS = {
    "1m-tiles-lateness-30m": check(
        _defs(["3m", "10m", "1h"]),
        TYPES,
        record_identifier="id",
        config=AggregationConfig(tile_size="1m", lateness="30m"),
    ).streams[0],
    "5m-tiles-default-lateness": check(
        _defs(["5m", "1h"]), TYPES, record_identifier="id", config=AggregationConfig(tile_size="5m")
    ).streams[0],
}

_x_values = st.one_of(
    st.just(math.nan),
    st.integers(-1000, 1000).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.inf, -math.inf, 0.5, -0.0]),
)
_y_values = st.one_of(st.just(math.nan), st.integers(-(2**40), 2**40).map(float))
# Commit delay minus lag: mostly on time, some future-stamped, some late, some too late.
_lag = st.one_of(
    st.integers(0, 90 * S),
    st.integers(-3 * MIN, 0),
    st.integers(0, 2 * 60 * MIN),
    st.sampled_from([0, 30 * MIN, 30 * MIN + 1, 65 * MIN]),
)


@st.composite
def streams(draw: st.DrawFn, max_events: int = 40) -> list[Ev]:
    """Events in commit order: write times non-decreasing (ties too), seq increasing, event
    times before, at or after the write time, on a 20 s grid so times tie."""
    n = draw(st.integers(0, max_events))
    write = 3 * 60 * MIN
    out = []
    for seq in range(1, n + 1):
        write += draw(st.sampled_from([0, 20 * S, 40 * S, 2 * MIN, 7 * MIN]))
        lag = draw(_lag)
        event = max(0, (write - lag) // (20 * S) * (20 * S))
        vals = (draw(_x_values), draw(_y_values))  # the sources x (Fractional), y (Integral)
        out.append(Ev(draw(st.integers(0, 2)), event, write, seq, vals))
    return out


def query_times(events: Sequence[Ev]) -> st.SearchStrategy[int]:
    last = max((e.write_us for e in events), default=3 * 60 * MIN)
    return st.integers(3 * 60 * MIN - 5 * MIN, last + 2 * 60 * MIN)
