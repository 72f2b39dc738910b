"""Each kernel against its own `.py_func` and against the brute-force reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation import codec, kernels, offline, online
from tessera.core.aggregation._arrays import ro_f64, ro_i64
from tessera.core.aggregation.plan import StreamPlan
from tests.unit.core.aggregation.reference import (
    PLANS,
    Ev,
    assert_same,
    magnitude,
    query_times,
    reference,
    rows,
    streams,
    to_columns,
)

plans = st.sampled_from(sorted(PLANS)).map(PLANS.__getitem__)
FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=15, deadline=None)  # the pure-Python .py_func runs


def _same_arrays(a: object, b: object) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_arrays(x, y)
        return
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)  # NaN == NaN here, and exact otherwise


def _split(events: list[Ev], cut: int) -> tuple[list[Ev], list[Ev]]:
    return events[:cut], events[cut:]


@SLOW
@given(plans, streams(), st.data())
def test_fold_tiles_matches_its_py_func(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    first, second = _split(events, data.draw(st.integers(0, len(events))))
    stored: list[bytes | None] = [None, None, None]
    if first:
        stored = online.fold(plan, stored, to_columns(first, 2)).values
    cols = to_columns(sorted(second, key=lambda e: e.key), 2)
    commit = max((e.write_us for e in events), default=0)
    state = codec.decode(stored, plan.n_sources, plan.recent_capacity)
    args = online.fold_arguments(plan, state, cols, commit)
    _same_arrays(kernels.fold_tiles(*args), kernels.fold_tiles.py_func(*args))


@SLOW
@given(plans, streams(), st.data())
def test_fold_values_matches_its_py_func_and_the_three_kernels(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    """The write path's one call: its own .py_func, and decode + fold_tiles + encode on the
    events sorted by key (the counting sort keeps each key's events in input order)."""
    first, second = _split(events, data.draw(st.integers(0, len(events))))
    stored: list[bytes | None] = [None, None, None]
    if first:
        stored = online.fold(plan, stored, to_columns(first, 2)).values
    commit = max((e.write_us for e in events), default=0)
    s, r = plan.n_sources, plan.recent_capacity
    buf, off = codec.pack(stored, s, r)
    cols = to_columns(second, 2)
    args = (buf, off, ro_i64(cols.key), ro_i64(cols.event_time_us), ro_i64(cols.write_time_us),
            ro_i64(cols.seq), ro_f64(cols.values), plan.recent_caps, plan.tile_us,
            plan.lateness_us, plan.retention_tiles, commit, s, r)
    got = kernels.fold_values(*args)
    _same_arrays(got[:3], kernels.fold_values.py_func(*args)[:3])
    assert got[3] == -1
    by_key = to_columns(sorted(second, key=lambda e: e.key), 2)
    state = codec.decode(stored, s, r)
    tiles, recent, dropped = kernels.fold_tiles(*online.fold_arguments(plan, state, by_key, commit))
    _same_arrays(got[:3], (*kernels.encode_values(*tiles, *recent), dropped))


@SLOW
@given(plans, streams(), st.data())
def test_read_tiles_matches_its_py_func(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    stored = online.fold(plan, [None, None, None], to_columns(events, 2)).values
    now = data.draw(query_times(events))
    state = codec.decode(stored, plan.n_sources, plan.recent_capacity)
    args = online.read_arguments(plan, state, now)
    _same_arrays(kernels.read_tiles(*args), kernels.read_tiles.py_func(*args))


@SLOW
@given(plans, streams(), st.data())
def test_stored_value_kernels_match_their_py_func(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    s, r = plan.n_sources, plan.recent_capacity
    stored = online.fold(plan, [None, None, None], to_columns(events, 2)).values
    buf, off = codec.pack(stored, s, r)
    for kern, args in [
        (kernels.decode_values, (buf, off, s, r)),
        (
            kernels.encode_values,
            (*codec.decode(stored, s, r).tiles(), *codec.decode(stored, s, r).recent()),
        ),
        (
            kernels.read_values,
            (buf, off, data.draw(query_times(events)), plan.tile_us, s, r, *plan.kernel_plan()),
        ),
    ]:
        _same_arrays(kernels_result(kern, args), kernels_result(kern.py_func, args))


def kernels_result(fn: object, args: tuple[object, ...]) -> tuple[object, ...]:
    """A kernel's result with its scalars (error indexes) as 0-d arrays, for _same_arrays."""
    out = fn(*args)  # type: ignore[operator]
    return tuple(np.asarray(x) if not isinstance(x, tuple) else x for x in out)


@SLOW
@given(plans, streams(), st.data())
def test_pit_aggregate_matches_its_py_func(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    queries = data.draw(st.lists(st.tuples(st.integers(0, 3), query_times(events)), max_size=12))
    queries.sort(key=lambda q: q[1])
    cols = to_columns(events, 2)  # commit order
    q_key = np.array([k for k, _ in queries], np.int64)
    q_time = np.array([t for _, t in queries], np.int64)
    q_row = np.array(data.draw(st.permutations(range(len(queries)))), np.int64)
    args = offline.pit_arguments(plan, cols, q_key, q_time, q_row, 4)
    _same_arrays(kernels.pit_aggregate(*args), kernels.pit_aggregate.py_func(*args))


@FAST
@given(plans, streams(), st.data())
def test_point_in_time_matches_the_reference(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    # Queries in any order, before any event, at event times, for a key with no events (3).
    queries = data.draw(st.lists(st.tuples(st.integers(0, 3), query_times(events)), max_size=20))
    queries += [(e.key, e.write_us) for e in events[:5]]
    shuffled = data.draw(st.permutations(events))  # the wrapper sorts
    got = rows(
        offline.point_in_time(
            plan,
            to_columns(shuffled, 2),
            np.array([k for k, _ in queries], np.int64),
            np.array([t for _, t in queries], np.int64),
        )
    )
    for (key, t), row in zip(queries, got, strict=True):
        want = reference(plan, events, key, t)
        assert_same(plan, row, want, magnitude(plan, events, key, t), f"key {key} t {t}")


@FAST
@given(plans, streams(), st.data())
def test_read_after_folding_everything_matches_the_reference(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    stored = online.fold(plan, [None] * 4, to_columns(events, 2)).values
    now = data.draw(query_times(events).filter(lambda t: all(e.write_us <= t for e in events)))
    for key, row in enumerate(rows(online.read(plan, stored, now))):
        want = reference(plan, events, key, now)
        assert_same(plan, row, want, magnitude(plan, events, key, now), f"key {key} now {now}")
