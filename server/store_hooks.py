"""What keeps the stores in step with the registry, in whichever process owns the RocksDB
primary (the single-process server, server/app.py; the writer process,
server/writer_process.py): the registry's hooks, and the publication of every group's offline
folder at start-up."""

from __future__ import annotations

import logging

from tessera.core.schema import FeatureGroup, show_name
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.outbox import OutboxFlusher
from tessera.server.registry import FeatureGroupRegistry

log = logging.getLogger(__name__)


class StoreHooks:
    """The `RegistryHooks` of the process owning the primary."""

    def __init__(
        self, store: RocksDBOnlineStore, offline: ParquetOfflineWriter, flusher: OutboxFlusher
    ) -> None:
        self._store, self._offline, self._flusher = store, offline, flusher

    def group_changed(self, group: FeatureGroup) -> None:
        self._offline.publish_group(group)

    def group_deleted(self, group: FeatureGroup) -> None:
        # Every write queued before the delete commits first; then its history is flushed and
        # set aside, so a new group of the same name starts with an empty history.
        self._store.drop_group(group.feature_group_id).result()
        self._flusher.flush_all()
        self._offline.retire_group(group)


def publish_groups(registry: FeatureGroupRegistry, offline: ParquetOfflineWriter) -> None:
    """Publish every group's offline folder; a group whose folder fails is quarantined (one
    group must not keep the others, or the server, down). Logs every quarantined group."""
    for group in registry.list():
        try:
            offline.publish_group(group)
        except Exception as exc:
            registry.quarantine(group.name, f"its offline folder cannot be published: {exc}")
    for name, reason in registry.quarantined().items():
        log.warning("feature group %s is quarantined: %s; it keeps serving; delete it, or stop "
                    "the server and run `tessera groups rename` (README, Limits)",
                    show_name(name), reason)
