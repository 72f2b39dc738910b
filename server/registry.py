"""The registry of feature groups: durable in RocksDB, served from memory.

Each group gets a numeric id that is never reused, so records of a deleted group can never show
through a new group of the same name, and a group's records are one key range.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import rocksdict

from tessera.core.errors import ConflictError, FeatureGroupNotFoundError
from tessera.core.schema import (
    CompiledSchema,
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
    check_feature_definitions,
)
from tessera.server.rocksdb import RocksDB

_GROUP_PREFIX = b"group/"
_NEXT_ID = b"meta/next_group_id"
_ID = struct.Struct(">Q")


class FeatureGroupRegistry:
    """Create, describe, list, evolve and delete feature groups."""

    def __init__(self, rocks: RocksDB, on_delete: Callable[[int], None]) -> None:
        self._db = rocks.db
        self._cf = rocks.registry
        self._handle = rocks.handle("registry")
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._lock = threading.Lock()  # serializes mutations; reads use the dicts as they are
        self._on_delete = on_delete
        self._groups: dict[str, FeatureGroup] = {}
        self._schemas: dict[str, CompiledSchema] = {}
        for key, raw in self._cf.items(from_key=_GROUP_PREFIX):
            if not isinstance(key, bytes) or not key.startswith(_GROUP_PREFIX):
                break
            self._install(FeatureGroup.model_validate_json(raw))

    # --- reads (the request path) --------------------------------------------------------------

    def schema(self, name: str) -> CompiledSchema:
        """The compiled schema of a group; raises FeatureGroupNotFoundError."""
        try:
            return self._schemas[name]
        except KeyError:
            raise FeatureGroupNotFoundError(name) from None

    def find_schema(self, name: str) -> CompiledSchema | None:
        return self._schemas.get(name)

    def describe(self, name: str) -> FeatureGroup:
        try:
            return self._groups[name]
        except KeyError:
            raise FeatureGroupNotFoundError(name) from None

    def list(self, name_contains: str | None = None) -> list[FeatureGroup]:
        groups = sorted(self._groups.values(), key=lambda g: g.name)
        if name_contains:
            groups = [g for g in groups if name_contains in g.name]
        return groups

    # --- mutations -----------------------------------------------------------------------------

    def create(self, definition: FeatureGroupDefinition) -> FeatureGroup:
        definition.check()
        with self._lock:
            name = definition.feature_group_name
            if name in self._groups:
                raise ConflictError(f"feature group '{name}' already exists")
            raw_id = self._cf.get(_NEXT_ID)
            group_id = _ID.unpack(raw_id)[0] if raw_id else 1
            now = time.time()
            group = FeatureGroup(
                definition=definition,
                feature_group_id=group_id,
                creation_time=now,
                last_modified_time=now,
            )
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.put(_NEXT_ID, _ID.pack(group_id + 1), self._handle)
            wb.put(_GROUP_PREFIX + name.encode(), group.model_dump_json().encode(), self._handle)
            self._db.write(wb, self._sync)
            self._install(group)
            return group

    def update(self, name: str, update: FeatureGroupUpdate) -> FeatureGroup:
        with self._lock:
            group = self.describe(name)
            d = group.definition
            check_feature_definitions(
                update.feature_additions, existing=[f.feature_name for f in d.feature_definitions]
            )
            new_def = d.model_copy(
                update={
                    "feature_definitions": [*d.feature_definitions, *update.feature_additions],
                    "description": (
                        update.description if update.description is not None else d.description
                    ),
                }
            )
            new_def = FeatureGroupDefinition.model_validate(new_def.model_dump())
            new_def.check()
            new = group.model_copy(
                update={
                    "definition": new_def,
                    "version": group.version + (1 if update.feature_additions else 0),
                    "last_modified_time": time.time(),
                }
            )
            self._cf.put(_GROUP_PREFIX + name.encode(), new.model_dump_json().encode(), self._sync)
            self._install(new)
            return new

    def delete(self, name: str) -> None:
        with self._lock:
            group = self.describe(name)
            self._cf.delete(_GROUP_PREFIX + name.encode(), self._sync)
            del self._schemas[name]
            del self._groups[name]
        self._on_delete(group.feature_group_id)

    def _install(self, group: FeatureGroup) -> None:
        self._schemas[group.name] = CompiledSchema.of(group)
        self._groups[group.name] = group


