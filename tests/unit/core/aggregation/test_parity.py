"""Online equals offline: tiles folded commit by commit, in random batches, and read at t give
what the point-in-time kernel computes at t from the history; and the reference agrees."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation import offline, online
from tessera.core.aggregation.plan import StreamPlan
from tests.unit.core.aggregation.reference import (
    PLANS,
    Ev,
    assert_same,
    magnitude,
    reference,
    rows,
    streams,
    to_columns,
)

KEYS = 3


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(PLANS)).map(PLANS.__getitem__), streams(max_events=50), st.data())
def test_incremental_online_reads_equal_point_in_time(
    plan: StreamPlan, events: list[Ev], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    bounds = [0, *cuts, len(events)]
    stored: list[bytes | None] = [None] * KEYS
    history: list[Ev] = []
    reads: list[tuple[int, list[dict[str, object]]]] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        batch = events[lo:hi]
        if not batch:
            continue
        # Arrival order within a commit batch does not matter; keys are grouped by the wrapper.
        shuffled = data.draw(st.permutations(batch))
        result = online.fold(plan, stored, to_columns(shuffled, 2))
        stored = result.values
        history += batch
        late = [e for e in batch if e.write_us - e.event_us > plan.lateness_us]
        assert int(result.dropped.sum()) == len(late)
        # Read somewhere between this commit and the next one.
        last = max(e.write_us for e in batch)
        nxt = events[hi].write_us - 1 if hi < len(events) else last + 3 * 3_600_000_000
        if nxt >= last:
            now = data.draw(st.integers(last, nxt))
            reads.append((now, rows(online.read(plan, stored, now))))
    if not reads:
        return
    times = np.array([t for t, _ in reads for _ in range(KEYS)], np.int64)
    keys = np.array([k for _ in reads for k in range(KEYS)], np.int64)
    pit = rows(offline.point_in_time(plan, to_columns(events, 2), keys, times))
    online_rows = [row for _, got in reads for row in got]
    for key, t, on, off in zip(keys, times, online_rows, pit, strict=True):
        where = f"key {key} t {t}"
        scale = magnitude(plan, events, int(key), int(t))
        assert_same(plan, on, off, scale, "online vs offline " + where)  # type: ignore[arg-type]
        assert_same(plan, on, reference(plan, history, int(key), int(t)), scale, where)
