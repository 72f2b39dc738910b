"""The dataset builder's aggregation features, against the plain-Python reference of the contract
(tests/unit/core/aggregation/reference.py) on offline histories written as the server writes
them: late and future-stamped events, null values, deletes, as_of, a keyed stream, integer ids,
a group with no files, and random histories."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.client import OfflineStore
from tessera.core import offline_layout as layout
from tessera.core.aggregation.spec import AggregationConfig
from tessera.core.aggregation.spec import AggregationDefinition as Agg
from tessera.core.errors import InvalidRequestError
from tessera.core.schema import FeatureGroup
from tests.offline_fixtures import BASE_WRITE_US, make_group, write_history
from tests.unit.core.aggregation.reference import Ev, assert_same, magnitude, reference

S = 1_000_000
MIN = 60 * S
T0 = BASE_WRITE_US // (60 * MIN) * (60 * MIN)  # a whole hour


def _aggregations() -> list[Agg]:
    aggs = []
    for w in ("3m", "10m", "1h"):
        aggs += [
            Agg(name=f"events_{w}", function="count", window=w),
            Agg(name=f"clicks_sum_{w}", source="clicks", function="sum", window=w),
            Agg(name=f"amount_count_{w}", source="amount", function="count", window=w),
            Agg(name=f"amount_mean_{w}", source="amount", function="mean", window=w),
            Agg(name=f"amount_min_{w}", source="amount", function="min", window=w),
            Agg(name=f"amount_max_{w}", source="amount", function="max", window=w),
            Agg(name=f"amount_last_{w}", source="amount", function="last", window=w),
        ]
    aggs += [
        Agg(name="amount_last3", source="amount", function="last_n", n=3, window="10m"),
        Agg(name="clicks_last2", source="clicks", function="last_n", n=2, window="1h"),
        Agg(name="merchant_events_1h", function="count", window="1h", key="merchant"),
        Agg(
            name="merchant_amount_sum_10m",
            source="amount",
            function="sum",
            window="10m",
            key="merchant",
        ),
        Agg(
            name="merchant_clicks_last2",
            source="clicks",
            function="last_n",
            n=2,
            window="1h",
            key="merchant",
        ),
    ]
    return aggs


# Minute tiles, lateness 30m (so some late events are dropped), a 1h TTL on records.
USERS = make_group(
    "users",
    {
        "user_id": "String",
        "ts": "Fractional",
        "clicks": "Integral",
        "amount": "Fractional",
        "merchant": "String",
    },
    record_id="user_id",
    ttl_s=3600,
    aggregations=_aggregations(),
    aggregation_config=AggregationConfig(tile_size="1m", lateness="30m"),
)
USER_PLAIN = ["ts", "clicks", "amount", "merchant"]
USER_AGGS = [a.name for a in USERS.definition.aggregations]
# Integer record ids and an integer key feature; the default tile size and lateness.
ITEMS = make_group(
    "items",
    {"item_id": "Integral", "ts": "Fractional", "price": "Fractional", "shop": "Integral"},
    record_id="item_id",
    aggregations=[
        Agg(name="sales_10m", function="count", window="10m"),
        Agg(name="price_sum_1h", source="price", function="sum", window="1h"),
        Agg(name="price_last2", source="price", function="last_n", n=2, window="1h"),
        Agg(name="shop_sales_1h", function="count", window="1h", key="shop"),
        Agg(name="shop_price_max_1h", source="price", function="max", window="1h", key="shop"),
    ],
)


def put(
    rid: Any, seq: int, write_min: float, lag_min: float = 0.0, **values: Any
) -> dict[str, Any]:
    """A history row: committed at T0 + write_min minutes, stamped lag_min minutes before
    (negative: in the future)."""
    write = T0 + round(write_min * MIN)
    row = {
        "tessera_seq": seq,
        "write_time": write,
        "tessera_event_time": write - round(lag_min * MIN),
        **values,
    }
    row.setdefault("user_id" if isinstance(rid, str) else "item_id", rid)
    return row


def at(us: int) -> datetime:
    """Epoch microseconds as an exact datetime (as epoch seconds they would round)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def spine_points(
    ids: Sequence[Any], minutes: Sequence[float | None]
) -> list[tuple[Any, int | None]]:
    """(id, T0 + minutes in microseconds) per spine row."""
    times = [None if m is None else T0 + round(m * MIN) for m in minutes]
    return list(zip(ids, times, strict=True))


def spine_table(
    ids: Sequence[Any],
    minutes: Sequence[float | None],
    id_type: pa.DataType,
    id_name: str = "user_id",
) -> pa.Table:
    us = [t for _, t in spine_points(ids, minutes)]
    return pa.table(
        {
            id_name: pa.array(ids, id_type),
            "t": pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )


def reference_aggregates(
    history: Sequence[Mapping[str, Any]],
    group: FeatureGroup,
    spine: Sequence[tuple[Any, int | None]],
    names: Sequence[str],
    *,
    as_of_us: int | None = None,
) -> list[dict[str, Any]]:
    """The contract by brute force: per spine (id, t us), each named aggregation, with the
    scale of each sum's rounding error (`magnitude`) under '__scale' and the streams whose key
    is null (every aggregate null) under '__null'."""
    d = group.definition
    plan = d.aggregation_plan()
    rows = [r for r in history if as_of_us is None or r[layout.WRITE_TIME] <= as_of_us]
    codes: dict[Any, int] = {}

    def code(v: Any) -> int:
        return codes.setdefault(v, len(codes))

    id_name = d.record_identifier_feature_name
    events = {}
    for stream in plan.streams:
        key = stream.key or id_name
        events[stream.stream_id] = [
            Ev(
                code(r[key]),
                r[layout.EVENT_TIME],
                r[layout.WRITE_TIME],
                r[layout.SEQ],
                tuple(math.nan if r.get(s) is None else float(r[s]) for s in stream.sources),
            )
            for r in rows
            if not r[layout.IS_DELETED] and r.get(key) is not None
        ]
    out = []
    for rid, t in spine:
        got: dict[str, Any] = {"__scale": {}, "__null": set()}
        for stream in plan.streams:
            k = None if t is None else rid
            if stream.key is not None and k is not None:
                # The row the ASOF join picks, whatever its deleted or expired state.
                mine = [r for r in rows if r[id_name] == rid and r[layout.EVENT_TIME] <= t]
                picked = max(
                    mine, key=lambda r: (r[layout.EVENT_TIME], r[layout.SEQ]), default=None
                )
                k = None if picked is None else picked.get(stream.key)
            if k is None:
                got.update({a.name: None for a in stream.aggregations})
                got["__null"].add(stream.stream_id)
                continue
            assert t is not None
            evs = events[stream.stream_id]
            got.update(reference(stream, evs, code(k), t))
            got["__scale"].update(magnitude(stream, evs, code(k), t))
        out.append({n: got[n] for n in names} | {k: got[k] for k in ("__scale", "__null")})
    return out


def assert_rows_match(
    group: FeatureGroup,
    got: Sequence[Mapping[str, Any]],
    want: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    prefix: str = "",
) -> None:
    plan = group.definition.aggregation_plan()
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for stream in plan.streams:
            mine = tuple(a for a in stream.aggregations if a.name in names)
            gs = {a.name: g[prefix + a.name] for a in mine}
            ws = {a.name: w[a.name] for a in mine}
            if stream.stream_id in w["__null"]:
                assert gs == ws == dict.fromkeys(gs), f"row {i}"  # a null key: all null
                continue
            sub = dataclasses.replace(stream, aggregations=mine)
            assert_same(sub, gs, ws, w["__scale"], f"row {i}")


# A history of three users: late events (some past the 30m lateness), future-stamped ones, null
# values, a delete and a put after it, a merchant change, and a user whose record expires.
HISTORY = [
    put("u1", 1, 0, 0, clicks=1, amount=10.0, merchant="m1"),
    put("u1", 2, 1, 0.5, clicks=2, amount=None, merchant="m1"),
    put("u2", 3, 1, -20, clicks=None, amount=5.5, merchant="m1"),  # 20m in the future
    put("u1", 4, 2, 25, clicks=4, amount=-3.25, merchant="m2"),  # 25m late: kept
    put("u1", 5, 2, 31, clicks=100, amount=1000.0, merchant="m2"),  # 31m late: dropped
    put("u2", 6, 4, 0, is_deleted=True),
    put("u3", 7, 4, 0, clicks=7, amount=0.125, merchant=None),
    put("u2", 8, 6, 0, clicks=8, amount=2.0, merchant="m2"),
    put("u1", 9, 6, 0, clicks=9, amount=4.0, merchant="m1"),
    put("u1", 10, 6, 0, clicks=10, amount=4.0, merchant="m1"),  # a tie on times: seq decides
    put("u3", 11, 20, 0, is_deleted=True),
    put("u1", 12, 70, 1, clicks=None, amount=None, merchant="m3"),
    put("u2", 13, 80, 75, clicks=13, amount=13.0, merchant="m1"),  # far too late
]
MINUTES = [
    -1,
    0,
    0.5,
    1,
    1.5,
    2,
    3,
    3.9,
    4,
    5,
    6,
    6.01,
    9,
    10,
    12,
    20,
    21,
    25,
    59,
    61,
    70,
    71,
    80,
    90,
    200,
]


def full_spine() -> tuple[list[Any], list[float | None]]:
    ids: list[Any] = []
    minutes: list[float | None] = []
    for rid in ("u1", "u2", "u3", "u9"):
        ids += [rid] * len(MINUTES)
        minutes += MINUTES
    ids += [None, "u1"]
    minutes += [5, None]
    return ids, minutes


def test_every_aggregation_equals_the_reference(root: Path, store: OfflineStore) -> None:
    history = write_history(root, USERS, HISTORY, rows_per_file=4)
    ids, minutes = full_spine()
    sp = spine_table(ids, minutes, pa.string())
    got = store.dataset(sp, timestamp="t", features=["users"]).to_arrow().to_pylist()
    points = spine_points(ids, minutes)
    want = reference_aggregates(history, USERS, points, USER_AGGS)
    assert_rows_match(USERS, got, want, USER_AGGS)


def test_hand_checked_values(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, HISTORY)
    sp = spine_table(
        ["u1", "u1", "u2", "u2", "u3", "u9", None, "u1"], [2, 6, 3, 6, 25, 6, 6, None], pa.string()
    )
    names = [
        "clicks",
        "events_10m",
        "clicks_sum_10m",
        "amount_last3",
        "amount_mean_10m",
        "merchant_events_1h",
        "merchant_amount_sum_10m",
    ]
    got = store.dataset(sp, timestamp="t", features={"users": names}).to_arrow()
    assert got.column_names == ["user_id", "t", *names]
    rows = got.to_pylist()
    # u1 at 2m: seqs 1, 2, 4 (5 is dropped: 31m late); seq 4 is aggregated 25m back, past 10m.
    assert rows[0]["events_10m"] == 2 and rows[0]["clicks_sum_10m"] == 3
    assert rows[0]["amount_last3"] == [10.0] and rows[0]["amount_mean_10m"] == 10.0
    # u1 at 6m: seq 10 then 9 (same times: seq decides), then 1 (seq 2's amount is null).
    assert rows[1]["amount_last3"] == [4.0, 4.0, 10.0]
    assert rows[1]["merchant_events_1h"] == 5  # m1: seqs 1, 2, 3 (u2's), 9 and 10
    # u2 at 3m: deleted at 4m, not yet; its future-stamped put counts from its commit (1m).
    assert rows[2]["events_10m"] == 1 and rows[2]["clicks"] is None
    # u2 at 6m: the delete does not touch aggregates: seqs 3 and 8.
    assert rows[3]["events_10m"] == 2 and rows[3]["clicks"] == 8
    # u3 at 25m: its record is deleted, its events still count; the picked row (the delete
    # marker) has no merchant: the keyed stream reads null.
    assert rows[4]["events_10m"] == 0 and rows[4]["clicks"] is None
    assert rows[4]["merchant_events_1h"] is None and rows[4]["merchant_amount_sum_10m"] is None
    # u9 never written: zero counts, empty lists, null means; no row picked: keyed nulls.
    assert rows[5]["events_10m"] == 0 and rows[5]["clicks_sum_10m"] == 0
    assert rows[5]["amount_last3"] == [] and rows[5]["amount_mean_10m"] is None
    assert rows[5]["merchant_events_1h"] is None
    # A null id or time: every aggregate null.
    for row in rows[6:]:
        assert all(row[n] is None for n in names)


def test_keyed_stream_uses_the_picked_row_even_expired(root: Path, store: OfflineStore) -> None:
    history = write_history(root, USERS, HISTORY)
    # u1's record at 200m (picked: seq 12 at 69m, merchant m3) has expired (1h TTL).
    sp = spine_table(["u1", "u1"], [100, 200], pa.string())
    got = (
        store.dataset(sp, timestamp="t", features={"users": ["merchant", "merchant_events_1h"]})
        .to_arrow()
        .to_pylist()
    )
    assert [r["merchant"] for r in got] == ["m3", None]
    assert [r["merchant_events_1h"] for r in got] == [1, 0]
    want = reference_aggregates(
        history,
        USERS,
        [(r, T0 + m * MIN) for r, m in (("u1", 100), ("u1", 200))],
        ["merchant_events_1h"],
    )
    assert [w["merchant_events_1h"] for w in want] == [1, 0]


def test_as_of_ignores_later_writes(root: Path, store: OfflineStore) -> None:
    history = write_history(root, USERS, HISTORY)
    ids, minutes = full_spine()
    sp = spine_table(ids, minutes, pa.string())
    points = spine_points(ids, minutes)
    for as_of_us in (T0 + 3 * MIN, T0 + 6 * MIN - 1, T0 + 6 * MIN):
        got = (
            store.dataset(sp, timestamp="t", features=["users"], as_of=at(as_of_us))
            .to_arrow()
            .to_pylist()
        )
        want = reference_aggregates(history, USERS, points, USER_AGGS, as_of_us=as_of_us)
        assert_rows_match(USERS, got, want, USER_AGGS)
    cut = store.dataset(
        spine_table(["u1"], [6], pa.string()),
        timestamp="t",
        features={"users": ["events_10m"]},
        as_of=at(T0 + 3 * MIN),
    ).to_arrow()
    assert cut.column("events_10m").to_pylist() == [2]


def test_integer_ids_and_keys_and_a_spine_of_another_integer_type(
    root: Path, store: OfflineStore
) -> None:
    rows = [
        put(7, 1, 0, 0, price=1.5, shop=1),
        put(7, 2, 1, 2, price=2.5, shop=2),
        put(8, 3, 1, 0, price=None, shop=1),
        put(8, 4, 3, 0, is_deleted=True),
        put(9, 5, 5, -3, price=9.0, shop=None),
        put(7, 6, 30, 0, price=0.25, shop=1),
    ]
    history = write_history(root, ITEMS, rows)
    items = [7, 8, 9, 10, 7, 8, 9, 7, None]
    minutes: list[float | None] = [2, 2, 6, 6, 31, 31, 100, None, 5]
    sp = spine_table(items, minutes, pa.int32(), id_name="item")
    names = [a.name for a in ITEMS.definition.aggregations]
    got = store.dataset(
        sp, timestamp="t", features={"items": ["price", *names]}, on="item", prefix_group=True
    ).to_arrow()
    assert got.schema.field("items__price_last2").type.value_type == pa.float64()
    assert got.schema.field("items__shop_sales_1h").type == pa.int64()
    points = spine_points(items, minutes)
    want = reference_aggregates(history, ITEMS, points, names)
    assert_rows_match(ITEMS, got.to_pylist(), want, names, prefix="items__")
    # Item 7 at 2m picks seq 1 (shop 1; seq 2 is stamped earlier), item 8 seq 3 (shop 1); item 9
    # at 6m has no row yet (stamped 8m), item 10 none at all; at 31m item 7 picks seq 6 (shop 1:
    # seqs 1, 3, 6) and item 8 its delete marker: no shop.
    assert got.column("items__shop_sales_1h").to_pylist()[:6] == [2, 2, None, None, 3, None]
    # Item 9's future-stamped put counts from its commit (5m), though no row is picked at 6m.
    assert got.column("items__sales_10m").to_pylist()[:4] == [2, 1, 1, 0]


def test_a_group_without_files_has_no_events(root: Path, store: OfflineStore) -> None:
    (root / "items").mkdir(parents=True)
    (root / "items" / "_group.json").write_text(ITEMS.model_dump_json())
    write_history(root, USERS, HISTORY[:2])
    sp = pa.table(
        {
            "user_id": ["u1", "u1"],
            "item_id": pa.array([7, None], pa.int64()),
            "t": pa.array([T0 + MIN, T0 + MIN]).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    got = store.dataset(
        sp,
        timestamp="t",
        features={
            "items": ["price", "sales_10m", "price_sum_1h", "price_last2", "shop_sales_1h"],
            "users": ["events_3m"],
        },
    ).to_arrow()
    assert got.select(
        ["price", "sales_10m", "price_sum_1h", "price_last2", "shop_sales_1h", "events_3m"]
    ).to_pylist() == [
        {
            "price": None,
            "sales_10m": 0,
            "price_sum_1h": 0.0,
            "price_last2": [],
            "shop_sales_1h": None,
            "events_3m": 2,
        },
        {
            "price": None,
            "sales_10m": None,
            "price_sum_1h": None,
            "price_last2": None,
            "shop_sales_1h": None,
            "events_3m": 2,
        },
    ]


def test_outputs_agree_and_columns_follow_the_request(
    root: Path, store: OfflineStore, tmp_path: Path
) -> None:
    write_history(root, USERS, HISTORY)
    ids, minutes = full_spine()
    sp = spine_table(ids, minutes, pa.string()).append_column("label", pa.array(range(len(ids))))
    names = ["amount_last3", "clicks", "events_1h", "merchant_clicks_last2", "amount_mean_3m"]
    ds = store.dataset(sp, timestamp="t", features={"users": names}, prefix_group=True)
    cols = ["user_id", "t", "label", *(f"users__{n}" for n in names)]
    assert ds.columns == cols
    arrow = ds.to_arrow()
    assert arrow.column_names == cols
    assert arrow.schema == ds.schema()
    assert arrow.column("label").to_pylist() == list(range(len(ids)))
    assert ds.to_parquet(tmp_path / "out.parquet") == len(ids)
    written = pq.read_table(tmp_path / "out.parquet")
    assert written.to_pylist() == arrow.to_pylist()
    batches = list(ds.to_batches(batch_rows=7))
    assert pa.Table.from_batches(batches).to_pylist() == arrow.to_pylist()
    pd.testing.assert_frame_equal(ds.to_pandas(), arrow.to_pandas())
    empty = store.dataset(
        spine_table([], [], pa.string()), timestamp="t", features={"users": names}
    )
    table = empty.to_arrow()
    assert table.num_rows == 0 and table.column_names == ["user_id", "t", *names]
    assert table.schema.field("amount_last3").type.value_type == pa.float64()
    assert table.schema.field("merchant_clicks_last2").type.value_type == pa.int64()
    assert table.schema.field("events_1h").type == pa.int64()
    assert table.schema.field("amount_mean_3m").type == pa.float64()


def test_features_none_lists_plain_features_then_aggregations(
    root: Path, store: OfflineStore
) -> None:
    write_history(root, USERS, HISTORY[:1])
    ds = store.dataset(
        spine_table(["u1"], [1], pa.string()), timestamp="t", features={"users": None}
    )
    assert ds.columns == ["user_id", "t", "clicks", "amount", "merchant", *USER_AGGS]
    only = store.dataset(
        spine_table(["u1"], [1], pa.string()), timestamp="t", features={"users": ["events_3m"]}
    )
    assert only.sql.count("ASOF LEFT JOIN") == 0  # nothing to read from the picked row
    assert only.to_arrow().column("events_3m").to_pylist() == [1]


def test_a_group_without_aggregations_renders_the_same_query(
    root: Path, store: OfflineStore
) -> None:
    plain = make_group(
        "plain",
        {"user_id": "String", "ts": "Fractional", "clicks": "Integral"},
        record_id="user_id",
    )
    write_history(root, plain, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    ds = store.dataset(spine_table(["u1"], [1], pa.string()), timestamp="t", features=["plain"])
    assert ds.query.hidden_columns() == []
    assert "__tessera_id_0 AS" not in ds.query.unordered_sql().split("__tessera_joined AS")[1]
    assert ds.query.read_sql("r", None) == (
        "SELECT * EXCLUDE (__tessera_row) FROM r ORDER BY __tessera_row"
    )


def test_an_unknown_name_lists_features_and_aggregations(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, HISTORY[:1])
    with pytest.raises(InvalidRequestError) as err:
        store.dataset(
            spine_table(["u1"], [1], pa.string()), timestamp="t", features={"users": ["events_2h"]}
        )
    known = ", ".join(["user_id", *USER_PLAIN, *USER_AGGS])
    assert err.value.message == f"feature 'events_2h' is not in group 'users'; known: {known}"
    with pytest.raises(InvalidRequestError, match="two columns named 'events_3m'"):
        store.dataset(
            spine_table(["u1"], [1], pa.string()).append_column("events_3m", pa.array([1])),
            timestamp="t",
            features={"users": ["events_3m"]},
        )


# --- random histories ---------------------------------------------------------------------------

PROPERTY_AGGS = [
    "events_3m",
    "clicks_sum_10m",
    "amount_mean_10m",
    "amount_min_3m",
    "amount_max_1h",
    "amount_last_10m",
    "amount_last3",
    "clicks_last2",
    "merchant_events_1h",
    "merchant_amount_sum_10m",
    "merchant_clicks_last2",
]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    rows = []
    write_min = 0.0
    for seq in range(1, draw(st.integers(0, 25)) + 1):
        write_min += draw(st.sampled_from([0, 0, 1 / 3, 1, 2.5, 7]))
        lag = draw(st.one_of(st.sampled_from([0, 0.5, -2, 10, 29.9, 30, 31]), st.floats(-5, 70)))
        lag = round(lag * 60) / 60  # whole seconds, so times tie often
        if draw(st.integers(0, 5)) == 0:
            rows.append(
                put(draw(st.sampled_from(["a", "b", "c"])), seq, write_min, lag, is_deleted=True)
            )
            continue
        rows.append(
            put(
                draw(st.sampled_from(["a", "b", "c"])),
                seq,
                write_min,
                lag,
                clicks=draw(st.none() | st.integers(-(2**40), 2**40)),
                amount=draw(st.none() | st.floats(-1e6, 1e6, allow_nan=False)),
                merchant=draw(st.none() | st.sampled_from(["m1", "m2"])),
            )
        )
    last = write_min + 70
    n = draw(st.integers(0, 12))
    spine = [
        (
            draw(st.sampled_from(["a", "b", "c", "zz"])),
            draw(st.none() | st.integers(-5 * 60, round(last * 60)).map(lambda s: s / 60)),
        )
        for _ in range(n)
    ]
    names = draw(st.lists(st.sampled_from(PROPERTY_AGGS), min_size=1, unique=True))
    as_of = draw(st.none() | st.floats(-1, write_min + 1))
    return {
        "rows": rows,
        "spine": spine,
        "names": names,
        "as_of": as_of,
        "rows_per_file": draw(st.sampled_from([None, 2])),
        "seq_order": draw(st.booleans()),
    }


_dirs = itertools.count()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aggregation_properties")


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sc=scenarios())
def test_random_histories_equal_the_reference(sc: dict[str, Any], base_dir: Path) -> None:
    root = base_dir / f"s{next(_dirs)}"
    history = write_history(
        root, USERS, sc["rows"], rows_per_file=sc["rows_per_file"], seq_order=sc["seq_order"]
    )
    ids = [i for i, _ in sc["spine"]]
    minutes = [m for _, m in sc["spine"]]
    as_of_us = None if sc["as_of"] is None else T0 + round(sc["as_of"] * MIN)
    with OfflineStore(root, progress=False) as off:
        got = off.dataset(
            spine_table(ids, minutes, pa.string()),
            timestamp="t",
            features={"users": sc["names"]},
            as_of=None if as_of_us is None else at(as_of_us),
        ).to_arrow()
    assert got.column_names == ["user_id", "t", *sc["names"]]
    points = spine_points(ids, minutes)
    want = reference_aggregates(history, USERS, points, sc["names"], as_of_us=as_of_us)
    assert_rows_match(USERS, got.to_pylist(), want, sc["names"])
