"""`RemoteRegistry`: the `Registry` (server/registry.py) of a serving or consumer process in the
multi-process layout (server/writer_process.py owns the registry's writes).

Reads come from memory: the groups stored in the `registry` column family of this process's
RocksDB secondary (`SecondaryReader`), loaded and compiled by the code the writer's own
`FeatureGroupRegistry` loads them with (`RegistryView`). Every registry write bumps a version
key in the same WriteBatch; after each timer catch-up of the secondary (every ~10 ms) the view
compares it (one key read) and reloads only when it changed.

Mutations go over the writer socket (`WriterClient`). Before one returns, the secondary has
caught up to the mutation's seq and the view is reloaded: the HTTP call that created a group
can describe it, and the next PutRecord on this process finds it.

A lookup that misses (an unknown group, or for writes a feature the schema does not know:
`newer_schema`) is answered from a catch-up that started after the miss, and a reload if the
registry changed, before NOT_FOUND: a group whose creation was acknowledged through another
process is always found. Concurrent misses share one catch-up (`SecondaryReader.catch_up`), so a
flood of requests for unknown groups costs one catch-up at a time (a catch-up with nothing new
costs ~0.06 ms of CPU), never one per request in parallel.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from tessera.core.errors import (
    FeatureGroupNotFoundError,
    StorageError,
    TesseraError,
)
from tessera.core.schema import (
    CompiledSchema,
    FeatureGroup,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
)
from tessera.server.registry import VERSION, RegistryView
from tessera.server.secondary import SecondaryReader
from tessera.server.writer_client import WriterClient

log = logging.getLogger(__name__)

T = TypeVar("T")

class RemoteRegistry:
    """A `Registry` over a secondary and the writer process (see the module docstring)."""

    def __init__(self, reader: SecondaryReader, writer: WriterClient,
                 timeout_s: float = 60.0) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s
        self._reload_lock = threading.Lock()
        self._miss_lock = threading.Lock()
        #: Marks of this process (`quarantine`), kept across reloads.
        self._marks: dict[str, str] = {}
        #: The writer's quarantined groups, fetched once per registry version.
        self._writer_marks: tuple[int, dict[str, str]] | None = None
        self._view = RegistryView.load(reader.registry)
        self.reloads = 0  # tests, metrics
        self.forced_refreshes = 0
        reader.add_listener(self._reload_if_changed)

    # --- freshness -----------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The registry version the view reflects."""
        return self._view.version

    def _reload_if_changed(self) -> bool:
        """Reload the view when the secondary holds another registry version."""
        with self._reload_lock:
            try:
                raw = self._reader.registry.get(VERSION)
            except Exception as exc:
                raise StorageError(f"the registry cannot be read: {exc}") from exc
            version = int.from_bytes(raw, "big") if raw else 0
            if version == self._view.version:
                return False
            view = RegistryView.load(self._reader.registry)
            for name, reason in self._marks.items():
                view.quarantine(name, reason)
            self._view = view  # one reference swap: readers see the old view or the new one
            self.reloads += 1
            return True

    def refresh(self) -> bool:
        """Catch up now and reload if the registry changed (True: it had)."""
        self._reader.catch_up()
        return self._reload_if_changed()

    def _refresh_on_miss(self) -> bool:
        """`refresh` from a catch-up started after the miss, shared with concurrent misses
        (the module docstring): True if it reloaded the view."""
        with self._miss_lock:
            self.forced_refreshes += 1
        return self.refresh()

    def _sync(self, seq: int) -> None:
        """Make the view reflect the writer's state at `seq` (after a mutation)."""
        if not self._reader.wait_visible(seq, self._timeout_s):
            raise StorageError(
                f"the registry changed (commit {seq}) but this process's secondary did not "
                f"catch up within {self._timeout_s}s; retry the read")
        self._reload_if_changed()

    def _wait(self, fut: Future[T]) -> T:
        try:
            return fut.result(self._timeout_s)
        except TimeoutError as exc:
            raise StorageError(
                f"the writer process did not answer within {self._timeout_s}s; the change may "
                "or may not have been made") from exc

    # --- reads ---------------------------------------------------------------------------------

    def _found(self, get: Callable[[RegistryView], T]) -> T:
        """`get(view)`; on FeatureGroupNotFoundError, again after a forced refresh if
        the view changed meanwhile (by the refresh, or by the timer)."""
        view = self._view
        try:
            return get(view)
        except FeatureGroupNotFoundError:
            self._refresh_on_miss()
            if self._view is view:
                raise
        return get(self._view)

    def _some(self, get: Callable[[RegistryView], T | None]) -> T | None:
        """`get(view)`; when None, again after a forced refresh if the view changed."""
        view = self._view
        found = get(view)
        if found is None:
            self._refresh_on_miss()
            if self._view is not view:
                found = get(self._view)
        return found

    def schema(self, name: str) -> CompiledSchema:
        return self._found(lambda view: view.schema(name))

    def find_schema(self, name: str) -> CompiledSchema | None:
        """No refresh: a view as it is (e.g. for a check that must not cost a catch-up)."""
        return self._view.find_schema(name)

    def newer_schema(self, schema: CompiledSchema) -> CompiledSchema | None:
        return self._some(lambda view: view.newer_schema(schema))

    def describe(self, name: str) -> FeatureGroup:
        return self._found(lambda view: view.describe(name))

    def by_id(self, group_id: int) -> tuple[FeatureGroup, bool] | None:
        return self._some(lambda view: view.by_id(group_id))

    def quarantined(self) -> dict[str, str]:
        """This view's quarantined groups, the writer's (fetched once per registry version;
        the last known when the writer is unreachable) and this process's marks."""
        view = self._view
        known = self._writer_marks
        if known is None or known[0] != view.version:
            try:
                marks = self._wait(self._writer.quarantined_groups())
                known = (view.version, marks)
                self._writer_marks = known
            except TesseraError as exc:
                log.warning("the writer's quarantined groups are unknown: %s", exc)
        mine = view.quarantined()
        theirs = {n: r for n, r in (known[1] if known else {}).items()
                  if n in mine or _listed(view, n)}  # not a group deleted since
        return {**theirs, **mine}

    def quarantine(self, name: str, reason: str) -> None:
        self._marks.setdefault(name, reason)
        self._view.quarantine(name, reason)

    # --- mutations (in the writer process) -----------------------------------------------------

    def create(self, definition: FeatureGroupDefinition) -> FeatureGroup:
        group, seq = self._mutate(self._writer.create_feature_group(definition))
        self._sync(seq)
        return group

    def update(self, name: str, update: FeatureGroupUpdate) -> FeatureGroup:
        group, seq = self._mutate(self._writer.update_feature_group(name, update))
        self._sync(seq)
        return group

    def delete(self, name: str) -> None:
        seq = self._mutate(self._writer.delete_feature_group(name))
        self._marks.pop(name, None)
        self._sync(seq)

    def _mutate(self, fut: Future[T]) -> T:
        """The writer's answer to a mutation. A refused one may have been written and undone
        in the writer (a failed offline publication): a timer catch-up between the two writes
        left the view showing the change, so catch up now, past the undo, before raising."""
        try:
            return self._wait(fut)
        except TesseraError:
            with contextlib.suppress(TesseraError):  # the refusal is the error to report
                self.refresh()
            raise

    # `list` last: below it, `list` in annotations would name the method
    def list(self, name_contains: str | None = None) -> builtins.list[FeatureGroup]:
        return self._view.list(name_contains)


def _listed(view: RegistryView, name: str) -> bool:
    try:
        view.describe(name)
    except FeatureGroupNotFoundError:
        return False
    return True

