"""The feature group registry on a real RocksDB and a real offline folder in tmp_path: creating
and updating are all-or-nothing whichever step fails, RocksDB failures are StorageError, and a
registry holding groups made under an older rule opens with them quarantined."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.core import offline_layout as layout
from tessera.core.errors import ConflictError, InvalidRequestError, StorageError
from tessera.core.schema import (
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
    TtlDuration,
)
from tessera.server.offline_writer import UNNAMED_DIR, ParquetOfflineWriter
from tessera.server.registry import (
    GROUP_PREFIX,
    NEXT_ID,
    VERSION,
    FeatureGroupRegistry,
    group_key,
)
from tessera.server.rocksdb import RocksDB, open_rocksdb


class OfflineHooks:
    """The offline store's part of the server's hooks (server/app.py)."""

    def __init__(self, offline: ParquetOfflineWriter) -> None:
        self.offline = offline

    def group_changed(self, group: FeatureGroup) -> None:
        self.offline.publish_group(group)

    def group_deleted(self, group: FeatureGroup) -> None:
        self.offline.retire_group(group)


@pytest.fixture
def rocks(tmp_path: Path) -> Iterator[RocksDB]:
    db = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    yield db
    db.close()


@pytest.fixture
def offline(tmp_path: Path) -> ParquetOfflineWriter:
    return ParquetOfflineWriter(tmp_path / "offline")


def _registry(rocks: RocksDB, offline: ParquetOfflineWriter) -> FeatureGroupRegistry:
    return FeatureGroupRegistry(rocks, OfflineHooks(offline))


def _definition(name: str = "users", **overrides: Any) -> FeatureGroupDefinition:
    body: dict[str, Any] = {
        "feature_group_name": name,
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            {"feature_name": "clicks", "feature_type": "Integral"},
        ],
    }
    body.update(overrides)
    return FeatureGroupDefinition.model_validate(body)


def _stored(rocks: RocksDB) -> dict[bytes, bytes]:
    """The registry's entries but its change counter (bumped by every write, undone or not)."""
    return {k: v for k, v in rocks.registry.items() if isinstance(k, bytes) and k != VERSION}


def _store_as_an_older_rule_did(rocks: RocksDB, group_id: int, definition: Any) -> FeatureGroup:
    """Write a group straight into the registry's column family, unchecked (key layout:
    group/<name> -> FeatureGroup JSON; meta/next_group_id -> >Q)."""
    group = FeatureGroup(definition=_definition(), feature_group_id=group_id, creation_time=1.0,
                         last_modified_time=1.0).model_copy(update={"definition": definition})
    rocks.registry[group_key(group.name)] = group.model_dump_json().encode()
    rocks.registry[NEXT_ID] = (group_id + 1).to_bytes(8, "big")
    return group


class _FailingDB:
    """An Rdict whose writes fail as RocksDB does on a full disk."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def write(self, *_: Any) -> None:
        raise Exception("IO error: No space left on device: While appending to file: 000009.log")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


# --- all or nothing ---------------------------------------------------------------------------


def test_create_publishes_the_offline_folder_and_survives_a_reopen(
    rocks: RocksDB, offline: ParquetOfflineWriter
) -> None:
    group = _registry(rocks, offline).create(_definition())
    assert (offline.root / "users" / layout.GROUP_FILE).exists()
    again = FeatureGroupRegistry(rocks)
    assert again.describe("users") == group and again.quarantined() == {}


def test_a_failed_rocksdb_write_is_a_storage_error_and_leaves_no_trace(
    rocks: RocksDB, offline: ParquetOfflineWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(rocks, offline)
    registry.create(_definition("kept"))
    before = _stored(rocks)
    monkeypatch.setattr(FeatureGroupRegistry, "_db", property(lambda r: _FailingDB(r._rocks.db)))
    with pytest.raises(StorageError, match="cannot create feature group 'users': IO error: No "
                                           "space left on device"):
        registry.create(_definition())
    with pytest.raises(StorageError, match="cannot update feature group 'kept'"):
        registry.update("kept", FeatureGroupUpdate(description="new"))
    with pytest.raises(StorageError, match="cannot delete feature group 'kept'"):
        registry.delete("kept")
    monkeypatch.undo()
    assert _stored(rocks) == before
    assert [g.name for g in registry.list()] == ["kept"]
    assert registry.describe("kept").definition.description is None
    assert not (offline.root / "users").exists()
    registry.create(_definition())  # and the store works again once the disk has room
    assert [g.name for g in FeatureGroupRegistry(rocks).list()] == ["kept", "users"]


def test_a_failed_offline_publication_undoes_the_registry_write(
    rocks: RocksDB, offline: ParquetOfflineWriter
) -> None:
    registry = _registry(rocks, offline)
    before = _stored(rocks)
    (offline.root / "users").write_text("a file where the group's folder would go")
    with pytest.raises(StorageError, match="the offline store cannot publish feature group "
                                           "'users'"):
        registry.create(_definition())
    assert _stored(rocks) == before  # the group and the next id as they were
    assert registry.list() == [] and FeatureGroupRegistry(rocks).list() == []
    with pytest.raises(Exception, match="does not exist"):
        registry.schema("users")
    (offline.root / "users").unlink()
    assert registry.create(_definition()).feature_group_id == 1


def test_a_publication_failing_half_way_removes_the_folder_it_made(
    rocks: RocksDB, offline: ParquetOfflineWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(rocks, offline)

    def full_disk(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tessera.server.offline_writer.os.replace", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        registry.create(_definition())
    assert os.listdir(offline.root) == [] and _stored(rocks) == {}


def test_a_failed_update_keeps_the_previous_version(
    rocks: RocksDB, offline: ParquetOfflineWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(rocks, offline)
    v1 = registry.create(_definition())
    published = (offline.root / "users" / layout.GROUP_FILE).read_text()

    def full_disk(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tessera.server.offline_writer.os.replace", full_disk)
    update = FeatureGroupUpdate(feature_additions=[FeatureDefinition.of("country", "String")])
    with pytest.raises(StorageError):
        registry.update("users", update)
    monkeypatch.undo()
    assert registry.describe("users") == v1
    assert "country" not in registry.schema("users").features
    assert FeatureGroupRegistry(rocks).describe("users") == v1
    assert (offline.root / "users" / layout.GROUP_FILE).read_text() == published
    assert not list((offline.root / "users").glob(".*"))  # no temporary left behind
    assert registry.update("users", update).version == 2


def test_a_change_whose_undo_fails_too_is_quarantined_and_deletable(
    rocks: RocksDB, offline: ParquetOfflineWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(rocks, offline)
    (offline.root / "users").write_text("in the way")
    real_write = FeatureGroupRegistry._write

    def fail_the_undo(self: FeatureGroupRegistry, wb: Any, what: str) -> None:
        if what.startswith("undo"):
            raise StorageError("the feature group registry cannot undo: IO error")
        real_write(self, wb, what)

    monkeypatch.setattr(FeatureGroupRegistry, "_write", fail_the_undo)
    with pytest.raises(StorageError, match="cannot publish"):
        registry.create(_definition())
    monkeypatch.undo()
    assert "could not be undone; delete it" in registry.quarantined()["users"]
    registry.delete("users")
    assert registry.list() == [] and registry.quarantined() == {}
    assert FeatureGroupRegistry(rocks).list() == []


def test_refused_definitions_write_nothing(rocks: RocksDB, offline: ParquetOfflineWriter) -> None:
    registry = _registry(rocks, offline)
    for name in ("users\n", "a" + "_" * 4998 + "b", "x\ud800"):
        with pytest.raises(InvalidRequestError, match="is not valid"):
            registry.create(_definition(name))
    assert _stored(rocks) == {} and os.listdir(offline.root) == []


def test_group_names_are_unique_in_any_case(
    rocks: RocksDB, offline: ParquetOfflineWriter
) -> None:
    registry = _registry(rocks, offline)
    registry.create(_definition("Users"))
    with pytest.raises(ConflictError, match="feature group 'Users' already exists"):
        registry.create(_definition("Users"))
    with pytest.raises(ConflictError, match="feature group 'USERS' differs from the existing "
                                            "group 'Users' only in case"):
        registry.create(_definition("USERS"))
    with pytest.raises(Exception, match="does not exist"):
        registry.describe("users")  # lookups stay exact-case


def test_an_update_adding_a_feature_in_another_case_is_a_conflict(
    rocks: RocksDB, offline: ParquetOfflineWriter
) -> None:
    registry = _registry(rocks, offline)
    registry.create(_definition(aggregations=[{"name": "n", "function": "count",
                                               "window": "1h"}]))
    for name, message in [("Clicks", "differs from the group's feature 'clicks' only in case"),
                          ("N", "would have the name of an aggregation feature of the group "
                                "('n', in any case)")]:
        with pytest.raises(ConflictError, match=message.replace("(", r"\(").replace(")", r"\)")):
            registry.update("users", FeatureGroupUpdate(
                feature_additions=[FeatureDefinition.of(name, "Integral")]))
    assert registry.describe("users").version == 1


# --- groups made under an older rule ------------------------------------------------------------


def test_groups_made_under_an_older_rule_load_quarantined(
    rocks: RocksDB, offline: ParquetOfflineWriter, tmp_path: Path
) -> None:
    long_name = "a" + "_" * 5000 + "b"
    _store_as_an_older_rule_did(rocks, 1, _definition("Users"))
    _store_as_an_older_rule_did(rocks, 2, _definition("users\n"))
    _store_as_an_older_rule_did(rocks, 3, _definition().model_copy(
        update={"feature_group_name": long_name}))
    _store_as_an_older_rule_did(rocks, 4, _definition().model_copy(update={
        "feature_group_name": "cased",
        "feature_definitions": [*_definition().feature_definitions,
                                FeatureDefinition.of("Clicks", "Integral")]}))
    _store_as_an_older_rule_did(rocks, 5, _definition("USERS"))
    _store_as_an_older_rule_did(rocks, 6, _definition("forever").model_copy(update={
        "online_store_config": _definition().online_store_config.model_copy(update={
            "ttl_duration": TtlDuration(unit="Days", value=10**30)})}))
    rocks.registry[GROUP_PREFIX + b"garbled"] = b"{not json"
    registry = _registry(rocks, offline)

    reasons = registry.quarantined()
    assert set(reasons) == {"users\n", long_name, "cased", "USERS", "forever", "garbled"}
    assert reasons["users\n"].startswith(r"feature_group_name 'users\n' is not valid")
    assert "(5,002 characters) is not valid" in reasons[long_name]
    assert "feature 'Clicks' and feature 'clicks' differ only in case" in reasons["cased"]
    assert reasons["USERS"].startswith("its name differs only in case from the older group "
                                       "'Users'")
    assert "ttl_duration" in reasons["forever"] and "out of range" in reasons["forever"]
    assert "does not parse" in reasons["garbled"]

    # They keep serving: schemas compile, and the good group is not affected.
    assert registry.schema(long_name).group_id == 3 and registry.schema("cased").group_id == 4
    assert "Users" not in reasons and registry.schema("Users").group_id == 1

    # The fix: delete them (their offline folders too, whatever their names).
    for group in registry.list():
        offline.publish_group(group)
    assert (offline.root / UNNAMED_DIR / "3" / layout.GROUP_FILE).exists()
    for name in ("users\n", long_name, "cased", "USERS", "forever", "garbled"):
        registry.delete(name)
    assert registry.quarantined() == {}
    assert [g.name for g in registry.list()] == ["Users"]
    assert not (offline.root / UNNAMED_DIR / "3").exists()
    assert (offline.root / ".retired" / "unnamed.3" / layout.GROUP_FILE).exists()
    reopened = FeatureGroupRegistry(rocks)
    assert reopened.quarantined() == {} and [g.name for g in reopened.list()] == ["Users"]
    with pytest.raises(ConflictError, match="only in case"):
        reopened.create(_definition("USERS"))


def test_rename_moves_the_folder_or_changes_nothing(
    rocks: RocksDB, offline: ParquetOfflineWriter
) -> None:
    _store_as_an_older_rule_did(rocks, 1, _definition("users\n"))
    _store_as_an_older_rule_did(rocks, 2, _definition("Other"))
    registry = _registry(rocks, offline)
    for group in registry.list():
        offline.publish_group(group)
    (offline.root / "users\n" / "history.parquet").write_bytes(b"rows")
    with pytest.raises(ConflictError, match="differs from the existing group 'Other'"):
        registry.rename("users\n", "OTHER", move=offline.rename_group)
    with pytest.raises(InvalidRequestError, match="'users x' is not valid"):
        registry.rename("users\n", "users x", move=offline.rename_group)
    (offline.root / "users").mkdir()  # in the way: the move fails, the registry write is undone
    before = _stored(rocks)
    with pytest.raises(StorageError, match="already has a folder"):
        registry.rename("users\n", "users", move=offline.rename_group)
    assert _stored(rocks) == before and "users\n" in registry.quarantined()
    (offline.root / "users").rmdir()

    renamed = registry.rename("users\n", "users", move=offline.rename_group)
    assert renamed.feature_group_id == 1 and registry.schema("users").group_id == 1
    assert registry.quarantined() == {}
    assert (offline.root / "users" / "history.parquet").read_bytes() == b"rows"
    assert '"feature_group_name": "users"' in (offline.root / "users" / layout.GROUP_FILE).read_text()
    assert not (offline.root / "users\n").exists()
    assert [g.name for g in FeatureGroupRegistry(rocks).list()] == ["Other", "users"]


def test_a_stored_group_that_no_longer_compiles_is_listed_and_deletable(
    rocks: RocksDB, offline: ParquetOfflineWriter
) -> None:
    """Its schema cannot be served (FAILED_PRECONDITION), but listing and deleting work."""
    from tessera.core.aggregation.spec import AggregationDefinition
    from tessera.core.errors import PreconditionFailedError

    _store_as_an_older_rule_did(rocks, 1, _definition("odd").model_copy(update={
        "aggregations": [AggregationDefinition(name="n", function="median", window="1h")]}))
    registry = _registry(rocks, offline)
    assert "function 'median' is not known" in registry.quarantined()["odd"]
    with pytest.raises(PreconditionFailedError, match="feature group 'odd' is quarantined"):
        registry.schema("odd")
    assert "aggregation_resolved" not in registry.describe("odd").describe()
    registry.delete("odd")
    assert registry.list() == [] and registry.quarantined() == {}
