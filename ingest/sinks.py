"""Where validated batches go: the `Sink` interface and its remote implementations.

`GrpcSink` writes through a Tessera server's PutRecords (the standalone `tessera ingest`);
`NullSink` writes nowhere (the consumer's own ceiling, in the benchmark). The embedded sink,
writing straight into the server's store, is `tessera.server.ingest_sink.EmbeddedSink`.

A sink's `write` returns once the batch is durable. It raises InvalidRequestError when the store
refuses the batch's content (the consumer then re-validates against a fresh schema and
dead-letters what is refused) and any other TesseraError when the store cannot take it now (the
consumer then pauses, retries with backoff, and does not commit).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tessera.client import FeatureStoreClient
from tessera.core.errors import FeatureGroupNotFoundError, InvalidRequestError, TesseraError
from tessera.core.records import ValidatedRecord
from tessera.core.schema import CompiledSchema


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """One validated message on its way to the store."""

    validated: ValidatedRecord  # .payload: the Record's wire bytes in the schema's own form
    source: str  # "kafka:<topic>/<partition>/<offset>"


class SchemaChangedError(InvalidRequestError):
    """The batch was validated against a schema that is no longer the group's."""


class Sink(Protocol):
    """What the consumer writes through."""

    def schema(self, feature_group: str) -> CompiledSchema:
        """The group's current schema; FeatureGroupNotFoundError when it does not exist."""
        ...

    def write(
        self, schema: CompiledSchema, records: Sequence[SinkRecord], ttl_s: float | None
    ) -> None:
        """Make `records` (validated against `schema`) durable; see the module docstring."""
        ...

    def close(self) -> None: ...


def schema_from_description(description: dict[str, Any]) -> CompiledSchema:
    """The CompiledSchema of a group from its HTTP description (DescribeFeatureGroup JSON)."""
    return CompiledSchema.from_description(description)


class GrpcSink:
    """Writes through a Tessera server: schemas over HTTP, records with PutRecords over gRPC.

    Each batch is one PutRecords call, the records sent as the bytes validation produced (the
    server validates them again and makes them durable in one group commit); the client's own
    retries are off, the consumer retries with its backoff.
    """

    def __init__(self, grpc: str, http: str, timeout_s: float = 10.0) -> None:
        self._grpc, self._http, self._timeout_s = grpc, http, timeout_s
        self._client = self._connect()

    def _connect(self) -> FeatureStoreClient:
        return FeatureStoreClient(
            grpc=self._grpc, http=self._http, timeout_s=self._timeout_s, retries=0
        )

    def schema(self, feature_group: str) -> CompiledSchema:
        return schema_from_description(self._client.describe_feature_group(feature_group))

    def write(
        self, schema: CompiledSchema, records: Sequence[SinkRecord], ttl_s: float | None
    ) -> None:
        if not records:
            return
        try:
            self._client.put_records_encoded(
                schema.group_name,
                [r.validated.payload for r in records],
                ttl_s=ttl_s,
                sources=[r.source for r in records],
            )
        except InvalidRequestError:
            raise
        except TesseraError:
            # A new channel for the retry: a failed one waits out gRPC's reconnect backoff
            # (up to minutes), long after the server is back.
            self._client.close()
            self._client = self._connect()
            raise

    def close(self) -> None:
        self._client.close()


class NullSink:
    """Writes nowhere: measures the consumer without a store. Schemas come from `schemas`."""

    def __init__(self, schemas: dict[str, CompiledSchema], delay_s: float = 0.0) -> None:
        self._schemas = schemas
        self._delay_s = delay_s
        self.written = 0

    def schema(self, feature_group: str) -> CompiledSchema:
        try:
            return self._schemas[feature_group]
        except KeyError:
            raise FeatureGroupNotFoundError(feature_group) from None

    def write(
        self, schema: CompiledSchema, records: Sequence[SinkRecord], ttl_s: float | None
    ) -> None:
        if self._delay_s:
            time.sleep(self._delay_s)
        self.written += len(records)

    def close(self) -> None:
        pass
