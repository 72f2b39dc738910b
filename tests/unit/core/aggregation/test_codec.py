"""The RocksDB form of tile state: round trips, size, layout checks, key layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation import kernels, online
from tessera.core.aggregation.codec import (
    HEADER,
    TileLayoutError,
    TileState,
    decode,
    empty_value,
    encode,
    value_size,
)
from tessera.core.aggregation.plan import StreamPlan
from tessera.core.keys import aggregate_key, group_prefix
from tests.unit.core.aggregation.reference import PLANS, Ev, streams, to_columns


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PLANS)).map(PLANS.__getitem__), streams())
def test_encode_of_decode_gives_the_stored_values_back(plan: StreamPlan, events: list[Ev]) -> None:
    s, r = plan.n_sources, plan.recent_capacity
    stored = online.fold(plan, [None] * 3, to_columns(events, 2)).values
    state = decode(stored, s, r)
    assert encode(state) == stored
    for i, value in enumerate(stored):
        one = decode([value], s, r)
        a, b = state.off[i], state.off[i + 1]
        for got, whole in zip(one.tiles()[1:], state.tiles()[1:], strict=True):
            np.testing.assert_array_equal(got, whole[a:b])
        for got, whole in zip(one.recent(), state.recent(), strict=True):
            np.testing.assert_array_equal(got[0], whole[i])
        if value is not None:
            flags = value[1]
            assert len(value) == value_size(len(one.tile_id), s, r, flags)
            assert HEADER.unpack(value[: HEADER.size]) == (1, s, r, len(one.tile_id))
            if len(one.tile_id):  # a block is left out exactly when the decoder knows it
                counted = bool((one.count == one.events[:, None]).all())
                exact = not one.sum_lo.view(np.int64).any()
                assert flags == (kernels.COUNT_IS_EVENTS * counted + kernels.LO_IS_ZERO * exact)
            # The layout before the flags (every block present) still reads the same.
            again = decode([_full_layout(one, s, r)], s, r)
            for got, want in zip(again.tiles() + again.recent(), one.tiles() + one.recent(),
                                 strict=True):
                np.testing.assert_array_equal(got, want)


def _full_layout(one: TileState, s: int, r: int) -> bytes:
    """A key's stored value with every block present (flags 0): what values written before the
    flags hold."""
    n = len(one.tile_id)
    parts = [HEADER.pack(1, s, r, n), one.tile_id, one.events, one.count, one.sum_hi,
             one.sum_lo, one.min, one.max, one.recent_len[0], one.recent_value[0],
             one.recent_time[0], one.recent_seq[0]]
    out = b"".join(p if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes()
                   for p in parts)
    assert len(out) == value_size(n, s, r)
    return out


def test_values_of_another_layout_or_corrupt_are_refused_naming_the_value() -> None:
    plan = PLANS["5m-tiles-default-lateness"]
    s, r = plan.n_sources, plan.recent_capacity
    value = online.fold(plan, [None], to_columns([Ev(0, 1, 1, 1, (1.0, 2.0))], 2)).values[0]
    assert value is not None
    for bad in (value[:-8], value[:-3], value[:5], empty_value(1, r)):
        with pytest.raises(TileLayoutError, match="aggregate value 1 "):
            decode([value, bad], s, r)
        with pytest.raises(TileLayoutError, match="does not match the stream's layout"):
            online.read(plan, [bad], 0)
    with pytest.raises(TileLayoutError):
        online.fold(plan, [b"\x00" * 16], to_columns([Ev(0, 1, 1, 1, (1.0, 2.0))], 2))


def test_an_absent_key_decodes_empty_and_encodes_to_none() -> None:
    state = decode([None], 2, 3)
    assert state.n_keys == 1 and len(state.tile_id) == 0 and state.recent_len.shape == (1, 2)
    assert encode(state) == [None]
    assert decode([empty_value(2, 3)], 2, 3).recent_value.shape == (1, 3, 2)


def test_aggregate_keys_are_a_contiguous_range_of_their_group() -> None:
    key = aggregate_key(7, 0, "user-1")
    assert key == group_prefix(7) + b"\x00user-1"
    assert group_prefix(7) <= key < group_prefix(8)
