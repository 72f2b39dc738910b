"""One contract for every `Registry`: `FeatureGroupRegistry` (the process owning the primary)
and `RemoteRegistry` (a serving process: its own secondary, mutations through a real writer
process). Same answers, same error classes and messages, all-or-nothing, case rules,
quarantine."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.core import offline_layout as layout
from tessera.core.errors import (
    ConflictError,
    FeatureGroupNotFoundError,
    InvalidRequestError,
    StorageError,
)
from tessera.core.schema import FeatureDefinition, FeatureGroup, FeatureGroupUpdate
from tessera.server.registry import NEXT_ID, FeatureGroupRegistry, Registry, group_key
from tessera.server.rocksdb import RocksDB
from tests.registry_harness import Prepare, definition, local_registry, remote_registry

Opener = Callable[..., contextlib.AbstractContextManager[Registry]]


@pytest.fixture(params=["local", "remote"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the registry of the kind under test on tmp_path/data (once per test)."""
    data = tmp_path / "data"
    with contextlib.ExitStack() as stack:

        def open_registry(prepare: Prepare | None = None) -> Registry:
            if request.param == "local":
                return stack.enter_context(local_registry(data, prepare))
            return stack.enter_context(remote_registry(data, tmp_path / "sec", prepare))

        yield open_registry  # type: ignore[misc]


@pytest.fixture
def registry(opened: Opener) -> Registry:
    return opened()


def _offline(registry: Registry, tmp_path: Path) -> Path:
    return tmp_path / "data" / "offline"


def test_a_created_group_is_described_listed_and_compiled(registry: Registry) -> None:
    group = registry.create(definition())
    assert group.name == "users" and group.feature_group_id == 1 and group.version == 1
    assert registry.describe("users") == group
    assert registry.list() == [group] and registry.list("se") == [group]
    assert registry.list("nope") == []
    schema = registry.schema("users")
    assert schema.group_id == 1 and set(schema.features) == {"id", "ts", "clicks"}
    assert registry.find_schema("users") is schema and registry.find_schema("x") is None
    assert registry.by_id(1) == (group, False) and registry.by_id(2) is None
    assert registry.quarantined() == {}
    assert registry.newer_schema(schema) is None


def test_names_are_exact_and_unique_in_any_case(registry: Registry) -> None:
    registry.create(definition())
    with pytest.raises(FeatureGroupNotFoundError):
        registry.describe("Users")
    with pytest.raises(FeatureGroupNotFoundError):
        registry.schema("USERS")
    with pytest.raises(ConflictError, match="feature group 'users' already exists"):
        registry.create(definition())
    with pytest.raises(ConflictError, match="differs from the existing group 'users' only in"):
        registry.create(definition("Users"))
    assert [g.name for g in registry.list()] == ["users"]


def test_a_refused_definition_creates_nothing(registry: Registry) -> None:
    with pytest.raises(InvalidRequestError, match="feature_group_name"):
        registry.create(definition("x" * 70))
    with pytest.raises(InvalidRequestError):
        registry.create(definition(event_time_feature_name="missing"))
    with pytest.raises(InvalidRequestError, match=r"feature_group_name 'users\\ud800' is not"):
        registry.create(definition("users\ud800"))  # a lone surrogate (JSON can carry one)
    with pytest.raises(FeatureGroupNotFoundError):
        registry.delete("users\ud800")
    assert registry.list() == []
    assert registry.create(definition()).feature_group_id == 1  # no id was used up
    with pytest.raises(InvalidRequestError, match="feature_name"):
        registry.update("users", FeatureGroupUpdate(
            feature_additions=[FeatureDefinition.of("a\ud800", "Integral")]))
    assert registry.describe("users").version == 1


def test_an_update_adds_features_as_a_new_version(registry: Registry) -> None:
    registry.create(definition())
    old = registry.schema("users")
    new = registry.update("users", FeatureGroupUpdate(
        feature_additions=[FeatureDefinition.of("score", "Fractional")]))
    assert new.version == 2 and registry.describe("users") == new
    assert "score" in registry.schema("users").features
    newer = registry.newer_schema(old)
    assert newer is not None and "score" in newer.features
    described = registry.update("users", FeatureGroupUpdate(description="clicks per user"))
    assert described.version == 2 and described.definition.description == "clicks per user"
    with pytest.raises(ConflictError, match="'Score'"):
        registry.update("users", FeatureGroupUpdate(
            feature_additions=[FeatureDefinition.of("Score", "Integral")]))
    with pytest.raises(FeatureGroupNotFoundError):
        registry.update("nope", FeatureGroupUpdate(description="x"))
    assert registry.describe("users").version == 2


def test_a_deleted_group_is_gone_retired_and_its_name_free(
    registry: Registry, tmp_path: Path
) -> None:
    group = registry.create(definition())
    offline = _offline(registry, tmp_path)
    assert (offline / "users" / layout.GROUP_FILE).exists()
    registry.delete("users")
    for lookup in (registry.describe, registry.schema):
        with pytest.raises(FeatureGroupNotFoundError):
            lookup("users")
    assert registry.list() == [] and registry.by_id(1) == (group, True)
    assert not (offline / "users").exists()
    assert (offline / ".retired" / "users.1" / layout.GROUP_FILE).exists()
    with pytest.raises(FeatureGroupNotFoundError):
        registry.delete("users")
    assert registry.create(definition()).feature_group_id == 2


def test_a_failed_offline_publication_leaves_no_trace(
    registry: Registry, tmp_path: Path
) -> None:
    offline = _offline(registry, tmp_path)
    offline.mkdir(parents=True, exist_ok=True)
    (offline / "users").write_text("a file where the group's folder would go")
    with pytest.raises(StorageError, match="cannot publish feature group 'users'"):
        registry.create(definition())
    assert registry.list() == []
    with pytest.raises(FeatureGroupNotFoundError):
        registry.describe("users")
    (offline / "users").unlink()
    assert registry.create(definition()).feature_group_id == 1


def _store_unchecked(rocks: RocksDB, group_id: int, definition: Any) -> None:
    """Write a group as an older, looser rule did (straight into the column family)."""
    group = FeatureGroup(definition=definition, feature_group_id=group_id, creation_time=1.0,
                         last_modified_time=1.0)
    rocks.registry[group_key(group.name)] = group.model_dump_json().encode()
    rocks.registry[NEXT_ID] = (group_id + 1).to_bytes(8, "big")


def test_groups_made_under_an_older_rule_are_quarantined_serving_and_deletable(
    opened: Opener,
) -> None:
    def prepare(rocks: RocksDB) -> None:
        _store_unchecked(rocks, 1, definition("users"))
        _store_unchecked(rocks, 2, definition().model_copy(
            update={"feature_group_name": "users\n"}))
        _store_unchecked(rocks, 3, definition().model_copy(
            update={"feature_group_name": "USERS"}))

    registry = opened(prepare)
    reasons = registry.quarantined()
    assert set(reasons) == {"users\n", "USERS"}
    assert reasons["users\n"].startswith(r"feature_group_name 'users\n' is not valid")
    assert reasons["USERS"].startswith("its name differs only in case from the older group")
    assert registry.schema("USERS").group_id == 3  # still serving its records
    registry.delete("users\n")
    registry.delete("USERS")
    assert registry.quarantined() == {}
    assert [g.name for g in registry.list()] == ["users"]


def test_a_group_whose_folder_cannot_be_published_at_start_is_quarantined(
    opened: Opener, tmp_path: Path
) -> None:
    offline = tmp_path / "data" / "offline"

    def prepare(rocks: RocksDB) -> None:
        FeatureGroupRegistry(rocks).create(definition("users"))
        FeatureGroupRegistry(rocks).create(definition("items"))
        offline.mkdir(parents=True)
        (offline / "users").write_text("in the way")

    registry = opened(prepare)
    reasons = registry.quarantined()
    assert list(reasons) == ["users"]
    assert "its offline folder cannot be published" in reasons["users"]
    assert registry.schema("users").group_id == 1  # still serving
    (offline / "users").unlink()
    registry.delete("users")
    assert registry.quarantined() == {} and [g.name for g in registry.list()] == ["items"]
