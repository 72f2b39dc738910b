"""Where validated batches go: the `Sink` interface, `SinkRecord`, and `NullSink`.

Implementations: `tessera.ingest.grpc_sink.GrpcSink` writes through a Tessera server's PutRecords
(the standalone `tessera ingest`; the one ingest module that imports the client SDK);
`NullSink` writes nowhere (the consumer's own ceiling, in the benchmark); the embedded sink,
writing straight into the server's store, is `tessera.server.ingest_sink.EmbeddedSink`. This
module imports neither the client nor the server, so both can depend on it.

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

from tessera.core.errors import FeatureGroupNotFoundError, InvalidRequestError
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
