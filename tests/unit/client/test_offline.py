"""The point-in-time dataset builder, on offline files written as the server writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.client import Dataset, OfflineStore
from tessera.core.errors import FeatureGroupNotFoundError, InvalidRequestError
from tests.offline_fixtures import BASE_WRITE_US, make_group, write_history

S = 1_000_000
USERS = make_group(
    "users",
    {"user_id": "String", "ts": "Fractional", "clicks": "Integral", "ctr": "Fractional"},
    record_id="user_id",
)


def ts(*seconds: float | None) -> pa.Array:
    """Spine times from epoch seconds, as timestamp[us, UTC]."""
    us = [None if s is None else round(s * S) for s in seconds]
    return pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def spine(ids: list[str | None], seconds: list[float | None], **extra: list[Any]) -> pa.Table:
    return pa.table({"user_id": pa.array(ids, pa.string()), "t": ts(*seconds), **extra})


def clicks(off: OfflineStore, sp: pa.Table | pd.DataFrame | str, **kw: Any) -> list[Any]:
    kw.setdefault("timestamp", "t")
    ds = off.dataset(sp, features={"users": ["clicks"]}, **kw)
    return ds.to_arrow().column("clicks").to_pylist()


# --- which row a spine row sees ---------------------------------------------------------------


def test_latest_row_at_or_before_the_spine_time_is_used(root: Path, store: OfflineStore) -> None:
    write_history(
        root,
        USERS,
        [
            {"user_id": "u1", "ts": 10.0, "clicks": 1},
            {"user_id": "u1", "ts": 30.0, "clicks": 3},
            {"user_id": "u1", "ts": 20.0, "clicks": 2},  # out of order in event time
        ],
    )
    got = clicks(store, spine(["u1"] * 6, [5, 10, 19.999999, 20, 25, 99]))
    assert got == [None, 1, 1, 2, 2, 3]


def test_tie_on_event_time_goes_to_the_later_write(root: Path, store: OfflineStore) -> None:
    write_history(
        root,
        USERS,
        [
            {"user_id": "u1", "ts": 10.0, "clicks": 1, "tessera_seq": 7},
            {"user_id": "u1", "ts": 10.0, "clicks": 2, "tessera_seq": 9},
            {"user_id": "u1", "ts": 10.0, "clicks": 3, "tessera_seq": 8},
        ],
        seq_order=False,
    )
    assert clicks(store, spine(["u1"], [10])) == [2]


def test_late_write_with_an_older_event_time_does_not_win(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 20.0, "clicks": 2}])
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])  # higher seq
    assert clicks(store, spine(["u1", "u1"], [15, 25])) == [1, 2]


def test_delete_marker_reads_as_missing_until_the_next_put(root: Path, store: OfflineStore) -> None:
    write_history(
        root,
        USERS,
        [
            {"user_id": "u1", "ts": 10.0, "clicks": 1},
            {"user_id": "u1", "ts": 20.0, "is_deleted": True},
            {"user_id": "u1", "ts": 30.0, "clicks": 3},
        ],
    )
    ds = store.dataset(
        spine(["u1"] * 3, [15, 25, 35]), timestamp="t", features={"users": ["clicks", "ts"]}
    )
    assert ds.to_arrow().select(["clicks", "ts"]).to_pylist() == [
        {"clicks": 1, "ts": 10.0},
        {"clicks": None, "ts": None},  # the marker carries ts, but a deleted record has none
        {"clicks": 3, "ts": 30.0},
    ]


def test_group_ttl_expires_a_row(root: Path, store: OfflineStore) -> None:
    group = make_group(
        "users",
        {"user_id": "String", "ts": "Fractional", "clicks": "Integral"},
        record_id="user_id",
        ttl_s=60,
    )
    write_history(root, group, [{"user_id": "u1", "ts": 100.0, "clicks": 1}])
    assert clicks(store, spine(["u1"] * 3, [100, 159.999999, 160])) == [1, 1, None]


def test_row_expires_at_decides_and_null_never_expires_whatever_the_group_ttl(
    root: Path, store: OfflineStore
) -> None:
    # u2's row was written before the group had a TTL (UpdateFeatureGroup can set one later):
    # online, that record never expires, so offline it does not either.
    group = make_group(
        "users",
        {"user_id": "String", "ts": "Fractional", "clicks": "Integral"},
        record_id="user_id",
        ttl_s=60,
    )
    write_history(
        root,
        group,
        [
            {"user_id": "u1", "ts": 100.0, "clicks": 1, "tessera_expires_at": 500 * S},
            {"user_id": "u2", "ts": 100.0, "clicks": 2, "tessera_expires_at": None},
        ],
    )
    sp = spine(["u1", "u1", "u2", "u2"], [400, 500, 159, 10**9])
    assert clicks(store, sp) == [1, None, 2, 2]


def test_an_expired_row_does_not_fall_back_to_an_older_one(root: Path, store: OfflineStore) -> None:
    write_history(
        root,
        USERS,
        [
            {"user_id": "u1", "ts": 10.0, "clicks": 1},  # never expires
            {"user_id": "u1", "ts": 20.0, "clicks": 2, "tessera_expires_at": 25 * S},
        ],
    )
    assert clicks(store, spine(["u1", "u1"], [24, 26])) == [2, None]


def test_as_of_ignores_writes_after_it(root: Path, store: OfflineStore) -> None:
    write_history(
        root,
        USERS,
        [
            {"user_id": "u1", "ts": 10.0, "clicks": 1, "write_time": 1000 * S},
            {"user_id": "u1", "ts": 20.0, "clicks": 2, "write_time": 2000 * S},
            {"user_id": "u1", "ts": 15.0, "clicks": 3, "write_time": 3000 * S},  # a correction
        ],
    )
    sp = spine(["u1", "u1"], [17, 25])
    assert clicks(store, sp) == [3, 2]
    assert clicks(store, sp, as_of=2000.0) == [1, 2]
    assert clicks(store, sp, as_of=datetime(1970, 1, 1, 0, 33, 19, 999999)) == [1, 1]
    assert clicks(store, sp, as_of="1970-01-01T00:50:00Z") == [3, 2]
    assert clicks(store, sp, as_of=pd.Timestamp(1999_999_999, unit="us", tz="UTC")) == [1, 1]
    assert clicks(store, sp, as_of=999.0) == [None, None]


def test_as_of_reproduces_a_dataset_after_new_writes(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])
    sp = spine(["u1", "u2"], [50, 50])
    as_of = datetime.fromtimestamp((BASE_WRITE_US + 500_000) / S, UTC)  # after seq 1's write
    before = store.dataset(sp, timestamp="t", features={"users": ["clicks"]}).to_arrow()
    write_history(
        root,
        USERS,
        [
            {"user_id": "u1", "ts": 40.0, "clicks": 4, "write_time": 4_000_000_000 * S},
            {"user_id": "u2", "ts": 40.0, "clicks": 5, "write_time": 4_000_000_000 * S},
        ],
    )
    ds = store.dataset(sp, timestamp="t", features={"users": ["clicks"]}, as_of=as_of)
    assert ds.to_arrow() == before
    assert clicks(store, sp) == [4, 5]


def test_ids_absent_from_a_group_and_early_spine_times_read_null(
    root: Path, store: OfflineStore
) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])
    assert clicks(store, spine(["u9", "u1", None, "u1"], [50, 9, 50, None])) == [
        None,
        None,
        None,
        None,
    ]


def test_spine_order_and_duplicate_rows_are_kept(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": f"u{i}", "ts": 10.0, "clicks": i} for i in range(50)])
    rng = np.random.default_rng(3)
    ids = [f"u{i}" for i in rng.integers(0, 60, 5000)]
    labels = list(range(5000))
    got = store.dataset(
        spine(ids, [20.0] * 5000, label=labels), timestamp="t", features={"users": ["clicks"]}
    ).to_arrow()
    assert got.column("label").to_pylist() == labels
    assert got.column("user_id").to_pylist() == ids
    want = [int(i[1:]) if int(i[1:]) < 50 else None for i in ids]
    assert got.column("clicks").to_pylist() == want


# --- groups: empty, schema evolution, types -----------------------------------------------------


def test_empty_group_gives_null_columns_of_the_declared_types(
    root: Path, store: OfflineStore
) -> None:
    empty = make_group(
        "profiles",
        {
            "user_id": "String",
            "ts": "Fractional",
            "age": "Integral",
            "tags": "List[String]",
            "emb": "Vector[3]",
        },
        record_id="user_id",
    )
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "_group.json").write_text(empty.model_dump_json())
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])
    got = store.dataset(
        spine(["u1"], [20]),
        timestamp="t",
        features={"users": ["clicks"], "profiles": ["age", "tags", "emb"]},
    ).to_arrow()
    assert got.schema.field("age").type == pa.int64()
    assert got.schema.field("tags").type == pa.list_(pa.string())
    assert pa.types.is_fixed_size_list(got.schema.field("emb").type)
    assert got.schema.field("emb").type.list_size == 3
    assert got.select(["clicks", "age", "tags", "emb"]).to_pylist() == [
        {"clicks": 1, "age": None, "tags": None, "emb": None}
    ]


def test_feature_added_later_is_null_in_older_files(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])
    v2 = make_group(
        "users",
        {
            "user_id": "String",
            "ts": "Fractional",
            "clicks": "Integral",
            "ctr": "Fractional",
            "country": "String",
        },
        record_id="user_id",
        version=2,
    )
    (root / "users" / "_group.json").write_text(v2.model_dump_json())  # no file has it yet
    ds = store.dataset(
        spine(["u1"], [20]), timestamp="t", features={"users": ["clicks", "country"]}
    )
    assert ds.to_arrow().select(["clicks", "country"]).to_pylist() == [
        {"clicks": 1, "country": None}
    ]
    write_history(root, v2, [{"user_id": "u2", "ts": 10.0, "clicks": 2, "country": "fr"}])
    ds = store.dataset(
        spine(["u1", "u2"], [20, 20]), timestamp="t", features={"users": ["clicks", "country"]}
    )
    assert ds.to_arrow().select(["clicks", "country"]).to_pylist() == [
        {"clicks": 1, "country": None},
        {"clicks": 2, "country": "fr"},
    ]


def test_collection_features_keep_their_declared_types(root: Path, store: OfflineStore) -> None:
    group = make_group(
        "users",
        {
            "user_id": "String",
            "ts": "Fractional",
            "emb": "Vector[2]",
            "tags": "Set[String]",
            "hist": "List[Integral]",
        },
        record_id="user_id",
    )
    write_history(
        root,
        group,
        [{"user_id": "u1", "ts": 1.0, "emb": [0.5, 1.5], "tags": ["a"], "hist": [1, 2]}],
    )
    got = store.dataset(
        spine(["u1", "u2"], [2, 2]), timestamp="t", features={"users": ["emb", "tags", "hist"]}
    ).to_arrow()
    assert got.schema.field("emb").type == pa.list_(pa.float32(), 2)
    assert got.schema.field("hist").type.value_type == pa.int64()
    assert got.select(["emb", "tags", "hist"]).to_pylist() == [
        {"emb": [0.5, 1.5], "tags": ["a"], "hist": [1, 2]},
        {"emb": None, "tags": None, "hist": None},
    ]


def test_integer_record_ids_and_a_spine_column_per_group(root: Path, store: OfflineStore) -> None:
    items = make_group(
        "items",
        {"item_id": "Integral", "ts": "Fractional", "price": "Fractional"},
        record_id="item_id",
    )
    write_history(root, items, [{"item_id": 7, "ts": 1.0, "price": 9.5}])
    write_history(root, USERS, [{"user_id": "7", "ts": 1.0, "clicks": 3}])
    sp = pa.table({"buyer": ["7", "8"], "item": pa.array([7, 7], pa.int32()), "t": ts(2, 2)})
    got = store.dataset(
        sp,
        timestamp="t",
        features={"users": ["clicks"], "items": ["price"]},
        on={"users": "buyer", "items": "item"},
    ).to_arrow()
    assert got.select(["clicks", "price"]).to_pylist() == [
        {"clicks": 3, "price": 9.5},
        {"clicks": None, "price": 9.5},
    ]


# --- spine forms and timestamp types -----------------------------------------------------------


@pytest.mark.parametrize(
    "column",
    [
        pa.array([9_999_999, 10_000_000], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([9_999_999, 10_000_000], pa.int64()).cast(pa.timestamp("us")),  # naive = UTC
        pa.array([9_999_999_999, 10_000_000_000], pa.int64()).cast(
            pa.timestamp("ns", tz="Asia/Kolkata")
        ),
        pa.array([9_999_999_999, 10_000_000_999], pa.int64()).cast(pa.timestamp("ns")),  # floor
        pa.array([9_999, 10_000], pa.int64()).cast(pa.timestamp("ms")),
        pa.array([9.999999, 10.0]),  # epoch seconds
        pa.array([9, 10], pa.int32()),
    ],
    ids=["us-utc", "us-naive", "ns-kolkata", "ns-naive", "ms", "float-seconds", "int-seconds"],
)
def test_spine_timestamp_types_agree(root: Path, store: OfflineStore, column: pa.Array) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])
    sp = pa.table({"user_id": ["u1", "u1"], "t": column})
    assert clicks(store, sp) == [None, 1]
    assert (
        store.dataset(sp, timestamp="t", features={"users": ["clicks"]})
        .to_arrow()
        .column("t")
        .to_pylist()[1]
        is not None
    )


def test_nanosecond_spine_times_compare_at_microsecond_precision(
    root: Path, store: OfflineStore
) -> None:
    write_history(root, USERS, [{"user_id": "u1", "tessera_event_time": 10_000_001, "clicks": 1}])
    sp = pa.table(
        {
            "user_id": ["u1"] * 3,
            "t": pa.array([10_000_000_999, 10_000_001_000, 10_000_001_001]).cast(
                pa.timestamp("ns", tz="UTC")
            ),
        }
    )
    assert clicks(store, sp) == [None, 1, 1]


def test_every_spine_form_gives_the_same_dataset(
    root: Path, store: OfflineStore, tmp_path: Path
) -> None:
    write_history(root, USERS, [{"user_id": f"u{i}", "ts": 10.0, "clicks": i} for i in range(5)])
    table = spine(["u3", "u1", "u9", "u1"], [20, 5, 20, 20], label=[1, 2, 3, 4])
    want = [3, None, None, 1]
    assert clicks(store, table) == want
    assert clicks(store, table.to_pandas()) == want
    pq.write_table(table, tmp_path / "spine.parquet")
    assert clicks(store, str(tmp_path / "spine.parquet")) == want
    assert clicks(store, tmp_path / "spine.parquet") == want
    (tmp_path / "many").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "many" / "a.parquet")
    pq.write_table(table.slice(2), tmp_path / "many" / "b.parquet")
    assert clicks(store, str(tmp_path / "many" / "*.parquet")) == want
    query = (
        "SELECT user_id, to_timestamp(t) AS t, label FROM (VALUES ('u3', 20, 1), ('u1', 5, 2), "
        "('u9', 20, 3), ('u1', 20, 4)) v(user_id, t, label) ORDER BY label"
    )
    assert clicks(store, query) == want
    over_catalog = (
        "SELECT user_id, tessera_event_time + INTERVAL 1 SECOND AS t FROM users ORDER BY clicks"
    )
    assert clicks(store, over_catalog) == [0, 1, 2, 3, 4]


def test_pandas_spine_keeps_its_columns(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1, "ctr": 0.5}])
    df = pd.DataFrame(
        {"user_id": ["u1", "u2"], "t": pd.to_datetime([20, 20], unit="s", utc=True), "y": [1, 0]},
        index=[10, 11],
    )
    got = store.dataset(df, timestamp="t", features={"users": ["clicks", "ctr"]}).to_pandas()
    assert list(got.columns) == ["user_id", "t", "y", "clicks", "ctr"]
    assert got["y"].tolist() == [1, 0]
    assert got["ctr"].iloc[0] == 0.5 and pd.isna(got["ctr"].iloc[1])
    assert (got["t"] == df["t"].reset_index(drop=True)).all()


# --- outputs -----------------------------------------------------------------------------------


def test_arrow_pandas_and_parquet_outputs_agree(
    root: Path, store: OfflineStore, tmp_path: Path
) -> None:
    write_history(root, USERS, [{"user_id": f"u{i}", "ts": 1.0, "clicks": i} for i in range(100)])
    sp = spine([f"u{i % 120}" for i in range(300_000)], [5.0] * 300_000)
    ds = store.dataset(sp, timestamp="t", features={"users": ["clicks", "ctr"]})
    arrow = ds.to_arrow()
    assert arrow.num_rows == 300_000
    assert ds.to_parquet(tmp_path / "train.parquet") == 300_000
    written = pq.read_table(tmp_path / "train.parquet")
    assert written.column_names == arrow.column_names
    assert all(written.column(c).equals(arrow.column(c)) for c in arrow.column_names)
    pd.testing.assert_frame_equal(ds.to_pandas(), arrow.to_pandas())
    assert sum(b.num_rows for b in ds.to_batches(batch_rows=50_000)) == 300_000


def test_empty_spine_gives_an_empty_typed_dataset(
    root: Path, store: OfflineStore, tmp_path: Path
) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    ds = store.dataset(spine([], []), timestamp="t", features={"users": ["clicks"]})
    table = ds.to_arrow()
    assert table.num_rows == 0
    assert table.column_names == ["user_id", "t", "clicks"]
    assert table.schema.field("clicks").type == pa.int64()
    assert ds.to_parquet(tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_prefix_group_names_columns_by_group(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    ds = store.dataset(
        spine(["u1"], [2]), timestamp="t", features={"users": ["clicks"]}, prefix_group=True
    )
    assert ds.columns == ["user_id", "t", "users__clicks"]
    assert ds.to_arrow().column("users__clicks").to_pylist() == [1]


def test_all_features_of_a_group_by_name(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1, "ctr": 0.5}])
    ds = store.dataset(spine(["u1"], [2]), timestamp="t", features=["users"])
    assert ds.columns == ["user_id", "t", "clicks", "ctr"]


def test_progress_bar_shows_only_when_asked(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    with OfflineStore(root) as off:  # default: only on a terminal, and pytest's is not
        off.dataset(spine(["u1"], [2]), timestamp="t", features=["users"]).to_arrow()
    assert capsys.readouterr().err == ""
    with OfflineStore(root, progress=True) as off:
        off.dataset(spine(["u1"], [2]), timestamp="t", features=["users"]).to_arrow()
    assert "1/1" in capsys.readouterr().err


def test_dataset_sql_is_one_asof_query(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    ds = store.dataset(spine(["u1"], [2]), timestamp="t", features={"users": ["clicks"]})
    assert isinstance(ds, Dataset)
    assert ds.sql.count("ASOF LEFT JOIN") == 1
    assert "ORDER BY __tessera_row" in ds.sql


def test_a_dataset_larger_than_the_memory_limit_spills_to_disk(tmp_path: Path) -> None:
    root = tmp_path / "offline"
    n_ids = 200_000
    write_history(
        root,
        USERS,
        [{"user_id": f"user-{i:08d}", "ts": 1.0, "clicks": i} for i in range(n_ids)],
    )
    n = 3_000_000
    ids = np.random.default_rng(0).integers(0, n_ids, n)
    sp = pa.table(
        {
            "user_id": pa.array(np.char.add("user-", np.char.zfill(ids.astype(str), 8))),
            "t": ts(2.0).take(np.zeros(n, dtype=np.int64)),
            "label": pa.array(np.arange(n)),
        }
    )
    # DuckDB asks for 125 MB per thread at least; the joined rows (~130 MB) do not fit in 100.
    with OfflineStore(root, memory_limit="100MB", threads=1, progress=False) as off:
        ds = off.dataset(sp, timestamp="t", features={"users": ["clicks"]})
        assert ds.to_parquet(tmp_path / "big.parquet") == n
    out = pq.read_table(tmp_path / "big.parquet")
    assert out.nbytes > 100 * 2**20
    assert np.array_equal(out.column("label").to_numpy(), np.arange(n))
    assert np.array_equal(out.column("clicks").to_numpy(), ids)


# --- errors ------------------------------------------------------------------------------------


def test_unknown_group_lists_the_known_ones(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    with pytest.raises(FeatureGroupNotFoundError, match="'nope' does not exist; known: users"):
        store.dataset(spine(["u1"], [2]), timestamp="t", features={"nope": ["x"]})


def test_unknown_feature_names_the_group_and_known_features(
    root: Path, store: OfflineStore
) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    with pytest.raises(InvalidRequestError) as err:
        store.dataset(spine(["u1"], [2]), timestamp="t", features={"users": ["ctr_7d"]})
    assert err.value.message == (
        "feature 'ctr_7d' is not in group 'users'; known: user_id, ts, clicks, ctr"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timestamp": "when"}, "spine has no timestamp column 'when'; columns: user_id, t"),
        ({"on": "uid"}, "spine has no column 'uid' holding the record ids of group 'users'"),
        ({"on": {"items": "x"}}, "on: group 'items' is not among the features' groups"),
        ({"features": {"users": []}}, "features['users'] is empty"),
        ({"features": {"users": "clicks"}}, "must be a list of feature names"),
        ({"features": "users"}, "features must map groups to feature names"),
        ({"features": {}}, "name at least one feature group"),
        ({"features": {"users": ["user_id"]}}, "two columns named 'user_id'"),
        ({"as_of": object()}, "as_of: object is not a time"),
        ({"as_of": "yesterday"}, "as_of: 'yesterday' is not a valid event time"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(
    root: Path, store: OfflineStore, kwargs: dict[str, Any], message: str
) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    args: dict[str, Any] = {"timestamp": "t", "features": {"users": ["clicks"]}, **kwargs}
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("(", r"\(")):
        store.dataset(spine(["u1"], [2]), **args)


def test_spine_timestamp_of_a_wrong_type_is_refused(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    with pytest.raises(InvalidRequestError, match="spine timestamp column 't' has type VARCHAR"):
        store.dataset(
            pa.table({"user_id": ["u1"], "t": ["2024-01-01"]}), timestamp="t", features=["users"]
        )


def test_spine_query_must_be_a_select(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    with pytest.raises(InvalidRequestError, match="read-only"):
        store.dataset("WITH x AS (SELECT 1) DELETE FROM users", timestamp="t", features=["users"])
    with pytest.raises(InvalidRequestError, match="type int is not supported"):
        store.dataset(3, timestamp="t", features=["users"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="spine 'SELEC 1' is not a Parquet file"):
        store.dataset("SELEC 1", timestamp="t", features=["users"])


def test_spine_columns_may_not_use_the_internal_prefix(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    sp = spine(["u1"], [2]).append_column("__tessera_key", pa.array([1]))
    with pytest.raises(InvalidRequestError, match="reserved prefix '__tessera_'"):
        store.dataset(sp, timestamp="t", features=["users"])


def test_a_corrupt_group_file_hides_only_that_group(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": "u1", "ts": 1.0, "clicks": 1}])
    (root / "broken").mkdir()
    (root / "broken" / "_group.json").write_text("{not json")
    assert store.group_names() == ["users"]
    assert clicks(store, spine(["u1"], [2])) == [1]


def test_offline_store_reads_its_sql_views(root: Path, store: OfflineStore) -> None:
    write_history(root, USERS, [{"user_id": f"u{i}", "ts": 1.0, "clicks": i} for i in range(3)])
    assert store.sql("SELECT count(*) AS n, sum(clicks) AS s FROM users").to_pylist() == [
        {"n": 3, "s": 3}
    ]
    assert store.group_names() == ["users"]
    assert store.group("users") == USERS
