"""The registry of feature groups: durable in RocksDB, served from memory.

Each group gets a numeric id that is never reused, so records of a deleted group can never show
through a new group of the same name, and a group's records are one key range. A deleted group's
definition is kept as retired, so history rows still in the outbox can be written out.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Protocol

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
_RETIRED_PREFIX = b"retired/"
_NEXT_ID = b"meta/next_group_id"
_ID = struct.Struct(">Q")


class RegistryHooks(Protocol):
    """What happens elsewhere when the registry changes (the offline store's folders, the
    online store's records)."""

    def group_changed(self, group: FeatureGroup) -> None: ...
    def group_deleted(self, group: FeatureGroup) -> None: ...


def _scan(cf: rocksdict.Rdict, prefix: bytes) -> Iterator[FeatureGroup]:
    for key, raw in cf.items(from_key=prefix):
        if not isinstance(key, bytes) or not key.startswith(prefix):
            return
        yield FeatureGroup.model_validate_json(raw)


class FeatureGroupRegistry:
    """Create, describe, list, evolve and delete feature groups."""

    def __init__(self, rocks: RocksDB, hooks: RegistryHooks | None = None) -> None:
        self._rocks = rocks  # DB objects looked up per use: the online store may reopen them
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._lock = threading.Lock()  # serializes mutations; reads use the dicts as they are
        self.hooks = hooks
        self._groups: dict[str, FeatureGroup] = {}
        self._schemas: dict[str, CompiledSchema] = {}
        self._retired: dict[int, FeatureGroup] = {g.feature_group_id: g
                                                 for g in _scan(self._cf, _RETIRED_PREFIX)}
        self._by_id: dict[int, FeatureGroup] = {}
        for group in _scan(self._cf, _GROUP_PREFIX):
            self._install(group)

    @property
    def _db(self) -> rocksdict.Rdict:
        return self._rocks.db

    @property
    def _cf(self) -> rocksdict.Rdict:
        return self._rocks.registry

    @property
    def _handle(self) -> rocksdict.ColumnFamily:
        return self._rocks.handle("registry")

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

    def by_id(self, group_id: int) -> tuple[FeatureGroup, bool] | None:
        """A live or retired group by id, and whether it is retired."""
        live = self._by_id.get(group_id)
        if live is not None:
            return live, False
        retired = self._retired.get(group_id)
        return (retired, True) if retired is not None else None

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
        if self.hooks is not None:
            self.hooks.group_changed(group)
        return group

    def update(self, name: str, update: FeatureGroupUpdate) -> FeatureGroup:
        with self._lock:
            group = self.describe(name)
            d = group.definition
            taken = {a.name for a in d.aggregations}
            for f in update.feature_additions:
                if f.feature_name in taken:
                    raise ConflictError(
                        f"feature '{f.feature_name}' would have the name of an aggregation "
                        "feature of the group; choose another name"
                    )
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
        if self.hooks is not None:
            self.hooks.group_changed(new)
        return new

    def delete(self, name: str) -> None:
        with self._lock:
            group = self.describe(name)
            gid = group.feature_group_id
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.delete(_GROUP_PREFIX + name.encode(), self._handle)
            wb.put(_RETIRED_PREFIX + _ID.pack(gid), group.model_dump_json().encode(), self._handle)
            self._db.write(wb, self._sync)
            self._retired[gid] = group
            del self._schemas[name]
            del self._groups[name]
            del self._by_id[gid]
        if self.hooks is not None:
            self.hooks.group_deleted(group)

    def _install(self, group: FeatureGroup) -> None:
        self._schemas[group.name] = CompiledSchema.of(group)
        self._groups[group.name] = group
        self._by_id[group.feature_group_id] = group


