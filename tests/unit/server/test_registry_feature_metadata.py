"""Feature metadata (description, key/value parameters) and TTL changes through
`Registry.update`, for both registries: `FeatureGroupRegistry` and `RemoteRegistry` (whose
update crosses a real writer process in the existing UpdateFeatureGroup message). Groups stored
before feature metadata existed still open."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.core.errors import InvalidRequestError, NotFoundError
from tessera.core.schema import (
    FeatureDefinition,
    FeatureGroupUpdate,
    FeatureMetadataUpdate,
    TtlDuration,
)
from tessera.server.registry import NEXT_ID, Registry, group_key
from tessera.server.rocksdb import RocksDB
from tests.registry_harness import Prepare, definition, local_registry, remote_registry


@contextlib.contextmanager
def _opener(kind: str, tmp_path: Path) -> Iterator[Any]:
    data = tmp_path / "data"
    with contextlib.ExitStack() as stack:

        def open_registry(prepare: Prepare | None = None) -> Registry:
            if kind == "local":
                return stack.enter_context(local_registry(data, prepare))
            return stack.enter_context(remote_registry(data, tmp_path / "sec", prepare))

        yield open_registry


@pytest.fixture(params=["local", "remote"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Either registry (a remote one starts a writer process: ~1 s, more on a busy machine)."""
    with _opener(request.param, tmp_path) as open_registry:
        yield open_registry


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Any]:
    """The primary's registry only: what `Registry.update` does is the same code in both."""
    with _opener("local", tmp_path) as open_registry:
        yield open_registry


def _meta(**changes: FeatureMetadataUpdate) -> FeatureGroupUpdate:
    return FeatureGroupUpdate(feature_metadata=changes)


def test_feature_metadata_is_set_changed_and_removed_without_a_new_version(
    opened: Any,
) -> None:
    registry: Registry = opened()
    created = registry.create(definition())
    assert created.times_of("clicks").creation_time == created.creation_time
    group = registry.update("users", _meta(clicks=FeatureMetadataUpdate(
        description="clicks in the session",
        parameter_additions={"owner": "growth team", "pii": "false"})))
    clicks = group.definition.feature_definitions[2]
    assert clicks.description == "clicks in the session"
    assert clicks.parameters == {"owner": "growth team", "pii": "false"}
    assert group.version == 1  # the schema did not change
    times = group.times_of("clicks")
    assert times.last_modified_time > times.creation_time == created.creation_time
    assert group.times_of("id") == created.times_of("id")
    assert registry.describe("users") == group

    group = registry.update("users", _meta(clicks=FeatureMetadataUpdate(
        parameter_removals=["pii", "never-set"], parameter_additions={"tier": "1"})))
    clicks = group.definition.feature_definitions[2]
    assert clicks.parameters == {"owner": "growth team", "tier": "1"}
    assert clicks.description == "clicks in the session"  # None keeps it
    group = registry.update("users", _meta(clicks=FeatureMetadataUpdate(description="")))
    assert group.definition.feature_definitions[2].description is None  # "" clears it
    described = group.describe()["feature_definitions"]
    assert isinstance(described, list) and described[2]["parameters"] == {
        "owner": "growth team", "tier": "1"}


def test_metadata_of_an_added_feature_and_a_new_ttl_in_one_update(local: Any) -> None:
    registry: Registry = local()
    registry.create(definition())
    group = registry.update("users", FeatureGroupUpdate(
        feature_additions=[FeatureDefinition.of("score", "Fractional")],
        feature_metadata={"score": FeatureMetadataUpdate(description="model score")},
        ttl_duration=TtlDuration(unit="Days", value=2)))
    assert group.version == 2
    assert group.definition.feature_definitions[-1].description == "model score"
    assert registry.schema("users").default_ttl_s == 2 * 86400
    assert group.times_of("score").creation_time > group.creation_time


def test_bad_metadata_is_refused_and_changes_nothing(local: Any) -> None:
    registry: Registry = local()
    before = registry.create(definition())
    with pytest.raises(NotFoundError, match="feature 'nope' is not in group 'users'; known: id"):
        registry.update("users", _meta(nope=FeatureMetadataUpdate(description="x")))
    with pytest.raises(InvalidRequestError, match="description has 256 characters; the limit"):
        registry.update("users", _meta(clicks=FeatureMetadataUpdate(description="d" * 256)))
    with pytest.raises(InvalidRequestError, match="parameter key 'a{b}' is not valid"):
        registry.update("users", _meta(clicks=FeatureMetadataUpdate(
            parameter_additions={"a{b}": "x"})))
    with pytest.raises(InvalidRequestError, match="parameter value '' is not valid"):
        registry.update("users", _meta(clicks=FeatureMetadataUpdate(
            parameter_additions={"a": ""})))
    with pytest.raises(InvalidRequestError, match="parameter a is both added and removed"):
        registry.update("users", _meta(clicks=FeatureMetadataUpdate(
            parameter_additions={"a": "1"}, parameter_removals=["a"])))
    with pytest.raises(InvalidRequestError, match="would have 26 parameters; the limit is 25"):
        registry.update("users", _meta(clicks=FeatureMetadataUpdate(
            parameter_additions={f"k{i}": "v" for i in range(26)})))
    with pytest.raises(InvalidRequestError, match="ttl_duration 400000 Days is out of range"):
        registry.update("users", FeatureGroupUpdate(
            ttl_duration=TtlDuration(unit="Days", value=400_000)))
    assert registry.describe("users") == before


#: A group as stored before feature metadata, feature times and compat_config existed.
_OLD_GROUP = {
    "definition": {
        "feature_group_name": "legacy",
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "id", "feature_type": "String", "collection_type": None,
             "collection_config": None},
            {"feature_name": "ts", "feature_type": "Fractional", "collection_type": None,
             "collection_config": None},
        ],
        "online_store_config": {"enable_online_store": True, "ttl_duration": None},
        "offline_store_config": {"enable_offline_store": True},
        "description": None,
        "tags": [],
        "aggregations": [],
        "aggregation_config": None,
    },
    "feature_group_id": 1,
    "version": 1,
    "creation_time": 5.0,
    "last_modified_time": 5.0,
}


def test_a_group_stored_without_metadata_opens_and_takes_metadata(local: Any) -> None:
    def prepare(rocks: RocksDB) -> None:
        rocks.registry[group_key("legacy")] = json.dumps(_OLD_GROUP).encode()
        rocks.registry[NEXT_ID] = (2).to_bytes(8, "big")

    registry: Registry = local(prepare)
    assert registry.quarantined() == {}
    old = registry.describe("legacy")
    assert old.definition.feature_definitions[1].parameters == {}
    assert old.times_of("ts").creation_time == 5.0
    new = registry.update("legacy", _meta(ts=FeatureMetadataUpdate(
        parameter_additions={"unit": "seconds"})))
    assert new.definition.feature_definitions[1].parameters == {"unit": "seconds"}
    assert new.times_of("ts").creation_time == 5.0
    assert registry.schema("legacy").group_id == 1


def test_kept_settings_are_merged_and_bounded(local: Any) -> None:
    registry: Registry = local()
    registry.create(definition(compat_config={"OnlineStoreConfig": {
        "SecurityConfig": {"KmsKeyId": "k"}}, "RoleArn": "r"}))
    group = registry.update("users", FeatureGroupUpdate(compat_config={
        "OnlineStoreConfig": {"StorageType": "Standard"}}))
    assert group.definition.compat_config == {"OnlineStoreConfig": {
        "SecurityConfig": {"KmsKeyId": "k"}, "StorageType": "Standard"}, "RoleArn": "r"}
    with pytest.raises(InvalidRequestError, match="compat_config is 16,512 bytes of JSON; the limit is 16,384"):
        registry.update("users", FeatureGroupUpdate(compat_config={"x": "y" * 16_400}))
    assert registry.describe("users") == group
