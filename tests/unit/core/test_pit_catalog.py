"""The offline store's catalog: views per feature group, the read-only SQL path, rendering."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.core.catalog import Catalog, check_select_only, format_result
from tessera.core.errors import FeatureGroupNotFoundError, InvalidRequestError
from tests.offline_fixtures import make_group, write_history

USERS = make_group(
    "users",
    {"user_id": "String", "ts": "Fractional", "clicks": "Integral", "emb": "Vector[2]"},
    record_id="user_id",
)
ITEMS = make_group("items", {"id": "Integral", "ts": "Fractional", "tags": "List[String]"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_history(
        tmp_path,
        USERS,
        [
            {"user_id": "u1", "ts": 10.0, "clicks": 1, "emb": [1.0, 2.0]},
            {"user_id": "u2", "ts": 86_400.0 * 3, "clicks": 2},
        ],
    )
    (tmp_path / "items").mkdir()
    (tmp_path / "items" / "_group.json").write_text(ITEMS.model_dump_json())
    return tmp_path


@pytest.fixture
def catalog(root: Path) -> Iterator[Catalog]:
    cat = Catalog(root)
    yield cat
    cat.close()


def test_one_view_per_group_with_partition_and_system_columns(catalog: Catalog) -> None:
    assert catalog.group_names() == ["items", "users"]
    got = catalog.sql("SELECT user_id, clicks, event_date, tessera_seq FROM users ORDER BY 1")
    assert got.column("clicks").to_pylist() == [1, 2]
    assert [str(d) for d in got.column("event_date").to_pylist()] == ["1970-01-01", "1970-01-04"]


def test_a_group_without_files_is_an_empty_view_of_its_declared_columns(catalog: Catalog) -> None:
    got = catalog.sql("SELECT * FROM items")
    assert got.num_rows == 0
    assert got.schema.field("tags").type == pa.list_(pa.string())
    assert "tessera_event_time" in got.column_names
    assert not catalog.has_files("items")


def test_new_groups_files_and_features_show_after_a_refresh(root: Path, catalog: Catalog) -> None:
    write_history(root, ITEMS, [{"id": 1, "ts": 1.0, "tags": ["a"]}])
    v2 = make_group(
        "users",
        {
            "user_id": "String",
            "ts": "Fractional",
            "clicks": "Integral",
            "emb": "Vector[2]",
            "country": "String",
        },
        record_id="user_id",
        version=2,
    )
    (root / "users" / "_group.json").write_text(v2.model_dump_json())
    write_history(root, make_group("extra", {"id": "String", "ts": "Fractional"}), [])
    assert catalog.sql("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 1}]
    assert catalog.sql("SELECT count(country) AS n FROM users").to_pylist() == [{"n": 0}]
    assert catalog.group_names() == ["extra", "items", "users"]


def test_hidden_folders_are_not_groups(root: Path) -> None:
    (root / ".retired").mkdir()
    (root / ".retired" / "_group.json").write_text(ITEMS.model_dump_json())
    with Catalog(root) as cat:
        assert cat.group_names() == ["items", "users"]


def test_unknown_group_lists_the_known_ones(catalog: Catalog) -> None:
    with pytest.raises(FeatureGroupNotFoundError, match="known: items, users"):
        catalog.group("nope")


@pytest.mark.parametrize(
    "sql",
    [
        "DROP VIEW users",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO users SELECT * FROM users",
        "COPY users TO '/tmp/x.csv'",
        "SET memory_limit = '1GB'",
        "PRAGMA version",
        "ATTACH '/tmp/x.db'",
        "SELECT 1; DROP VIEW users",
        "LOAD httpfs",
    ],
)
def test_sql_refuses_anything_but_one_select(catalog: Catalog, sql: str) -> None:
    with pytest.raises(InvalidRequestError, match="read-only|exactly one statement"):
        catalog.sql(sql)
    assert catalog.sql("SELECT count(*) AS n FROM users").to_pylist() == [{"n": 2}]


def test_sql_accepts_with_and_values(catalog: Catalog) -> None:
    assert catalog.sql("WITH x AS (SELECT 2 AS a) SELECT a FROM x").to_pylist() == [{"a": 2}]
    check_select_only(catalog.cursor(), "VALUES (1)")
    check_select_only(catalog.cursor(), "FROM users")


def test_sql_errors_are_invalid_requests(catalog: Catalog) -> None:
    with pytest.raises(InvalidRequestError, match="nope"):
        catalog.sql("SELECT * FROM nope")
    with pytest.raises(InvalidRequestError, match="sql"):
        catalog.sql("SELEC 1")


def test_restricted_catalog_reads_only_the_offline_store(root: Path, tmp_path: Path) -> None:
    secret = tmp_path.parent / "secret.csv"
    secret.write_text("a\n1\n")
    with Catalog(root) as cat:
        assert cat.sql("SELECT count(*) AS n FROM users").to_pylist() == [{"n": 2}]
        with pytest.raises(InvalidRequestError, match="Permission"):
            cat.sql(f"SELECT * FROM read_csv('{secret}')")


def test_format_result_as_text_csv_and_parquet(catalog: Catalog, tmp_path: Path) -> None:
    table = catalog.sql("SELECT user_id, clicks, emb FROM users ORDER BY user_id")
    text = format_result(table, "table")
    assert isinstance(text, str)
    lines = text.splitlines()
    assert lines[1] == "| user_id | clicks | emb        |"
    assert lines[3] == "| u1      |      1 | [1.0, 2.0] |"
    assert lines[4] == "| u2      |      2 | NULL       |"
    assert lines[-1] == "(2 rows)"
    assert format_result(table, "table", max_rows=1).splitlines()[-1] == "(2 rows, 1 shown)"
    csv = format_result(table, "csv")
    assert isinstance(csv, str)
    assert csv.splitlines()[0] == "user_id,clicks,emb"
    assert csv.splitlines()[1].startswith("u1,1,")
    data = format_result(table, "parquet")
    assert isinstance(data, bytes)
    assert pq.ParquetFile(io.BytesIO(data)).read().column("clicks").to_pylist() == [1, 2]
    assert format_result(table, "parquet", tmp_path / "r.parquet") is None
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 2
    assert format_result(table, "csv", tmp_path / "r.csv") is None
    assert (tmp_path / "r.csv").read_text() == csv
    with pytest.raises(InvalidRequestError, match="allowed: table, csv, parquet"):
        format_result(table, "xml")  # type: ignore[arg-type]
