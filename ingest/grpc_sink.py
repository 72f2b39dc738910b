"""`GrpcSink`: the sink of the standalone `tessera ingest`, writing through a Tessera server.

The only ingest module that imports the client SDK (`tessera.client`): the embedded consumer of
`tessera serve` never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tessera.client import FeatureStoreClient
from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.core.schema import CompiledSchema
from tessera.ingest.columns import RecordColumns
from tessera.ingest.sinks import SinkRecord, schema_from_description


class GrpcSink:
    """Writes through a Tessera server: schemas over HTTP, records with PutRecords over gRPC.

    Each batch is one PutRecords call, the records sent as the bytes validation produced (the
    server validates them again and makes them durable in one group commit); the client's own
    retries are off, the consumer retries with its backoff.

    `api_key` (default $TESSERA_API_KEY), `tls_ca`, `tls_cert`, `tls_key`: as for
    FeatureStoreClient; the key needs `write` on the groups written and `read` on them (their
    schemas).
    """

    def __init__(
        self, grpc: str, http: str, timeout_s: float = 10.0, *, api_key: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self._grpc, self._http, self._timeout_s = grpc, http, timeout_s
        self._api_key, self._tls = api_key, (tls_ca, tls_cert, tls_key)
        self._client = self._connect()

    def _connect(self) -> FeatureStoreClient:
        return FeatureStoreClient(
            grpc=self._grpc, http=self._http, timeout_s=self._timeout_s, retries=0,
            api_key=self._api_key, tls_ca=self._tls[0], tls_cert=self._tls[1],
            tls_key=self._tls[2],
        )

    def schema(self, feature_group: str) -> CompiledSchema:
        return schema_from_description(self._client.describe_feature_group(feature_group))

    def write(
        self, schema: CompiledSchema, records: Sequence[SinkRecord], ttl_s: float | None
    ) -> None:
        if not records:
            return
        if isinstance(records, RecordColumns):  # the consumer's batches: no object per record
            payloads, sources = records.payloads(), records.sources()
        else:
            payloads = [r.validated.payload for r in records]
            sources = [r.source for r in records]
        try:
            self._client.put_records_encoded(
                schema.group_name, payloads, ttl_s=ttl_s, sources=sources)
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
