"""The SQL sandbox (every entry point reads the offline store and nothing else on the host), the
query guard (time limits), and a catalog one broken group cannot take down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tessera.client import OfflineStore
from tessera.core.catalog import Catalog
from tessera.core.errors import InvalidRequestError, StorageError
from tessera.core.sql_sandbox import (
    QueryCancelledError,
    QueryGuard,
    QueryTimeoutError,
    QueryTooLargeError,
    check_query_size,
)
from tests.offline_fixtures import make_group, write_history

USERS = make_group("users", {"id": "String", "ts": "Fractional", "clicks": "Integral"})
HEAVY = "SELECT count(*) FROM range(20000000000) t WHERE t.range % 7 = 3"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "offline"
    write_history(root, USERS, [{"id": "u1", "ts": 10.0, "clicks": 3}])
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.csv"  # next to the root, not under it
    path.write_text("password\nhunter2\n")
    return path


def host_reads(secret: Path) -> list[str]:
    return [
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_text('{secret.parent}/offline/../secret.csv')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM read_csv('https://example.com/x.csv')",
        "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
        "SELECT * FROM duckdb_extensions()",
    ]


def test_offline_store_sql_reads_no_file_outside_the_root(root: Path, secret: Path) -> None:
    with OfflineStore(root, progress=False) as off:
        assert off.sql("SELECT clicks FROM users").to_pylist() == [{"clicks": 3}]
        for query in host_reads(secret):
            with pytest.raises(InvalidRequestError, match="Permission") as err:
                off.sql(query)
            assert "hunter2" not in str(err.value) and "root:" not in str(err.value)


def test_sandbox_settings_are_locked_and_extensions_never_load(root: Path) -> None:
    with Catalog(root) as cat:
        got = cat.sql(
            "SELECT current_setting('lock_configuration') AS lock, "
            "current_setting('enable_external_access') AS ext, "
            "current_setting('autoinstall_known_extensions') AS inst, "
            "current_setting('autoload_known_extensions') AS load"
        ).to_pylist()
        assert got == [{"lock": True, "ext": False, "inst": False, "load": False}]
        # Not even our own code can widen it once set up.
        with pytest.raises(duckdb.InvalidInputException, match="locked|external access"):
            cat.cursor().execute("SET enable_external_access = true")
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            cat.cursor().execute("SET allowed_directories = ['/']")


def test_a_sql_spine_reads_no_file_outside_the_root(root: Path, secret: Path) -> None:
    with OfflineStore(root, progress=False) as off:
        with pytest.raises(InvalidRequestError, match="Permission"):
            off.dataset(f"SELECT 'u1' AS id, 20.0 AS ts, * FROM read_csv('{secret}')",
                        timestamp="ts", features={"users": ["clicks"]}).to_arrow()
        ok = off.dataset("SELECT 'u1' AS id, 20.0 AS ts", timestamp="ts",
                         features={"users": ["clicks"]}).to_arrow()
        assert ok.column("clicks").to_pylist() == [3]


def test_spine_files_and_output_outside_the_root_still_work(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i, ts in enumerate((20.0, 5.0)):
        pd.DataFrame({"id": ["u1"], "ts": [ts], "n": [i]}).to_parquet(elsewhere / f"s{i}.parquet")
    with OfflineStore(root, progress=False) as off:
        one = off.dataset(elsewhere / "s0.parquet", timestamp="ts", features={"users": ["clicks"]})
        assert one.to_arrow().column("clicks").to_pylist() == [3]
        both = off.dataset(str(elsewhere / "s*.parquet"), timestamp="ts",
                           features={"users": ["clicks"]})
        out = tmp_path / "out" / "train.parquet"
        out.parent.mkdir()
        assert both.to_parquet(out) == 2
        got = pd.read_parquet(out)
        assert got["n"].tolist() == [0, 1]  # the glob's order
        assert [None if pd.isna(v) else int(v) for v in got["clicks"]] == [3, None]
        temp = Path(off.catalog.temp_directory)
        assert not list(temp.glob("dataset-*.parquet"))  # moved out, nothing left behind
        with pytest.raises(InvalidRequestError, match="not a Parquet file that exists"):
            off.dataset(elsewhere / "missing.parquet", timestamp="ts", features=["users"])


def test_a_query_past_its_time_limit_is_interrupted(root: Path) -> None:
    with OfflineStore(root, progress=False) as off:
        start = time.monotonic()
        with pytest.raises(QueryTimeoutError, match="time limit of 0.3 s") as err:
            off.sql(HEAVY, timeout_s=0.3)
        assert time.monotonic() - start < 3
        assert err.value.http_status == 504
        # The catalog keeps working afterwards.
        assert off.sql("SELECT 1 AS one", timeout_s=5).to_pylist() == [{"one": 1}]


def test_a_guard_cancelled_from_another_thread_stops_the_query(root: Path) -> None:
    import threading

    with Catalog(root) as cat:
        guards: list[QueryGuard] = []
        threading.Timer(0.3, lambda: guards[0].cancel("test")).start()
        with (
            pytest.raises(QueryCancelledError, match="cancelled"),
            cat.sql_reader(HEAVY, on_start=guards.append) as reader,
        ):
            reader.read_all()


def test_query_text_is_bounded_before_duckdb_parses_it(root: Path) -> None:
    check_query_size("SELECT 1", 1024)
    with pytest.raises(QueryTooLargeError, match="more than the limit of 1024 bytes") as err:
        check_query_size("SELECT 1" + " " * 2000, 1024)
    assert err.value.http_status == 413
    big = "SELECT 1 WHERE 1 IN (" + ",".join(["1"] * 200_000) + ")"
    with Catalog(root) as cat:
        start = time.monotonic()
        with pytest.raises(QueryTooLargeError):
            cat.sql(big)
        assert time.monotonic() - start < 0.1


# --- one broken group ----------------------------------------------------------------------------


def _hand_written_group(root: Path, name: str, content: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "_group.json").write_text(content)


def _with_features(group_json: str, name: str, extra: dict[str, str]) -> str:
    """A `_group.json` as an old data dir may hold it, with features today's rules refuse."""
    data = json.loads(group_json)
    data["definition"]["feature_group_name"] = name
    for feature, ftype in extra.items():
        data["definition"]["feature_definitions"].append(
            {"feature_name": feature, "feature_type": ftype}
        )
    return json.dumps(data)


def test_one_broken_group_leaves_the_others_queryable(root: Path) -> None:
    base = USERS.model_dump_json()
    _hand_written_group(root, "dup", _with_features(base, "dup", {"Clicks": "Integral"}))
    _hand_written_group(root, "sys", _with_features(base, "sys", {"WRITE_TIME": "Integral"}))
    _hand_written_group(root, "garbled", "{not json")
    _hand_written_group(root, "bad.name", base)
    with Catalog(root) as cat:  # opening never fails for one group
        broken = cat.broken()
        assert set(broken) == {"dup", "sys", "garbled", "bad.name"}
        assert "garbled" in broken and "_group.json" in broken["garbled"]
        assert cat.group_names() == ["users"]
        assert cat.sql("SELECT clicks FROM users").to_pylist() == [{"clicks": 3}]
        with pytest.raises(InvalidRequestError, match="group 'dup' has no view"):
            cat.sql("SELECT * FROM dup")
        with pytest.raises(StorageError, match="offline group 'sys' cannot be read"):
            cat.group("sys")
        # Fixing the file fixes the group at the next refresh.
        (root / "dup" / "_group.json").write_text(_with_features(base, "dup", {}))
        cat.refresh()
        assert "dup" not in cat.broken()
        assert cat.sql("SELECT count(*) AS n FROM dup").to_pylist() == [{"n": 0}]


def test_groups_named_alike_but_for_case_never_share_a_view(tmp_path: Path) -> None:
    root = tmp_path / "offline"
    old = make_group("Users", {"id": "String", "ts": "Fractional", "clicks": "Integral"})
    new = make_group("USERS", {"id": "String", "ts": "Fractional", "clicks": "Integral"},
                     group_id=2).model_copy(update={"creation_time": 2.0})
    write_history(root, old, [{"id": "old", "ts": 1.0, "clicks": 1}])
    write_history(root, new, [{"id": "new", "ts": 1.0, "clicks": 2}])
    with Catalog(root) as cat:
        assert cat.group_names() == ["Users"]
        assert "only in case" in cat.broken()["USERS"]
        # Whatever the spelling, the view is the older group's and nothing else.
        for spelling in ("users", "USERS", '"Users"'):
            got = cat.sql(f"SELECT id FROM {spelling}").to_pylist()
            assert got == [{"id": "old"}]


# --- a catalog of some groups, and queries that may read views only (issue 12) ---------------


def _ab_root(tmp_path: Path) -> Path:
    root = tmp_path / "ab"
    for i, name in enumerate(("a_1", "a_10", "b_1"), start=1):
        group = make_group(name, {"id": "String", "ts": "Fractional", "v": "Integral"},
                           group_id=i)
        write_history(root, group, [{"id": f"{name}-r", "ts": 10.0, "v": i}])
    return root


def _files_of(root: Path, name: str) -> str:
    (path,) = (root / name).glob("event_date=*/*.parquet")
    return str(path)


def test_a_catalog_of_some_groups_has_their_views_only(tmp_path: Path) -> None:
    root = _ab_root(tmp_path)
    with Catalog(root, groups={"a_1"}) as cat:
        assert cat.group_names() == ["a_1"]
        assert cat.sql("SELECT v FROM a_1").to_pylist() == [{"v": 1}]
        assert cat.sql("SELECT v FROM A_1").to_pylist() == [{"v": 1}]  # DuckDB's case rule
        for listing in ("SHOW TABLES", "SELECT table_name AS name FROM information_schema.tables",
                        "SELECT view_name AS name FROM duckdb_views() WHERE NOT internal"):
            got = cat.sql(listing).column(0).to_pylist()
            assert got == ["a_1"], listing
        for query, named in (
            ("SELECT * FROM b_1", "b_1"),
            ("SELECT * FROM a_10", "a_10"),
            ("WITH x AS (SELECT * FROM b_1) SELECT * FROM x", "b_1"),
            ("SELECT * FROM a_1 WHERE v IN (SELECT v FROM main.b_1)", "b_1"),
            ("SELECT * FROM query_table('b_1')", "b_1"),
            ("DESCRIBE b_1", "b_1"),
        ):
            with pytest.raises(InvalidRequestError, match="does not exist") as err:
                cat.sql(query)
            # DuckDB's "did you mean" suggests names of this database only.
            others = {"a_10", "b_1"} - {named}
            assert not any(o in str(err.value) for o in others), err.value


def test_the_database_of_some_groups_reaches_no_other_folder(tmp_path: Path) -> None:
    """The boundary under the views-only check: even a table function that reads files (the
    local catalog allows them) reaches the readable groups' folders only."""
    root = _ab_root(tmp_path)
    b_file, a_file = _files_of(root, "b_1"), _files_of(root, "a_1")
    with Catalog(root, groups={"a_1"}) as cat:
        assert cat.sql(f"SELECT v FROM read_parquet('{a_file}')").to_pylist() == [{"v": 1}]
        for query in (
            f"SELECT * FROM read_parquet('{b_file}')",
            f"SELECT * FROM read_parquet('{root}/a_1/../b_1/*/*.parquet')",
            f"SELECT * FROM read_parquet('{root}/a_1*/*/*.parquet')",  # a_10's folder too
            f"SELECT * FROM '{b_file}'",
            f"SELECT * FROM glob('{root}/*')",
            f"SELECT * FROM read_text('{root}/b_1/_group.json')",
            f"SELECT * FROM read_blob('{root}/a_10/_group.json')",
        ):
            with pytest.raises(InvalidRequestError, match="Permission"):
                cat.sql(query)


VIEWS_ONLY_BYPASSES = [
    "SELECT * FROM read_parquet('{a}')",
    "SELECT * FROM parquet_scan('{a}')",
    "SELECT * FROM read_csv('{a}')",
    "SELECT * FROM read_csv_auto('{a}')",
    "SELECT * FROM read_json('{a}')",
    "SELECT * FROM read_ndjson_objects('{a}')",
    "SELECT * FROM read_text('{a}')",
    "SELECT * FROM read_blob('{a}')",
    "SELECT * FROM glob('{a}')",
    "SELECT * FROM parquet_metadata('{a}')",
    "SELECT * FROM sniff_csv('{a}')",
    "SELECT * FROM '{a}'",  # a replacement scan
    "FROM '{a}'",
    'SELECT * FROM "{a}"',
    "SELECT * FROM system.main.read_text('{a}')",
    "SELECT * FROM query('SELECT * FROM read_text(''{a}'')')",
    "SELECT * FROM query_table('a_1')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "WITH t AS (SELECT * FROM read_text('{a}')) SELECT * FROM t",
    "SELECT (SELECT count(*) FROM read_blob('{a}')) AS n",
    "SELECT * FROM a_1 WHERE v IN (SELECT 1 FROM glob('{a}'))",
    "SELECT * FROM range(1) t(x), LATERAL read_text('{a}')",
    "SELECT * FROM a_1 UNION ALL BY NAME SELECT * FROM read_parquet('{a}')",
    "SELECT list_transform([1], x -> (SELECT 1 FROM read_text('{a}'))) AS l",
    "SELECT * FROM (SUMMARIZE SELECT * FROM read_text('{a}'))",
    "DESCRIBE SELECT * FROM read_text('{a}')",
    "SELECT * FROM a_1 JOIN a_1 b ON (SELECT 1 FROM read_text('{a}')) = 1",
    "SELECT * FROM (PIVOT read_parquet('{a}') ON id IN ('x') USING sum(v))",
    "SELECT * FROM arrow_scan(1, 2, 3)",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM (FROM read_text('{a}'))",
]


@pytest.mark.parametrize("template", VIEWS_ONLY_BYPASSES)
def test_views_only_refuses_every_way_to_a_file(tmp_path: Path, template: str) -> None:
    root = _ab_root(tmp_path)
    query = template.format(a=_files_of(root, "a_1"))
    with Catalog(root) as cat:
        with (
            pytest.raises(InvalidRequestError, match="Permission Error") as err,
            cat.sql_reader(query, views_only=True) as reader,
        ):
            reader.read_all()
        assert "a_1-r" not in str(err.value)


@pytest.mark.parametrize("query", [
    "SELECT v FROM a_1",
    "FROM a_1 SELECT v",
    "WITH x AS (SELECT * FROM a_1) SELECT v FROM x",
    "SELECT * FROM a_1 ASOF JOIN b_1 USING (id, ts)",
    "SELECT v FROM a_1 UNION ALL SELECT v FROM b_1",
    "SHOW TABLES",
    "DESCRIBE a_1",
    "SUMMARIZE a_1",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM range(3) t(x), unnest([1, 2]) u(y)",
    "SELECT * FROM generate_series(1, 3)",
    "SELECT * FROM duckdb_views()",
    "SELECT * FROM (PIVOT a_1 ON id IN ('a_1-r') USING sum(v))",
    "SELECT current_setting('memory_limit') AS m",
    "VALUES (1, 'x')",
    "SELECT 'x.parquet' AS file_name_in_a_string",
])
def test_views_only_keeps_queries_over_views_working(tmp_path: Path, query: str) -> None:
    root = _ab_root(tmp_path)
    with Catalog(root) as cat, cat.sql_reader(query, views_only=True) as reader:
        reader.read_all()


def test_a_name_that_is_no_view_is_reported_by_name(tmp_path: Path) -> None:
    from tessera.core.catalog import UnknownTableError

    root = _ab_root(tmp_path)
    with Catalog(root, groups={"a_1"}) as cat:
        for query, names in (
            ("SELECT * FROM b_1", ["b_1"]),
            ("SELECT * FROM a_1, main.B_1", ["B_1"]),
            ("WITH x AS (SELECT * FROM a_1) SELECT * FROM x, nope", ["nope"]),
        ):
            with (
                pytest.raises(UnknownTableError) as err,
                cat.sql_reader(query, views_only=True) as reader,
            ):
                reader.read_all()
            assert err.value.names == names, query
        # Without views_only (the local catalog) the error is the plain one.
        with pytest.raises(InvalidRequestError) as plain:
            cat.sql("SELECT * FROM b_1")
        assert not isinstance(plain.value, UnknownTableError)
