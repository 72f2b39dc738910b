"""`GrpcSink`: the sink of the standalone `tessera ingest`, writing through a Tessera server.

The only ingest module that imports the client SDK (`tessera.client`): the embedded consumer of
`tessera serve` never loads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.client import FeatureStoreClient
from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.core.schema import CompiledSchema
from tessera.ingest.sinks import SinkRecord, schema_from_description


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
