"""The registry of feature groups: durable in RocksDB, served from memory.

Each group gets a numeric id that is never reused, so records of a deleted group can never show
through a new group of the same name, and a group's records are one key range. A deleted group's
definition is kept as retired, so history rows still in the outbox can be written out.

Creating or updating a group is all-or-nothing: the definition is checked and compiled before
anything is written, and when a step after the RocksDB write fails (the hooks: the offline
store's folder) the write is undone before the error leaves. RocksDB's exceptions become
`StorageError` in one place (`_storage`).

A group stored under an older, looser rule (a name with a trailing newline or past 64
characters, features differing only in case, an unbounded TTL) still loads: it keeps serving
its records, is reported by `quarantined()` with the reason, and can be deleted (or renamed
offline with `tessera groups rename`).

Users depend on the `Registry` Protocol: `FeatureGroupRegistry` (the process owning the RocksDB
primary: the single-process server, the writer process) and `RemoteRegistry`
(server/registry_client.py: serving and consumer processes, reading a secondary, mutating
through the writer process). Both read the stored groups with the same code (`RegistryView`).
Every registry write also bumps `VERSION` in the same WriteBatch, so a reader of a secondary
notices a change with one key read after a catch-up.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import rocksdict
from pydantic import ValidationError

from tessera.core.errors import (
    ConflictError,
    FeatureGroupNotFoundError,
    PreconditionFailedError,
    StorageError,
    TesseraError,
)
from tessera.core.schema import (
    CASE_RULE,
    CompiledSchema,
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
    FeatureTimes,
    check_feature_definitions,
    fold_name,
    show_name,
)
from tessera.server.rocksdb import RocksDB

log = logging.getLogger(__name__)

GROUP_PREFIX = b"group/"
RETIRED_PREFIX = b"retired/"
NEXT_ID = b"meta/next_group_id"
#: Bumped in the WriteBatch of every registry write: readers of a secondary compare it.
VERSION = b"meta/version"
_ID = struct.Struct(">Q")


class Registry(Protocol):
    """The feature groups as their users see them (servicer, reads, HTTP app, ingest sink).

    Reads are served from memory. Mutations are all-or-nothing and, once they return, visible
    to reads of the same object. Names are compared exactly; two names differing only in case
    cannot both exist (ConflictError)."""

    def schema(self, name: str) -> CompiledSchema:
        """The compiled schema; FeatureGroupNotFoundError, or PreconditionFailedError for a
        quarantined group whose definition does not compile."""

    def find_schema(self, name: str) -> CompiledSchema | None:
        """The compiled schema, or None (no error, no reload)."""

    def newer_schema(self, schema: CompiledSchema) -> CompiledSchema | None:
        """A newer schema of `schema`'s group than `schema` (features added since, or the group
        deleted and created again), or None: asked when a write names a feature `schema` does
        not know, before refusing it (a process reading a secondary may be behind)."""

    def describe(self, name: str) -> FeatureGroup:
        """The group; FeatureGroupNotFoundError."""

    def by_id(self, group_id: int) -> tuple[FeatureGroup, bool] | None:
        """A live or retired group by id, and whether it is retired."""

    def list(self, name_contains: str | None = None) -> builtins.list[FeatureGroup]:
        """The live groups by name; optionally those whose name contains a string."""

    def quarantined(self) -> dict[str, str]:
        """Groups breaking today's rules, by name, with the reason."""

    def quarantine(self, name: str, reason: str) -> None:
        """Flag a group found broken outside the registry (its offline folder, its view)."""

    def create(self, definition: FeatureGroupDefinition) -> FeatureGroup:
        """ConflictError (exists, in any case), InvalidRequestError, StorageError."""

    def update(self, name: str, update: FeatureGroupUpdate) -> FeatureGroup:
        """Add features, change the description, the default TTL or features' metadata: a new
        version when features are added. NotFoundError for metadata of an unknown feature."""

    def delete(self, name: str) -> None:
        """Delete the group (also a quarantined one) with its records; retire its history."""


class RegistryHooks(Protocol):
    """What happens elsewhere when the registry changes (the offline store's folders, the
    online store's records). `group_changed` runs before a create or update takes effect: if it
    raises, the change is undone."""

    def group_changed(self, group: FeatureGroup) -> None: ...
    def group_deleted(self, group: FeatureGroup) -> None: ...


def group_key(name: str) -> bytes:
    """The registry key of a live group (`surrogatepass`: a key written under an older rule
    reads back whatever it holds)."""
    return GROUP_PREFIX + name.encode("utf-8", "surrogatepass")


@contextlib.contextmanager
def _storage(what: str) -> Iterator[None]:
    """The one place RocksDB's exceptions (IO errors, a full disk, a closed DB) become
    StorageError (UNAVAILABLE / HTTP 503)."""
    try:
        yield
    except TesseraError:
        raise
    except Exception as exc:
        raise StorageError(f"the feature group registry cannot {what}: {exc}") from exc


def _scan(cf: rocksdict.Rdict, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    for key, raw in cf.items(from_key=prefix):
        if not isinstance(key, bytes) or not key.startswith(prefix):
            return
        yield key, raw


class RegistryView:
    """The stored groups, compiled: the read side both registries share (`load` reads the
    registry column family of a primary or of a secondary)."""

    def __init__(self) -> None:
        self.version = 0
        self._groups: dict[str, FeatureGroup] = {}
        self._schemas: dict[str, CompiledSchema] = {}
        self._by_id: dict[int, FeatureGroup] = {}
        self._quarantined: dict[str, str] = {}
        self._unreadable: dict[str, bytes] = {}  # name -> key of an entry that does not parse
        self._retired: dict[int, FeatureGroup] = {}

    @classmethod
    def load(cls, cf: rocksdict.Rdict) -> RegistryView:
        view = cls()
        view._read(cf)
        return view

    def _read(self, cf: rocksdict.Rdict) -> None:
        """Read every entry. The version first: read before the groups, a version older than
        them only causes one more reload."""
        with _storage("read the registry"):
            raw_version = cf.get(VERSION)
            self.version = _ID.unpack(raw_version)[0] if raw_version else 0
            for _, raw in _scan(cf, RETIRED_PREFIX):
                retired = FeatureGroup.model_validate_json(raw)
                self._retired[retired.feature_group_id] = retired
            loaded: builtins.list[FeatureGroup] = []
            for key, raw in _scan(cf, GROUP_PREFIX):
                try:
                    loaded.append(FeatureGroup.model_validate_json(raw))
                except ValidationError as exc:
                    name = key[len(GROUP_PREFIX):].decode("utf-8", "surrogateescape")
                    self._unreadable[name] = key
                    self._quarantined[name] = f"its stored definition does not parse: {exc}"
        for group in sorted(loaded, key=lambda g: g.feature_group_id):  # oldest first
            self._load(group)

    def _load(self, group: FeatureGroup) -> None:
        """Install a stored group; quarantine it if today's rule refuses it."""
        reason = None
        try:
            group.definition.check()
        except TesseraError as exc:
            reason = exc.message
        older = self._same_name_in_any_case(group.name)
        if reason is None and older is not None:
            reason = (
                f"its name differs only in case from the older group {show_name(older)}; "
                f"{CASE_RULE}"
            )
        schema = None
        try:
            schema = CompiledSchema.of(group)
        except (TesseraError, ValueError, KeyError) as exc:
            reason = reason or f"its definition does not compile: {exc}"
        self._install(group, schema)
        if reason is not None:
            self._quarantined[group.name] = reason

    # --- reads (the request path) --------------------------------------------------------------

    def schema(self, name: str) -> CompiledSchema:
        """The compiled schema of a group; raises FeatureGroupNotFoundError (or
        PreconditionFailedError for a quarantined group whose definition does not compile)."""
        try:
            return self._schemas[name]
        except KeyError:
            if name in self._groups:
                raise PreconditionFailedError(
                    f"feature group {show_name(name)} is quarantined: "
                    f"{self._quarantined.get(name, 'its definition does not compile')}"
                ) from None
            raise FeatureGroupNotFoundError(name) from None

    def find_schema(self, name: str) -> CompiledSchema | None:
        return self._schemas.get(name)

    def newer_schema(self, schema: CompiledSchema) -> CompiledSchema | None:
        current = self._schemas.get(schema.group_name)
        return None if current is None or current is schema or current == schema else current

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

    def quarantined(self) -> dict[str, str]:
        """Groups that break today's rules, by name, with the reason. They keep serving their
        records; deleting them (or `tessera groups rename` on a stopped server) fixes it."""
        return dict(self._quarantined)

    def quarantine(self, name: str, reason: str) -> None:
        """Flag a group found broken outside the registry (its offline folder, its view)."""
        if name in self._groups and name not in self._quarantined:
            self._quarantined[name] = reason

    def _same_name_in_any_case(self, name: str) -> str | None:
        key = fold_name(name)
        return next((n for n in self._groups if n != name and fold_name(n) == key), None)

    def _install(self, group: FeatureGroup, schema: CompiledSchema | None) -> None:
        if schema is not None:
            self._schemas[group.name] = schema
        self._groups[group.name] = group
        self._by_id[group.feature_group_id] = group


class FeatureGroupRegistry(RegistryView):
    """Create, describe, list, evolve and delete feature groups: the registry of the process
    owning the RocksDB primary."""

    def __init__(self, rocks: RocksDB, hooks: RegistryHooks | None = None) -> None:
        super().__init__()
        self._rocks = rocks  # DB objects looked up per use: the online store may reopen them
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._lock = threading.Lock()  # serializes mutations; reads use the dicts as they are
        self.hooks = hooks
        self._read(self._cf)

    @property
    def _db(self) -> rocksdict.Rdict:
        return self._rocks.db

    @property
    def _cf(self) -> rocksdict.Rdict:
        return self._rocks.registry

    @property
    def _handle(self) -> rocksdict.ColumnFamily:
        return self._rocks.handle("registry")

    # --- mutations -----------------------------------------------------------------------------

    def create(self, definition: FeatureGroupDefinition) -> FeatureGroup:
        definition.check()
        name = definition.feature_group_name
        with self._lock:
            if name in self._groups or name in self._unreadable:
                raise ConflictError(f"feature group '{name}' already exists")
            other = self._same_name_in_any_case(name)
            if other is not None:
                raise ConflictError(
                    f"feature group '{name}' differs from the existing group {show_name(other)} "
                    f"only in case; {CASE_RULE}"
                )
            with _storage("read the next group id"):
                raw_id = self._cf.get(NEXT_ID)
            group_id = _ID.unpack(raw_id)[0] if raw_id else 1
            now = time.time()
            times = FeatureTimes(creation_time=now, last_modified_time=now)
            group = FeatureGroup(
                definition=definition,
                feature_group_id=group_id,
                creation_time=now,
                last_modified_time=now,
                feature_times={fd.feature_name: times for fd in definition.feature_definitions},
            )
            schema = CompiledSchema.of(group)
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.put(NEXT_ID, _ID.pack(group_id + 1), self._handle)
            wb.put(group_key(name), group.model_dump_json().encode(), self._handle)
            self._write(wb, f"create feature group '{name}'")
            undo = rocksdict.WriteBatch(raw_mode=True)
            undo.delete(group_key(name), self._handle)
            if raw_id is None:
                undo.delete(NEXT_ID, self._handle)
            else:
                undo.put(NEXT_ID, raw_id, self._handle)
            self._publish_or_undo(group, undo)
            self._install(group, schema)
        return group

    def update(self, name: str, update: FeatureGroupUpdate) -> FeatureGroup:
        with self._lock:
            group = self.describe(name)
            d = group.definition
            check_feature_definitions(
                update.feature_additions,
                existing=[f.feature_name for f in d.feature_definitions],
                aggregations=[a.name for a in d.aggregations],
            )
            new_def = update.apply(d, name)
            new_def = FeatureGroupDefinition.model_validate(new_def.model_dump())
            new_def.check()
            now = time.time()
            times = dict(group.feature_times)
            for fd in update.feature_additions:
                times[fd.feature_name] = FeatureTimes(creation_time=now, last_modified_time=now)
            for feature in update.feature_metadata:
                created = times.get(feature, group.times_of(feature)).creation_time
                times[feature] = FeatureTimes(creation_time=created, last_modified_time=now)
            new = group.model_copy(
                update={
                    "definition": new_def,
                    "version": group.version + (1 if update.feature_additions else 0),
                    "last_modified_time": now,
                    "feature_times": times,
                }
            )
            schema = CompiledSchema.of(new)
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.put(group_key(name), new.model_dump_json().encode(), self._handle)
            self._write(wb, f"update feature group '{name}'")
            undo = rocksdict.WriteBatch(raw_mode=True)
            undo.put(group_key(name), group.model_dump_json().encode(), self._handle)
            self._publish_or_undo(new, undo)
            self._install(new, schema)
        return new

    def delete(self, name: str) -> None:
        """Delete a group (also a quarantined one, whatever its name)."""
        with self._lock:
            if name in self._unreadable:  # nothing to retire: no definition, no id
                wb = rocksdict.WriteBatch(raw_mode=True)
                wb.delete(self._unreadable[name], self._handle)
                self._write(wb, f"delete feature group {show_name(name)}")
                del self._unreadable[name]
                self._quarantined.pop(name, None)
                return
            group = self.describe(name)
            gid = group.feature_group_id
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.delete(group_key(name), self._handle)
            wb.put(RETIRED_PREFIX + _ID.pack(gid), group.model_dump_json().encode(), self._handle)
            self._write(wb, f"delete feature group {show_name(name)}")
            self._retired[gid] = group
            self._schemas.pop(name, None)
            del self._groups[name]
            del self._by_id[gid]
            self._quarantined.pop(name, None)
        if self.hooks is not None:
            self.hooks.group_deleted(group)

    def rename(
        self,
        name: str,
        new_name: str,
        move: Callable[[FeatureGroup, FeatureGroup], None] | None = None,
    ) -> FeatureGroup:
        """Give a group a new name, keeping its id, records and history: the fix for a group
        whose name breaks the rule. `move(old, new)` moves its offline folder; if it fails, the
        registry write is undone. The new definition must pass today's checks. Run it on a
        stopped server (`tessera groups rename`): a running one keeps the old name in memory."""
        with self._lock:
            group = self.describe(name)
            if new_name in self._groups:
                raise ConflictError(f"feature group '{new_name}' already exists")
            other = next((n for n in self._groups
                          if n != name and fold_name(n) == fold_name(new_name)), None)
            if other is not None:
                raise ConflictError(
                    f"feature group '{new_name}' differs from the existing group "
                    f"{show_name(other)} only in case; {CASE_RULE}"
                )
            definition = group.definition.model_copy(update={"feature_group_name": new_name})
            definition.check()
            new = group.model_copy(
                update={"definition": definition, "last_modified_time": time.time()}
            )
            schema = CompiledSchema.of(new)
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.delete(group_key(name), self._handle)
            wb.put(group_key(new_name), new.model_dump_json().encode(), self._handle)
            self._write(wb, f"rename feature group {show_name(name)}")
            if move is not None:
                try:
                    move(group, new)
                except BaseException:
                    undo = rocksdict.WriteBatch(raw_mode=True)
                    undo.delete(group_key(new_name), self._handle)
                    undo.put(group_key(name), group.model_dump_json().encode(), self._handle)
                    self._write(undo, f"undo the rename of feature group {show_name(name)}")
                    raise
            self._schemas.pop(name, None)
            del self._groups[name]
            self._quarantined.pop(name, None)
            self._install(new, schema)
        return new

    # --- internals -----------------------------------------------------------------------------

    def _write(self, wb: rocksdict.WriteBatch, what: str) -> None:
        """Write `wb` (synced) with the registry's version bumped (lock held)."""
        version = self.version + 1
        wb.put(VERSION, _ID.pack(version), self._handle)
        with _storage(what):
            self._db.write(wb, self._sync)
        self.version = version

    def _publish_or_undo(self, group: FeatureGroup, undo: rocksdict.WriteBatch) -> None:
        """Run the hooks of a written create / update; if one fails, write `undo` (the state
        before) and re-raise. If even the undo fails, the group is installed quarantined, so
        what RocksDB holds is visible and deletable."""
        if self.hooks is None:
            return
        try:
            self.hooks.group_changed(group)
        except BaseException as exc:
            try:
                self._write(undo, f"undo the change of feature group {show_name(group.name)}")
            except StorageError:
                log.exception("feature group %s: undoing a failed change failed",
                              show_name(group.name))
                if group.name not in self._groups:
                    self._load(group)
                    self._quarantined[group.name] = (
                        f"creating it failed half-way ({exc}) and could not be undone; "
                        "delete it"
                    )
            raise
