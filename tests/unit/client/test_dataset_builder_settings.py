"""The dataset builder's own sandboxed database: insertion order off (its join runs in parallel,
the rows are read back sorted) and DuckDB's progress tracking on, both set before the
configuration is locked; the sandbox stays closed; every spine form keeps its order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.client import OfflineStore
from tessera.core.catalog import Catalog
from tessera.core.errors import InvalidRequestError
from tests.offline_fixtures import make_group, write_history

USERS = make_group(
    "users",
    {"user_id": "String", "ts": "Fractional", "clicks": "Integral"},
    record_id="user_id",
)
N = 400_000


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A group of N rows in 8 files, clicks a shuffled row number: any reordering shows."""
    root = tmp_path_factory.mktemp("builder") / "offline"
    clicks = np.random.default_rng(0).permutation(N)
    write_history(
        root,
        USERS,
        [{"user_id": f"u{c % 1000}", "ts": 1.0 + (c % 86_000), "clicks": int(c)} for c in clicks],
        rows_per_file=N // 8,
    )
    return root


def test_builder_catalog_has_insertion_order_off_and_stays_locked(tmp_path: Path) -> None:
    with OfflineStore(tmp_path, progress=False) as off:
        builder = off.builder_catalog
        with builder.session() as cur:
            got = cur.sql(
                "SELECT current_setting('preserve_insertion_order'), "
                "current_setting('enable_progress_bar'), current_setting('lock_configuration')"
            ).fetchall()
            assert got == [(False, True, True)]
            with pytest.raises(duckdb.Error):
                cur.execute("SET preserve_insertion_order = true")
            with pytest.raises(duckdb.Error):
                cur.execute("SET enable_external_access = true")
            with pytest.raises(duckdb.PermissionException):
                cur.sql("SELECT * FROM read_text('/etc/passwd')").fetchall()
        # The SQL catalog keeps insertion order (results of queries without ORDER BY).
        assert off.sql("SELECT current_setting('preserve_insertion_order')").to_pylist() == [
            {"current_setting('preserve_insertion_order')": True}
        ]


def test_a_session_leaves_nothing_behind_for_the_next(tmp_path: Path) -> None:
    with Catalog(tmp_path, progress_sessions=1) as cat:
        with cat.session() as cur:
            cur.register("arrow_spine", pa.table({"a": [1]}))
            cur.execute("CREATE TEMP TABLE leftover AS SELECT 1 AS x")
        with cat.session() as cur:
            assert cur.sql("SELECT enable_progress FROM (SELECT current_setting("
                           "'enable_progress_bar') AS enable_progress)").fetchall() == [(True,)]
            with pytest.raises(duckdb.CatalogException):
                cur.sql("SELECT * FROM leftover").fetchall()
            with pytest.raises(duckdb.CatalogException):
                cur.sql("SELECT * FROM arrow_spine").fetchall()
            with cat.session() as second:  # the pool is empty: a plain cursor
                assert second.sql("SELECT current_setting('enable_progress_bar')").fetchall() == [
                    (False,)
                ]


def test_a_session_reports_duckdb_progress_while_a_statement_runs(tmp_path: Path) -> None:
    with Catalog(tmp_path, progress_sessions=1, threads=1) as cat, cat.session() as cur:
        seen: list[float] = []
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                seen.append(cur.query_progress())
                time.sleep(0.02)

        thread = threading.Thread(target=poll)
        thread.start()
        try:
            cur.execute(
                "CREATE TEMP TABLE t AS SELECT range % 7 AS k, count(*) AS n "
                "FROM range(150000000) GROUP BY ALL"
            )
        finally:
            done.set()
            thread.join()
    assert any(0 < p < 100 for p in seen), seen


def test_query_and_glob_spines_keep_their_order_without_order_by(
    big_root: Path, tmp_path: Path
) -> None:
    query = "SELECT user_id, tessera_event_time + INTERVAL 1 SECOND AS t, clicks AS label FROM users"
    with OfflineStore(big_root, threads=2, progress=False) as off:
        expected = off.sql(query).column("label").to_pylist()  # the SQL catalog's order
        assert sorted(expected) != expected  # shuffled: a reordering would show
        got = off.dataset(query, timestamp="t", features={"users": ["clicks"]}).to_arrow()
        assert got.column("label").to_pylist() == expected
        spine = off.sql(query)
        (tmp_path / "spines").mkdir()
        for i in range(4):
            pq.write_table(spine.slice(i * (N // 4), N // 4), tmp_path / "spines" / f"{i}.parquet")
        ds = off.dataset(str(tmp_path / "spines" / "*.parquet"), timestamp="t",
                         features={"users": ["clicks"]})
        assert ds.to_parquet(tmp_path / "out.parquet") == N
        assert pq.read_table(tmp_path / "out.parquet").column("label").to_pylist() == expected
        # The spine files written for the build are gone once it is done.
        assert not list(Path(off.builder_catalog.temp_directory).glob("spine-*.parquet"))
        assert not list(Path(off.catalog.temp_directory).glob("spine-*.parquet"))


def test_a_query_spine_is_still_checked_to_be_one_select(big_root: Path) -> None:
    with OfflineStore(big_root, progress=False) as off, pytest.raises(InvalidRequestError):
        off.dataset("SELECT 1 AS t; DROP VIEW users", timestamp="t", features=["users"])
