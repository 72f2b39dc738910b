"""Null vectors, null lists and empty lists in every output of the dataset builder and of SQL:
pyarrow, pandas and DuckDB read each of them back, values intact.

DuckDB's Parquet writer writes a null fixed-size ARRAY (a Vector feature) with one level entry per
slot instead of one per row: DuckDB reads such a file, pyarrow refuses it ("Length spanned by list
offsets ... larger than values array"). The builder writes vectors as lists (the Parquet schema is
the same: Parquet has no fixed-size list).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.client import OfflineStore
from tessera.core.sql_results import format_result, parquet_bytes, parquet_writable_type
from tests.offline_fixtures import make_group, write_history

S = 1_000_000
GROUP = make_group(
    "users",
    {
        "user_id": "String",
        "ts": "Fractional",
        "emb": "Vector[3]",
        "tags": "List[String]",
        "hist": "List[Integral]",
    },
    record_id="user_id",
)
FEATURES = ["emb", "tags", "hist"]
# The same rows from SQL, the vector cast back to its fixed size (the view holds FLOAT[]).
SQL_QUERY = (
    "SELECT u.emb::FLOAT[3] AS emb, u.tags, u.hist, s.label FROM "
    "(VALUES (1, 'u1', [1.0, 2.0]::FLOAT[2]), (2, 'u2', NULL), (3, 'u3', [3.0, 4.0]::FLOAT[2]), "
    "(4, 'u1', NULL)) s(i, user_id, label) "
    "LEFT JOIN users u USING (user_id) ORDER BY s.i"
)
# u1 has every value; u2 has no emb, no tags and an empty hist; u3 has no row at all.
EXPECTED = [
    {"emb": [0.5, 1.5, 2.5], "tags": ["a", "b"], "hist": [1, 2]},
    {"emb": None, "tags": None, "hist": []},
    {"emb": None, "tags": None, "hist": None},
    {"emb": [0.5, 1.5, 2.5], "tags": ["a", "b"], "hist": [1, 2]},
]


@pytest.fixture
def history(root: Path) -> None:
    write_history(
        root,
        GROUP,
        [
            {"user_id": "u1", "ts": 1.0, "emb": [0.5, 1.5, 2.5], "tags": ["a", "b"], "hist": [1, 2]},
            {"user_id": "u2", "ts": 1.0, "hist": []},
        ],
    )


def spine() -> pa.Table:
    us = pa.array([2 * S] * 4, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    # A fixed-size list label with a null, so the spine's own columns are covered too.
    label = pa.array([[1.0, 2.0], None, [3.0, 4.0], None], pa.list_(pa.float32(), 2))
    return pa.table({"user_id": ["u1", "u2", "u3", "u1"], "t": us, "label": label})


def as_lists(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with numpy arrays (pandas' list cells) turned into lists."""
    return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()} for r in rows]


def check_rows(rows: list[dict[str, Any]]) -> None:
    assert [{f: r[f] for f in FEATURES} for r in rows] == EXPECTED
    assert [r["label"] for r in rows] == [[1.0, 2.0], None, [3.0, 4.0], None]


def check_parquet_file(path: Path | io.BytesIO) -> None:
    """pyarrow, pandas and DuckDB all read the file, with the same values."""
    table = pq.read_table(path)
    table.validate(full=True)
    check_rows(table.to_pylist())
    if isinstance(path, io.BytesIO):
        path.seek(0)
    check_rows(as_lists(pd.read_parquet(path).to_dict("records")))
    if isinstance(path, Path):
        rows = duckdb.sql(f"SELECT emb, tags, hist, label FROM '{path}'").fetchall()
        assert [dict(zip(["emb", "tags", "hist"], r[:3], strict=True)) for r in rows] == EXPECTED


@pytest.mark.usefixtures("history")
def test_dataset_parquet_with_null_vectors_reads_in_pyarrow_pandas_and_duckdb(
    store: OfflineStore, tmp_path: Path
) -> None:
    ds = store.dataset(spine(), timestamp="t", features={"users": FEATURES})
    assert ds.to_parquet(tmp_path / "train.parquet") == 4
    check_parquet_file(tmp_path / "train.parquet")
    assert pq.read_schema(tmp_path / "train.parquet").field("emb").type.value_type == pa.float32()


@pytest.mark.usefixtures("history")
def test_dataset_arrow_and_pandas_with_null_vectors_keep_values_and_types(
    store: OfflineStore,
) -> None:
    ds = store.dataset(spine(), timestamp="t", features={"users": FEATURES})
    table = ds.to_arrow()
    table.validate(full=True)
    assert table.schema.field("emb").type == pa.list_(pa.float32(), 3)  # still fixed-size
    check_rows(table.to_pylist())
    check_rows(as_lists(ds.to_pandas().to_dict("records")))
    for batch in ds.to_batches(batch_rows=2):
        batch.validate(full=True)


@pytest.mark.usefixtures("history")
def test_sql_parquet_results_with_null_vectors_read_back(
    store: OfflineStore, tmp_path: Path
) -> None:
    table = store.sql(SQL_QUERY)
    assert table.schema.field("emb").type == pa.list_(pa.float32(), 3)
    check_rows(table.to_pylist())
    check_parquet_file(io.BytesIO(parquet_bytes(table)))  # the body of POST /v1/sql
    format_result(table, "parquet", tmp_path / "out.parquet")  # tessera sql --output
    check_parquet_file(tmp_path / "out.parquet")


@pytest.mark.usefixtures("history")
def test_cli_sql_and_dataset_outputs_with_null_vectors_read_back(
    root: Path, tmp_path: Path
) -> None:
    spine_path = tmp_path / "spine.parquet"
    pq.write_table(spine(), spine_path)
    run = [sys.executable, "-m", "tessera.server"]
    out = tmp_path / "ds.parquet"
    subprocess.run(
        [*run, "dataset", "--spine", str(spine_path), "--timestamp", "t", "--features",
         "users:emb,tags,hist", "--output", str(out), "--offline-root", str(root)],
        check=True, capture_output=True, timeout=120,
    )
    check_parquet_file(out)
    sql_out = tmp_path / "sql.parquet"
    subprocess.run(
        [*run, "sql", SQL_QUERY, "--format", "parquet", "--output", str(sql_out),
         "--offline-root", str(root)],
        check=True, capture_output=True, timeout=120,
    )
    check_parquet_file(sql_out)


@pytest.mark.parametrize(
    ("type_sql", "expected"),
    [
        ("FLOAT[3]", "FLOAT[]"),
        ("FLOAT[]", None),
        ("BIGINT", None),
        ("FLOAT[2][]", "FLOAT[][]"),
        ("STRUCT(\"a b\" INTEGER[2], c VARCHAR)", 'STRUCT("a b" INTEGER[], "c" VARCHAR)'),
        ("MAP(VARCHAR, DOUBLE[4])", "MAP(VARCHAR, DOUBLE[])"),
    ],
)
def test_parquet_writable_type_turns_arrays_into_lists(
    type_sql: str, expected: str | None
) -> None:
    t = duckdb.sql(f"SELECT NULL::{type_sql} AS c").types[0]
    assert parquet_writable_type(t) == expected


def test_dataset_parquet_with_aggregations_and_null_vectors_reads_back(
    root: Path, store: OfflineStore, tmp_path: Path
) -> None:
    from tessera.core.aggregation.spec import AggregationDefinition as Agg

    group = make_group(
        "users",
        {"user_id": "String", "ts": "Fractional", "emb": "Vector[3]", "clicks": "Integral"},
        record_id="user_id",
        aggregations=[
            Agg(name="clicks_sum_1h", source="clicks", function="sum", window="1h"),
            Agg(name="clicks_last2", source="clicks", function="last_n", n=2, window="1h"),
        ],
    )
    write_history(root, group, [
        {"user_id": "u1", "ts": 1.0, "emb": [0.5, 1.5, 2.5], "clicks": 1},
        {"user_id": "u2", "ts": 1.0, "clicks": 2},
    ])
    ds = store.dataset(
        spine(), timestamp="t", features={"users": ["emb", "clicks_sum_1h", "clicks_last2"]}
    )
    ds.to_parquet(tmp_path / "agg.parquet")
    written, arrow = pq.read_table(tmp_path / "agg.parquet"), ds.to_arrow()
    written.validate(full=True)
    assert written.to_pylist() == arrow.to_pylist()
    assert written.select(["emb", "label"]).to_pylist() == [
        {"emb": [0.5, 1.5, 2.5], "label": [1.0, 2.0]},
        {"emb": None, "label": None},
        {"emb": None, "label": [3.0, 4.0]},
        {"emb": [0.5, 1.5, 2.5], "label": None},
    ]
    assert len(pd.read_parquet(tmp_path / "agg.parquet")) == 4
