"""The point-in-time query: its checks and the SQL it renders (the builder's results are tested
in tests/unit/client/test_offline*.py against a brute-force reference)."""

from __future__ import annotations

from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest

from tessera.core.errors import InvalidRequestError
from tessera.core.pit import (
    ROW_COLUMN,
    GroupSelection,
    PointInTimeQuery,
    check_output_names,
    select_groups,
    timestamp_us_sql,
)
from tests.offline_fixtures import make_group

USERS = make_group(
    "users", {"user_id": "String", "ts": "Fractional", "clicks": "Integral"}, record_id="user_id"
)
ITEMS = make_group(
    "items",
    {"item_id": "Integral", "ts": "String", "price": "Fractional"},
    record_id="item_id",
    ttl_s=3600,
)


def query(**kw: object) -> PointInTimeQuery:
    args: dict[str, object] = {
        "spine_relation": "spine",
        "spine_columns": (("user_id", "varchar"), ("item_id", "bigint"), ("t", "timestamp")),
        "timestamp": "t",
        "groups": (
            GroupSelection(USERS, ("clicks",), "user_id", True),
            GroupSelection(ITEMS, ("price",), "item_id", True),
        ),
    }
    args.update(kw)
    return PointInTimeQuery(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arrow_type", "value", "want_us"),
    [
        (pa.timestamp("us", tz="UTC"), 1_500_001, 1_500_001),
        (pa.timestamp("us"), 1_500_001, 1_500_001),
        (pa.timestamp("ms"), 1_500, 1_500_000),
        (pa.timestamp("s", tz="UTC"), 2, 2_000_000),
        (pa.timestamp("ns"), 1_500_001_999, 1_500_001),  # floored, not rounded
        (pa.timestamp("ns", tz="UTC"), -1, -1),  # floored below the epoch too
        (pa.date32(), 1, 86_400_000_000),
        (pa.int32(), 3, 3_000_000),
        (pa.uint64(), 3, 3_000_000),
        (pa.float64(), 0.0000025, 2),  # 2.5 us: half to even, as eventtime.from_epoch_s
        (pa.float64(), 0.0000035, 4),
        (pa.float64(), 1_700_000_000.123456, 1_700_000_000_123_456),
        (pa.float32(), 2.5, 2_500_000),
        (pa.decimal128(12, 3), Decimal("1.25"), 1_250_000),
    ],
)
def test_spine_timestamps_become_epoch_microseconds(
    arrow_type: pa.DataType, value: object, want_us: int
) -> None:
    con = duckdb.connect()
    con.register("s", pa.table({"t": pa.array([value, None], arrow_type)}))
    type_id = con.sql("SELECT t FROM s").types[0].id
    got = con.sql(f"SELECT {timestamp_us_sql('t', type_id)} FROM s").fetchall()
    assert got == [(want_us,), (None,)]


def test_non_finite_epoch_seconds_read_as_null() -> None:
    con = duckdb.connect()
    con.register("s", pa.table({"t": [float("nan"), float("inf")]}))
    assert con.sql(f"SELECT {timestamp_us_sql('t', 'double')} FROM s").fetchall() == [
        (None,),
        (None,),
    ]


def test_a_text_timestamp_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="has type VARCHAR; allowed: a timestamp"):
        timestamp_us_sql("t", "varchar")


def test_sql_joins_each_group_once_and_orders_by_the_spine_row() -> None:
    sql = query().sql()
    assert sql.count("ASOF LEFT JOIN") == 2
    assert sql.rstrip().endswith(f"ORDER BY {ROW_COLUMN}")
    # Each row's own expiry, never the group's TTL (a TTL set later must not reach back).
    assert "3600000000" not in sql and "epoch_us(tessera_expires_at)" in sql
    assert "TRY_CAST" not in sql  # the spine's id types match the groups'
    assert f"SELECT {ROW_COLUMN}," in query().unordered_sql()
    assert "ORDER BY" not in query().unordered_sql()


def test_as_of_filters_write_time_with_a_literal() -> None:
    sql = query(as_of_us=1_700_000_000_123_456).sql()
    assert sql.count("WHERE write_time <= TIMESTAMPTZ '2023-11-14T22:13:20.123456Z'") == 2


def test_as_of_far_from_now_still_renders() -> None:
    assert "'9999-12-31T23:59:59.999999Z'" in query(as_of_us=10**20).sql()
    assert "'0001-01-01T00:00:00Z'" in query(as_of_us=-(10**20)).sql()


def test_an_empty_group_is_not_joined() -> None:
    q = query(groups=(GroupSelection(USERS, ("clicks",), "user_id", False),))
    assert "ASOF" not in q.sql()
    assert 'CAST(NULL AS BIGINT) AS "clicks"' in q.sql()


def test_spine_ids_of_another_type_are_cast_to_the_groups() -> None:
    q = query(spine_columns=(("user_id", "integer"), ("item_id", "varchar"), ("t", "timestamp")))
    assert 'TRY_CAST("user_id" AS VARCHAR)' in q.sql()
    assert 'TRY_CAST("item_id" AS BIGINT)' in q.sql()


def test_output_names_follow_the_spine_then_the_features() -> None:
    assert query().output_names() == ["user_id", "item_id", "t", "clicks", "price"]
    assert query(prefix_group=True).output_names()[-2:] == ["users__clicks", "items__price"]


def test_two_columns_of_one_name_are_refused() -> None:
    q = query(
        spine_columns=(
            ("user_id", "varchar"),
            ("item_id", "bigint"),
            ("t", "timestamp"),
            ("clicks", "bigint"),
        )
    )
    with pytest.raises(InvalidRequestError, match="two columns named 'clicks'.*prefix_group=True"):
        check_output_names(q)
    check_output_names(query(prefix_group=True))


def test_select_groups_defaults_to_the_record_identifier_column() -> None:
    (sel,) = select_groups(
        {"users": USERS}, {"users": True}, {"users": None}, None, ["user_id", "t"], "t"
    )
    assert sel.spine_key == "user_id"
    assert sel.features == ("clicks",)  # every feature but the record id and the event time
    (sel,) = select_groups(
        {"users": USERS}, {"users": True}, {"users": ["clicks"]}, "uid", ["uid", "t"], "t"
    )
    assert sel.spine_key == "uid"


def test_select_groups_names_a_missing_timestamp_column() -> None:
    with pytest.raises(
        InvalidRequestError, match="spine has no timestamp column 'ts'; columns: user_id, t"
    ):
        select_groups(
            {"users": USERS}, {"users": True}, {"users": None}, None, ["user_id", "t"], "ts"
        )
