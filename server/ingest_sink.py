"""The embedded ingest sink: `tessera serve` consuming Kafka itself, writing straight into its
registry's groups and its online store (any `OnlineStore`), as the PutRecords servicer does,
without gRPC.

The consumer validated every record against the schema it passes in (the servicer's own checks)
and hands them in columns (`RecordColumns`, ingest/columns.py): this sink makes the batch ONE
`PutBatch` (keys, payloads and history rows with each record's Kafka source written by
`batch_kernels.encode_puts`, the compiled pass of the bulk PutRecords path; a group's
aggregation inputs by `put_batch.batch_aggregates`, as PutRecords does) and waits until the
store has made it durable: one operation per batch, whichever store (a `ProcessOnlineStore`
sends it to the writer process as one WireBatch). Records given one by one (the consumer's
re-validation after a refusal), or whose aggregation inputs the compiled scan cannot read, take
the servicer's per-record `put_op`. Run it in a thread of its own (the wait blocks):
`tessera.ingest.run_consumers(config, EmbeddedSink(registry, store), stop)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tessera.core.errors import TesseraError
from tessera.core.schema import CompiledSchema
from tessera.ingest.columns import RecordColumns
from tessera.ingest.sinks import SchemaChangedError, SinkRecord
from tessera.server import batch_kernels as bk
from tessera.server.put_batch import assemble
from tessera.server.registry import Registry
from tessera.server.store import OnlineStore, Op, PutBatch, now_us
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
        """The group's current schema. Asked rarely (the consumer's periodic refresh, a batch
        with schema errors): a registry over a secondary catches up first (`newer_schema`), so
        a feature just added is known at once, whatever the secondary's timer."""
        schema = self._registry.schema(feature_group)
        return self._registry.newer_schema(schema) or schema

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
        batch = put_batch(schema, records, api_us) if isinstance(records, RecordColumns) else None
        ops: list[Op] = [batch] if batch is not None else [
            put_op(schema, r.validated, api_us, r.source) for r in records]
        results = self._store.submit(ops).result(self._timeout_s).results
        for result in results:
            if isinstance(result, TesseraError):
                raise result
        count_writes(schema, results)

    def close(self) -> None:
        """Nothing to release: the server owns the registry and the store."""


def put_batch(schema: CompiledSchema, records: RecordColumns, api_invocation_time_us: int
              ) -> PutBatch | None:
    """The records as one PutBatch of `schema`'s group: what `put_op` makes of each, in
    columns (keys, payloads as validated, history rows with each record's source, the inputs
    of the group's aggregations); None when the compiled scan cannot read an aggregation input
    (the records then go one by one)."""
    buf = np.frombuffer(records.buf, np.uint8)
    expires = records.expires_at_us
    event_time_us = _readonly(records.event_time_us)
    keys, key_off, payloads, pay_off, rows, row_off = bk.encode_puts(
        buf, _readonly(records.payload_starts), _readonly(records.payload_ends),
        _readonly(records.id_starts), _readonly(records.id_ends - records.id_starts), False,
        schema.group_id, event_time_us, _NONE if expires is None else _readonly(expires),
        expires is not None, api_invocation_time_us, _readonly(records.source_starts),
        _readonly(records.source_ends), schema.offline,
    )
    return assemble(schema, keys, key_off, payloads, pay_off, event_time_us,
                    None if expires is None else _readonly(expires), rows, row_off)


def _readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only int64 view of `arr` (the kernels' one signature; `arr` stays writable)."""
    view = np.ascontiguousarray(arr, np.int64).view()
    view.setflags(write=False)
    return view


_NONE = _readonly(np.zeros(0, np.int64))
