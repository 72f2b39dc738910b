"""Symbolic links under the offline root are never followed: DuckDB follows them, and its
allowed_directories compares path strings, so a link planted in a group folder or a partition
could read any file of the host. A group holding one has no view; the others keep theirs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.core import offline_layout as layout
from tessera.core.catalog import Catalog
from tessera.core.errors import InvalidRequestError, StorageError
from tests.offline_fixtures import make_group, write_history

USERS = make_group("users", {"user_id": "String", "ts": "Fractional", "clicks": "Integral"},
                   record_id="user_id")
ITEMS = make_group("items", {"id": "Integral", "ts": "Fractional", "n": "Integral"}, group_id=2)
SECRET = 424242


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "offline"
    write_history(root, USERS, [{"user_id": "u1", "ts": 10.0, "clicks": 1}])
    write_history(root, ITEMS, [{"id": 1, "ts": 10.0, "n": 5}])
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the root holding a Parquet file with the group's columns."""
    folder = tmp_path / "outside"
    part = folder / f"{layout.EVENT_DATE}=1970-01-01"
    part.mkdir(parents=True)
    table = pa.table({"user_id": ["secret"], "clicks": pa.array([SECRET], pa.int64())})
    pq.write_table(table, part / "stolen.parquet")
    pq.write_table(table, folder / "stolen.parquet")
    return folder


@pytest.fixture
def catalog(root: Path) -> Iterator[Catalog]:
    cat = Catalog(root)
    yield cat
    cat.close()


def users_clicks(cat: Catalog) -> list[int]:
    return cat.sql("SELECT clicks FROM users ORDER BY clicks").column(0).to_pylist()


def assert_users_refused(cat: Catalog, link: Path) -> None:
    cat.refresh()
    assert "users" not in cat.group_names()
    reason = cat.broken()["users"]
    assert "symbolic link" in reason and str(link) in reason
    with pytest.raises((InvalidRequestError, StorageError)):
        cat.sql("SELECT clicks FROM users")
    # The other groups are not affected.
    assert cat.sql("SELECT n FROM items").column(0).to_pylist() == [5]


def test_a_linked_partition_folder_outside_the_root_is_refused(
    root: Path, outside: Path, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    assert users_clicks(catalog) == [1]
    link = root / "users" / f"{layout.EVENT_DATE}=1970-01-02"
    os.symlink(outside / f"{layout.EVENT_DATE}=1970-01-01", link)
    with caplog.at_level(logging.ERROR, logger="tessera.core.catalog"):
        assert_users_refused(catalog, link)
    assert any(str(link) in r.getMessage() for r in caplog.records)
    os.unlink(link)  # fixed: the group has its view again
    assert users_clicks(catalog) == [1]
    assert catalog.broken() == {}


def test_a_linked_parquet_file_in_a_partition_is_refused(
    root: Path, outside: Path, catalog: Catalog
) -> None:
    part = next((root / "users").glob(f"{layout.EVENT_DATE}=*"))
    link = part / "part-99-99.parquet"
    os.symlink(outside / "stolen.parquet", link)
    assert_users_refused(catalog, link)


def test_a_link_to_etc_passwd_is_never_read(root: Path, catalog: Catalog) -> None:
    part = next((root / "users").glob(f"{layout.EVENT_DATE}=*"))
    link = part / "passwd.parquet"
    os.symlink("/etc/passwd", link)
    assert_users_refused(catalog, link)
    # A group file that is a link: not read at all, so nothing of it reaches a reason or log.
    os.unlink(link)
    group_file = root / "users" / layout.GROUP_FILE
    group_file.unlink()
    os.symlink("/etc/passwd", group_file)
    assert_users_refused(catalog, group_file)
    assert "root:" not in catalog.broken()["users"]


def test_a_group_folder_that_is_a_link_is_refused(
    tmp_path: Path, root: Path, catalog: Catalog
) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_history(elsewhere, make_group("other", {"id": "Integral", "ts": "Fractional"},
                                        group_id=3), [{"id": 1, "ts": 1.0}])
    link = root / "other"
    os.symlink(elsewhere / "other", link)
    catalog.refresh()
    assert "other" not in catalog.group_names()
    assert str(link) in catalog.broken()["other"]
    assert catalog.group_names() == ["items", "users"]


def test_a_symlinked_secret_never_reaches_a_query_result(
    root: Path, outside: Path, catalog: Catalog
) -> None:
    os.symlink(outside / f"{layout.EVENT_DATE}=1970-01-01",
               root / "users" / f"{layout.EVENT_DATE}=1970-01-05")
    with pytest.raises((InvalidRequestError, StorageError)):
        catalog.sql("SELECT clicks FROM users")
    # Through the items view or a glob of the root: the sandbox refuses paths outside it,
    # and nothing under it leads outside.
    got = catalog.sql("SELECT n FROM items")
    assert SECRET not in got.column(0).to_pylist()
