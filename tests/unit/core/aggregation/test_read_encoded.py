"""The read path's encoding kernel: what it writes parses as `tessera.v1.Record` features and
carries exactly `online.read`'s values (negative and large integers, empty windows, lists)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.aggregation import online
from tessera.core.aggregation.columns import Events
from tessera.core.aggregation.spec import AggregationDefinition, check
from tessera.core.schema import FeatureType
from tessera.proto.v1 import feature_store_pb2 as pb

TYPES = {"id": FeatureType.parse("String"), "n": FeatureType.parse("Integral"),
         "x": FeatureType.parse("Fractional")}
MIN = 60_000_000
PLAN = check(
    [AggregationDefinition(name=f"{src}_{f}_{w}", source=src, function=f, window=w,
                           n=3 if f == "last_n" else None)
     for src in ("n", "x") for f in ("count", "sum", "mean", "min", "max", "last", "last_n")
     for w in ("5m", "1h")]
    + [AggregationDefinition(name="events_1h", function="count", window="1h")],
    TYPES, record_identifier="id",
).streams[0]

ints = st.integers(-(2**53), 2**53) | st.integers(-1000, 1000)
floats = st.floats(-1e300, 1e300, allow_nan=False) | st.sampled_from([0.0, -0.0, 0.1, -2.5])
event = st.tuples(st.integers(0, 3), st.integers(0, 90), st.one_of(st.none(), ints),
                  st.one_of(st.none(), floats))


def _decode(raw: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    for fv in pb.Record.FromString(raw).features:
        kind = fv.WhichOneof("value")
        assert kind is not None, f"{fv.feature_name} has no value"
        value = getattr(fv, kind)
        out[fv.feature_name] = list(value.values) if kind.endswith("_list") else value
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(event, max_size=40), st.integers(0, 120))
def test_encoded_features_equal_read_values(evs: list[tuple], read_min: int) -> None:
    keys = 4
    if evs:
        key = np.array([e[0] for e in evs], np.int64)
        t = np.array([e[1] * MIN for e in evs], np.int64)
        values = np.array([[np.nan if e[2] is None else float(e[2]),
                            np.nan if e[3] is None else e[3]] for e in evs], np.float64)
        order = np.argsort(key, kind="stable")
        events = Events(key[order], t[order], t[order], np.arange(1, len(evs) + 1)[order],
                        values[order])
        stored = online.fold(PLAN, [None] * keys, events, int(t.max())).values
    else:
        stored = [None] * keys
    now = max(read_min * MIN, max((e[1] * MIN for e in evs), default=0))
    expected = online.read(PLAN, stored, now)
    encoded = online.read_encoded(PLAN, stored, now, online.encoded_fields(PLAN, None))
    for i in range(keys):
        want = {k: v for k, v in expected.row(i).items() if v is not None}
        assert _decode(encoded[i]) == want


def test_a_subset_of_fields_in_plan_order() -> None:
    wanted = frozenset({"x_last_n_1h", "events_1h", "n_sum_5m"})
    fields = online.encoded_fields(PLAN, wanted)
    encoded = online.read_encoded(PLAN, [None], 0, fields)
    names = [fv.feature_name for fv in pb.Record.FromString(encoded[0]).features]
    assert names == ["n_sum_5m", "x_last_n_1h", "events_1h"]  # empty: 0, [], 0; nulls left out
    assert _decode(encoded[0]) == {"n_sum_5m": 0, "x_last_n_1h": [], "events_1h": 0}
