"""The contract on hand-made examples: ties, late and future events, empty windows, the
sawtooth tail, eviction, and the compiled-signature guarantee."""

from __future__ import annotations

import math

import numpy as np

from tessera.core.aggregation import kernels, offline, online
from tessera.core.aggregation.plan import FUNCTION_CODES
from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition, check
from tessera.core.aggregation.warmup import WarmUp, signature_counts
from tests.unit.core.aggregation.reference import MIN, PLANS, TYPES, Ev, to_columns

PLAN = PLANS["1m-tiles-lateness-30m"]  # windows 3m, 10m, 1h; lateness 30m
T0 = 100 * 60 * MIN  # a whole hour


def _read(events: list[Ev], now: int) -> dict[str, object]:
    stored = online.fold(PLAN, [None], to_columns(events, 2)).values
    return online.read(PLAN, stored, now).row(0)


def _pit(events: list[Ev], t: int) -> dict[str, object]:
    one = np.zeros(1, np.int64)
    return offline.point_in_time(PLAN, to_columns(events, 2), one, one + t).row(0)


def test_a_key_with_no_events_reads_zero_counts_and_sums_and_null_otherwise() -> None:
    row = online.read(PLAN, [None], T0).row(0)
    assert row["events_1h"] == 0 and row["x_count_1h"] == 0
    assert row["x_sum_1h"] == 0.0 and row["y_sum_1h"] == 0
    assert row["x_mean_1h"] is None and row["x_min_1h"] is None and row["x_last_1h"] is None
    assert row["x_last3"] == [] and row["y_last2"] == []
    assert _pit([], T0) == row


def test_last_is_the_greatest_event_time_then_seq_whatever_the_arrival_order() -> None:
    events = [Ev(0, T0, T0, 5, (5.0, 5.0)), Ev(0, T0, T0, 3, (3.0, 3.0))]
    for got in (_read(events, T0), _pit(events, T0)):
        assert got["x_last_3m"] == 5.0
        assert got["x_last3"] == [5.0, 3.0]


def test_nulls_count_as_events_but_not_as_values() -> None:
    events = [Ev(0, T0, T0, 1, (math.nan, 2.0)), Ev(0, T0, T0, 2, (math.inf, math.nan))]
    for got in (_read(events, T0), _pit(events, T0)):
        assert got["events_3m"] == 2 and got["x_count_3m"] == 0 and got["x_last_3m"] is None
        assert got["y_sum_3m"] == 2 and got["y_last2"] == [2]


def test_the_tail_is_exact_to_the_tile_a_sawtooth() -> None:
    # Window 3m, 1m tiles: at t the window holds tiles tile(t)-2 .. tile(t).
    events = [Ev(0, T0, T0, 1, (1.0, 1.0))]
    assert _read(events, T0 + 3 * MIN - 1)["x_count_3m"] == 1  # 2m59.999999s later: in
    assert _read(events, T0 + 3 * MIN)["x_count_3m"] == 0  # tile(t) - 3: out
    late_in_tile = [Ev(0, T0 + MIN - 1, T0 + MIN - 1, 1, (1.0, 1.0))]
    assert _read(late_in_tile, T0 + 3 * MIN)["x_count_3m"] == 0  # only 2m1us old, yet out


def test_too_late_events_are_dropped_and_counted_and_late_ones_fill_their_tile() -> None:
    late = Ev(0, T0 - 20 * MIN, T0, 1, (1.0, 1.0))  # 20m late: within the 30m bound
    too_late = Ev(0, T0 - 31 * MIN, T0, 2, (10.0, 10.0))  # 31m late: dropped
    result = online.fold(PLAN, [None], to_columns([late, too_late], 2))
    assert result.dropped.tolist() == [1]
    row = online.read(PLAN, result.values, T0).row(0)
    assert row["x_sum_1h"] == 1.0 and row["x_sum_10m"] == 0.0
    assert _pit([late, too_late], T0) == row


def test_an_event_stamped_in_the_future_counts_from_its_commit() -> None:
    future = Ev(0, T0 + 30 * MIN, T0, 1, (1.0, 1.0))
    assert _read([future], T0)["x_count_3m"] == 1
    assert _read([future], T0 + 3 * MIN)["x_count_3m"] == 0  # aggregated at T0, not T0 + 30m
    assert _pit([future], T0 - 1)["x_count_1h"] == 0  # not visible before its commit


def test_an_event_is_not_visible_before_its_commit() -> None:
    late = Ev(0, T0 - 5 * MIN, T0, 1, (1.0, 1.0))
    assert _pit([late], T0 - 1)["x_count_1h"] == 0
    assert _pit([late], T0)["x_count_1h"] == 1


def test_fold_evicts_tiles_and_recent_events_no_window_reaches() -> None:
    old = Ev(0, T0, T0, 1, (1.0, 1.0))
    stored = online.fold(PLAN, [None], to_columns([old], 2)).values
    later = online.fold(PLAN, stored, to_columns([], 2), commit_us=T0 + 61 * MIN)
    assert later.values == [None]  # nothing left: the server deletes the key


def test_keyed_streams_get_their_own_plan() -> None:
    plan = check(
        [
            AggregationDefinition(name="a", function="count", window="1h"),
            AggregationDefinition(name="b", function="count", window="1h", key="id"),
            AggregationDefinition(name="c", source="x", function="sum", window="1h", key="y"),
        ],
        TYPES,
        record_identifier="id",
        config=AggregationConfig(),
    )
    assert [(s.key, s.sources) for s in plan.streams] == [(None, ()), ("y", ("x",))]
    assert plan.aggregations["c"].stream == 1 and plan.aggregations["b"].stream == 0


def test_kernel_function_codes_agree_with_the_plan() -> None:
    names = ("COUNT", "SUM", "MEAN", "MIN", "MAX", "LAST", "LAST_N")
    assert {n.lower(): getattr(kernels, n) for n in names} == FUNCTION_CODES


def test_requests_never_compile_after_warm_up(warmed: WarmUp) -> None:
    # Writable, non-contiguous and int32 inputs all go through the one read-only signature.
    # (Other tests call .py_func, whose calls into jitted helpers compile variants: count from
    # here.)
    before = signature_counts()
    assert all(before[name] >= n for name, n in warmed.signatures.items())
    events = to_columns([Ev(0, T0, T0, 1, (1.0, 2.0)), Ev(1, T0, T0, 2, (3.0, 4.0))], 2)
    stored = online.fold(PLAN, [None, None], events).values
    online.read(PLAN, stored, T0)
    keys = np.array([0, 1, 0], np.int32)
    times = np.array([T0, T0, T0, T0, T0, T0])[::2]
    offline.point_in_time(PLAN, events, keys, times)  # type: ignore[arg-type]
    assert signature_counts() == before


def test_factorize_keys_gives_shared_dense_codes() -> None:
    ev, qs = offline.factorize_keys(["b", "a", "b"], ["c", "a"])
    assert ev.tolist() == [1, 0, 1] and qs.tolist() == [2, 0]


def test_columns_for_the_dataset_builder() -> None:
    events = [Ev(0, T0, T0, 1, (1.5, 2.0)), Ev(0, T0, T0, 2, (math.nan, 3.0))]
    one = np.zeros(2, np.int64)
    got = offline.point_in_time(PLAN, to_columns(events, 2), one, np.array([T0 - 1, T0]))
    counts, valid = got.column("x_count_1h")
    assert counts.dtype == np.int64 and counts.tolist() == [0, 1] and valid.all()
    mins, valid = got.column("x_min_1h")
    assert valid.tolist() == [False, True] and mins[1] == 1.5
    lists, lengths = got.list_column("y_last2")
    assert lengths.tolist() == [0, 2] and lists[1].tolist() == [3.0, 2.0]
    assert got.row(1)["y_last2"] == [3, 2]  # Integral source: ints
