"""POST /v1/sql on real servers started with `--auth` (`--workers 1` and `--workers 2`), with real
API keys from the data directory's key store: a caller sees the views of the groups it may read
and nothing else (SQL, and a point-in-time dataset built in SQL), a name it may not read answers
403 naming the group whether or not that group exists, no caller reaches a file through any
table function, replacement scan or statement, and an admin sees every group."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tessera.server.auth.keys import KeyStore
from tests.conftest import WORKERS
from tests.integration.test_offline_history import FAST_FLUSH
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

GROUPS = ("a_1", "a_2", "b_1")
KEYS = {
    "admin": ["admin"],
    "reader_a": ["read:a_*"],
    "reader_a1": ["read:a_1", "write:b_*"],  # writing b_* does not let it read b_*
}
FEATURES = [
    {"feature_name": "id", "feature_type": "String"},
    {"feature_name": "ts", "feature_type": "Fractional"},
    {"feature_name": "n", "feature_type": "Integral"},
]


@dataclass
class SqlServer:
    proc: ServerProcess
    tokens: dict[str, str]

    def sql(self, key: str | None, query: str, **extra: Any) -> httpx.Response:
        headers = {} if key is None else {"authorization": f"Bearer {self.tokens[key]}"}
        return httpx.post(f"{self.proc.http_url}/v1/sql", json={"query": query, **extra},
                          headers=headers, timeout=60)

    def rows(self, key: str, query: str) -> list[list[Any]]:
        r = self.sql(key, query)
        assert r.status_code == 200, r.text
        return list(r.json()["rows"])

    def file_of(self, group: str) -> Path:
        (path,) = (self.proc.data_dir / "offline" / group).glob("event_date=*/*.parquet")
        return path


def _start(data_dir: Path, workers: int) -> SqlServer:
    keys = KeyStore(data_dir)
    tokens = {name: keys.create(name, perms).secret for name, perms in KEYS.items()}
    proc = ServerProcess(data_dir, workers=workers,
                         extra_env={**FAST_FLUSH, "TESSERA_AUTH__ENABLED": "true"})
    proc.start(timeout_s=120)  # --workers 2 on a loaded 2-core machine: 30-60 s seen
    try:
        admin = {"authorization": f"Bearer {tokens['admin']}"}
        with (
            httpx.Client(base_url=proc.http_url, timeout=10, headers=admin) as http,
            grpc.insecure_channel(proc.grpc_target) as channel,
        ):
            stub = pb_grpc.FeatureStoreStub(channel)
            for i, name in enumerate(GROUPS, start=1):
                resp = http.post("/v1/feature-groups", json={
                    "feature_group_name": name, "record_identifier_feature_name": "id",
                    "event_time_feature_name": "ts", "feature_definitions": FEATURES})
                assert resp.status_code == 201, resp.text
                stub.PutRecord(pb.PutRecordRequest(
                    feature_group_name=name,
                    record=to_record({"id": f"{name}-r", "ts": 100.0, "n": i})),
                    metadata=tuple(admin.items()), timeout=10)
        deadline = time.monotonic() + 20
        offline = data_dir / "offline"
        while not all(list((offline / g).glob("event_date=*/*.parquet")) for g in GROUPS):
            assert time.monotonic() < deadline, "history not flushed"
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        raise
    return SqlServer(proc, tokens)


@pytest.fixture(scope="module", params=WORKERS)
def each_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlServer]:
    """`--workers 1` and `--workers 2`: the principal reaches the SQL workers of every serving
    process."""
    server = _start(tmp_path_factory.mktemp("auth_sql") / "data", request.param)
    yield server
    server.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlServer]:
    """`--workers 1` for the many refusals: what a query may do is decided in the SQL worker,
    the same code under either layout."""
    s = _start(tmp_path_factory.mktemp("auth_sql1") / "data", 1)
    yield s
    s.proc.kill()


def test_a_reader_sees_the_groups_it_may_read_and_only_those(each_server: SqlServer) -> None:
    server = each_server
    assert server.rows("reader_a", "SELECT id, n FROM a_1") == [["a_1-r", 1]]
    union = "SELECT id FROM a_1 UNION ALL SELECT id FROM a_2 ORDER BY id"
    assert server.rows("reader_a", union) == [["a_1-r"], ["a_2-r"]]
    for listing in ("SHOW TABLES",
                    "SELECT table_name FROM information_schema.tables ORDER BY 1",
                    "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1"):
        assert server.rows("reader_a", listing) == [["a_1"], ["a_2"]], listing
        assert server.rows("reader_a1", listing) == [["a_1"]], listing
    # The admin's catalog has every group.
    assert server.rows("admin", "SELECT count(*) FROM a_1, a_2, b_1") == [[1]]
    assert server.rows("admin", "SHOW TABLES") == [["a_1"], ["a_2"], ["b_1"]]
    r = server.sql("reader_a", "SELECT id FROM a_1, b_1")
    assert r.status_code == 403 and "'b_1'" in r.text, r.text
    r = server.sql("reader_a", f"SELECT * FROM read_parquet('{server.file_of('b_1')}')")
    assert r.status_code == 422 and "b_1-r" not in r.text, r.text


@pytest.mark.parametrize("query", [
    "SELECT * FROM b_1",
    "SELECT * FROM B_1",
    "SELECT id FROM a_1 UNION ALL SELECT id FROM b_1",
    "WITH x AS (SELECT * FROM b_1) SELECT * FROM x",
    "SELECT * FROM a_1 WHERE n IN (SELECT n FROM main.b_1)",
    "SELECT * FROM query_table('b_1')",
    "DESCRIBE b_1",
])
def test_naming_a_group_it_may_not_read_is_403_naming_the_group(
    server: SqlServer, query: str
) -> None:
    r = server.sql("reader_a", query)
    if "query_table" in query:  # refused before any name is looked up
        assert r.status_code == 422 and "Permission Error" in r.text, r.text
        return
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "PermissionDenied"
    assert "'reader_a' lacks the permission read on feature group" in error["message"]
    assert "b_1" in error["message"].lower() and "b_1-r" not in r.text


def _without_request_id(message: str) -> tuple[str, str]:
    text, _, rid = message.rpartition(" (request id ")
    return text, rid.rstrip(")")


def test_a_403_tells_nothing_about_which_groups_exist(server: SqlServer) -> None:
    exists, _ = _without_request_id(
        server.sql("reader_a", "SELECT * FROM b_1").json()["error"]["message"])
    absent, _ = _without_request_id(
        server.sql("reader_a", "SELECT * FROM b_9").json()["error"]["message"])
    assert absent == exists.replace("b_1", "b_9")
    # A name it could read if it existed: the plain unknown-table error (422), whose "did you
    # mean" suggests the caller's own views only.
    r = server.sql("reader_a", "SELECT * FROM a_3")
    assert r.status_code == 422, r.text
    assert "does not exist" in r.text and "b_1" not in r.text


def test_a_denied_query_is_one_audit_line_with_the_request_id(server: SqlServer) -> None:
    r = server.sql("reader_a", "SELECT n FROM a_1 UNION ALL SELECT n FROM b_1")
    assert r.status_code == 403, r.text
    _, request_id = _without_request_id(r.json()["error"]["message"])
    lines = [json.loads(line) for line in
             (server.proc.data_dir / "audit.log").read_text().splitlines()]
    (line,) = [x for x in lines if x.get("request_id") == request_id]
    assert line["principal"] == "reader_a" and line["action"] == "POST /v1/sql"
    assert line["group"] == "b_1" and line["outcome"] == "denied"
    assert "lacks the permission read on feature group 'b_1'" in line["reason"]
    assert "SELECT" not in json.dumps(line)  # the query text stays out of the log


def test_a_point_in_time_dataset_in_sql_sees_readable_groups_only(server: SqlServer) -> None:
    spine = "(SELECT * FROM (VALUES ('a_1-r', 150.0::DOUBLE), ('a_1-r', 50.0::DOUBLE)) s(id, ts))"
    pit = (f"SELECT s.id, s.ts, f.n FROM {spine} s ASOF LEFT JOIN {{g}} f "
           "ON s.id = f.id AND s.ts >= f.ts ORDER BY s.ts")
    assert server.rows("reader_a", pit.format(g="a_1")) == [["a_1-r", 50.0, None],
                                                             ["a_1-r", 150.0, 1]]
    r = server.sql("reader_a", pit.format(g="b_1"))
    assert r.status_code == 403 and "'b_1'" in r.text, r.text


@pytest.mark.parametrize("template", [
    "SELECT * FROM read_parquet('{b}')",
    "SELECT * FROM parquet_scan('{b}')",
    "SELECT * FROM read_parquet('{a_dir}/../../b_1/*/*.parquet')",
    "SELECT * FROM '{b}'",
    "SELECT * FROM glob('{root}/*')",
    "SELECT * FROM read_text('{root}/b_1/_group.json')",
    "SELECT * FROM read_blob('{b}')",
    "SELECT * FROM read_csv('{b}')",
    "SELECT * FROM read_json_auto('{b}')",
    "WITH t AS (SELECT * FROM read_parquet('{b}')) SELECT * FROM t",
    "SELECT (SELECT count(*) FROM read_parquet('{b}')) AS n",
    "SELECT * FROM a_1 WHERE n IN (SELECT n FROM parquet_scan('{b}'))",
    "SELECT * FROM query('SELECT * FROM b_1')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM b_1'))",
])
def test_no_caller_reaches_a_file(server: SqlServer, template: str) -> None:
    b = server.file_of("b_1")
    root = server.proc.data_dir / "offline"
    query = template.format(b=b, root=root, a_dir=server.file_of("a_1").parent)
    for key in ("reader_a", "admin"):
        r = server.sql(key, query)
        assert r.status_code == 422, (key, r.text)
        assert "Permission Error" in r.json()["error"]["message"]
        assert "b_1-r" not in r.text


@pytest.mark.parametrize("statement", [
    "ATTACH '{root}/x.db' AS x",
    "COPY (SELECT 1) TO '{root}/a_1/out.csv'",
    "INSTALL httpfs",
    "LOAD parquet",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "CREATE VIEW b_1 AS SELECT 1",
    "SELECT 1; SELECT * FROM b_1",
])
def test_no_statement_but_one_select_runs(server: SqlServer, statement: str) -> None:
    r = server.sql("reader_a", statement.format(root=server.proc.data_dir / "offline"))
    assert r.status_code == 422, r.text
    assert "SELECT" in r.json()["error"]["message"]


def test_credentials_are_needed(server: SqlServer) -> None:
    r = server.sql(None, "SELECT 1")
    assert r.status_code == 401, r.text
    r = httpx.post(f"{server.proc.http_url}/v1/sql", json={"query": "SELECT 1"},
                   headers={"authorization": "Bearer tsk_not_a_key"}, timeout=30)
    assert r.status_code == 401, r.text
