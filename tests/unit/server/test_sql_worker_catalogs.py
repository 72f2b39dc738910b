"""The SQL worker's catalogs per caller (issue 12): which database a query runs in, a group made
since a caller's catalog was built, the catalogs kept, and the answer to a query naming a group
the caller may not read. The worker's own code, in process (tests/integration/test_auth_sql.py
runs it behind real servers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tessera.core.catalog import UnknownTableError
from tessera.server import sql_worker
from tessera.server.auth.permissions import LOCAL, Principal, parse_permissions
from tessera.server.sql_worker import SqlPermissionDeniedError, _Catalogs, _encode, reader_of
from tests.offline_fixtures import make_group, write_history


def _write(root: Path, name: str, gid: int) -> None:
    group = make_group(name, {"id": "String", "ts": "Fractional", "v": "Integral"},
                       group_id=gid)
    write_history(root, group, [{"id": f"{name}-r", "ts": 10.0, "v": gid}])


def _principal(*perms: str) -> Principal:
    return Principal("p", parse_permissions(list(perms)))


@pytest.fixture
def catalogs(tmp_path: Path) -> Any:
    root = tmp_path / "offline"
    for i, name in enumerate(("a_1", "b_1"), start=1):
        _write(root, name, i)
    temp = tmp_path / "temp"
    temp.mkdir()
    c = _Catalogs(str(root), str(temp), "1GB", 1)
    yield c
    c.close()


def _query(catalogs: _Catalogs, principal: Principal, query: str) -> Any:
    request = ("run", 1, query, "json", 100, 1_000_000, 30.0, reader_of(principal))
    reader = catalogs.principal(request[-1])
    assert reader == principal  # rebuilt in the worker from what crossed the socket
    _, body = _encode(catalogs, request, {}, 64 * 1024)
    return json.loads(body)["rows"]


def test_an_admin_queries_the_catalog_of_every_group(catalogs: _Catalogs) -> None:
    assert reader_of(LOCAL) is None
    assert catalogs.for_principal(LOCAL) is catalogs.full
    assert _query(catalogs, LOCAL, "SELECT count(*) FROM a_1, b_1") == [[1]]


def test_a_reader_gets_a_catalog_of_its_groups_kept_for_its_next_query(
    catalogs: _Catalogs,
) -> None:
    reader = _principal("read:a_*", "write:b_*")
    first = catalogs.for_principal(reader)
    assert first.group_names() == ["a_1"] and first is not catalogs.full
    assert catalogs.for_principal(reader) is first
    # Another principal with the same readable groups shares it.
    assert catalogs.for_principal(_principal("read:a_1")) is first
    assert _query(catalogs, reader, "SELECT id FROM a_1") == [["a_1-r"]]
    assert _query(catalogs, reader, "SHOW TABLES") == [["a_1"]]


def test_a_group_made_since_is_in_the_readers_next_catalog(
    catalogs: _Catalogs, tmp_path: Path
) -> None:
    reader = _principal("read:a_*")
    before = catalogs.for_principal(reader)
    _write(tmp_path / "offline", "a_2", 3)
    _write(tmp_path / "offline", "b_2", 4)
    after = catalogs.for_principal(reader)
    assert after is not before and after.group_names() == ["a_1", "a_2"]
    assert _query(catalogs, reader, "SELECT id FROM a_2") == [["a_2-r"]]


def test_catalogs_past_the_limit_are_closed_and_their_folders_removed(
    catalogs: _Catalogs, tmp_path: Path
) -> None:
    for i in range(sql_worker._KEPT_CATALOGS + 2):
        _write(tmp_path / "offline", f"c_{i}", 10 + i)
    made = [catalogs.for_principal(_principal(f"read:c_{i}"))
            for i in range(sql_worker._KEPT_CATALOGS + 2)]
    folders = sorted(p.name for p in (tmp_path / "temp").iterdir())
    assert len(folders) == sql_worker._KEPT_CATALOGS
    with pytest.raises(Exception, match="closed"):
        made[0].sql("SELECT 1")
    assert made[-1].sql("SELECT id FROM c_5").to_pylist() == [{"id": "c_5-r"}]


def test_naming_a_group_the_caller_may_not_read_is_permission_denied(
    catalogs: _Catalogs,
) -> None:
    reader = _principal("read:a_*")
    for query in ("SELECT * FROM b_1", "SELECT * FROM a_1, b_1",
                  "SELECT * FROM zz_not_a_group"):
        with pytest.raises(SqlPermissionDeniedError) as err:
            _query(catalogs, reader, query)
        name = "zz_not_a_group" if "zz" in query else "b_1"
        assert err.value.message == (
            f"sql: 'p' lacks the permission read on feature group '{name}', so its view is "
            "not in this query's catalog"
        )
        assert err.value.http_status == 403 and err.value.group == name
    # A name it could read if it existed: the unknown-table error, not a 403.
    with pytest.raises(UnknownTableError, match="does not exist") as unknown:
        _query(catalogs, reader, "SELECT * FROM a_9")
    assert unknown.value.names == ["a_9"]
