"""The embedded ingest sink: `tessera serve` consuming Kafka itself, writing straight into its
registry's groups and its online store (any `OnlineStore`), as the PutRecords servicer does,
without gRPC.

The consumer validated every record against the schema it passes in (`validate_record`, the
servicer's own check); this sink turns them into store operations with the servicer's own
`put_op` (the online record and its history row, with the record's Kafka source) and waits until
the store has made them durable. Run it in a thread of its own (the wait blocks):
`tessera.ingest.run_consumers(config, EmbeddedSink(registry, store), stop)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.core.errors import TesseraError
from tessera.core.schema import CompiledSchema
from tessera.ingest.sinks import SchemaChangedError, SinkRecord
from tessera.server.registry import Registry
from tessera.server.store import OnlineStore, Op, now_us
from tessera.server.writes import count_writes, put_op


class EmbeddedSink:
    """Writes ingest batches into the server's own store (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        store: OnlineStore,
        timeout_s: float | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._timeout_s = timeout_s

    def schema(self, feature_group: str) -> CompiledSchema:
        return self._registry.schema(feature_group)

    def write(
        self, schema: CompiledSchema, records: Sequence[SinkRecord], ttl_s: float | None
    ) -> None:
        """Durable when this returns; FeatureGroupNotFoundError if the group is gone,
        SchemaChangedError if it changed since `schema` (the consumer validates again),
        StorageError if the store cannot write."""
        if not records:
            return
        current = self._registry.schema(schema.group_name)
        if current is not schema and current != schema:
            # Another version (features added), or the group was deleted and created again
            # under another id: the records' validation and group id are out of date.
            raise SchemaChangedError(
                f"feature group '{schema.group_name}' changed since the batch was validated"
            )
        # ttl_s was applied by validation (ValidatedRecord.expires_at_us), as in PutRecords.
        api_us = now_us()
        ops: list[Op] = [put_op(schema, r.validated, api_us, r.source) for r in records]
        results = self._store.submit(ops).result(self._timeout_s).results
        for result in results:
            if isinstance(result, TesseraError):
                raise result
        count_writes(schema, results)

    def close(self) -> None:
        """Nothing to release: the server owns the registry and the store."""
