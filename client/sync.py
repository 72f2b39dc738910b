"""FeatureStoreClient: the blocking client (gRPC data plane, HTTP control plane)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from grpc import ChannelCredentials, StatusCode

from tessera.client import _admin, _requests
from tessera.client._admin import (
    AdminTransport,
    Aggregations,
    AggregationSettings,
    FeatureSpecs,
    Tags,
)
from tessera.client._batch import (
    BatchGetResult,
    FeatureFilter,
    RecordInput,
    batch_get_requests,
    encode_put_records_request,
    merge_batch_get_responses,
    put_records_requests,
)
from tessera.client._channel import open_channel
from tessera.client._grpc_errors import rpc_errors
from tessera.client._requests import DeletionMode, EventTime, RecordId
from tessera.client._retry import (
    READ_RETRY_CODES,
    WRITE_RETRY_CODES,
    Deadline,
    RetryPolicy,
    call_with_retry,
)
from tessera.client._retry import rpc_name as _rpc_name
from tessera.client._security import client_security
from tessera.client.importer import ImportResult
from tessera.client.offline import drift_frame, statistics_frame, window_params
from tessera.core.errors import TesseraError
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the dev tools

T = TypeVar("T")

DEFAULT_GRPC_TARGET = "127.0.0.1:50051"
DEFAULT_HTTP_URL = "http://127.0.0.1:8080"


class FeatureStoreClient:
    """A blocking client of a Tessera server.

    Records go over gRPC (one channel for the client's lifetime), feature groups over HTTP. Each
    call, its retries included, has a deadline of `timeout_s`; calls failing with UNAVAILABLE
    (reads: also DEADLINE_EXCEEDED or CANCELLED) are retried up to `retries` times with
    exponential backoff and jitter while the deadline allows; a call whose deadline passed raises
    DeadlineExceededError. Failures raise TesseraError subclasses (InvalidRequestError,
    NotFoundError, ...).

    Read-your-writes: every acknowledged write gives a token; `write_token` holds the newest
    one, and the client's reads pass it, so they never return state older than its own writes
    (unless `read_your_writes=False`). A token from elsewhere (a writer service handing it to
    a reader) goes in `consistent_after=` of get_record / batch_get_record.

    Example::

        with FeatureStoreClient(grpc="127.0.0.1:50051", http="http://127.0.0.1:8080") as fs:
            fs.put_record("users", {"user_id": "u1", "ts": 1700000000.0, "clicks": 3})
            fs.get_record("users", "u1")  # {'user_id': 'u1', 'ts': 1700000000.0, 'clicks': 3}
    """

    def __init__(
        self,
        grpc: str = DEFAULT_GRPC_TARGET,
        http: str | None = DEFAULT_HTTP_URL,
        timeout_s: float = 5.0,
        retries: int = 3,
        *,
        credentials: ChannelCredentials | None = None,
        retry_policy: RetryPolicy | None = None,
        read_your_writes: bool = True,
        api_key: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls: bool | None = None,
    ) -> None:
        """`grpc`: 'host:port' of the data plane; `http`: base URL of the control plane (None:
        no feature group methods); `read_your_writes`: reads pass `write_token` so they see this
        client's writes (False: reads ask for nothing; `consistent_after` still works).

        Security (README: Security): `api_key` is sent as `authorization: Bearer <key>` on
        every call (default: $TESSERA_API_KEY when set); `tls_ca`, the CA bundle (PEM) the
        server's certificate must chain to, turns TLS on for both APIs (the default `http` URL
        becomes https); `tls_cert` and `tls_key`, a client certificate and its key (PEM), for
        mutual TLS; `tls=True`: TLS verified by the system's CAs. `credentials`: the gRPC
        channel's own grpc.ChannelCredentials instead (the HTTP client is then plaintext)."""
        self._timeout_s = timeout_s
        self._policy = retry_policy or RetryPolicy(retries=retries)
        self._tokens = _requests.WriteTokens(read_your_writes)
        self._security = security = client_security(api_key, tls_ca, tls_cert, tls_key, tls)
        self._metadata = security.grpc_metadata
        http = security.http_url(http, DEFAULT_HTTP_URL) if http is not None else None
        self._channel = open_channel(grpc, credentials or security.grpc_credentials())
        self._stub = feature_store_pb2_grpc.FeatureStoreStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self._admin = (AdminTransport(http, timeout_s, retries, security=security)
                       if http is not None else None)
        self._put_records_raw: Callable[..., Any] | None = None

    # --- feature groups (HTTP) ------------------------------------------------------------------

    def create_feature_group(
        self,
        name: str,
        record_identifier: str,
        event_time: str,
        features: FeatureSpecs,
        ttl_s: float | None = None,
        online: bool = True,
        offline: bool = True,
        description: str | None = None,
        tags: Tags | None = None,
        aggregations: Aggregations | None = None,
        aggregation_config: AggregationSettings | None = None,
    ) -> dict[str, Any]:
        """Create a feature group; `features` maps names to types ('Integral', 'Fractional',
        'String', 'List[T]', 'Set[T]', 'Vector[N]'). `aggregations` declares windowed
        aggregation features, e.g. [{"name": "clicks_sum_1h", "source": "clicks",
        "function": "sum", "window": "1h"}], read like any feature by GetRecord and the dataset
        builder; `aggregation_config` may set {"tile_size": ..., "lateness": ...}. Returns its
        description.
        Raises ConflictError when it exists, InvalidRequestError for a bad definition."""
        call = _admin.create_feature_group(
            name, record_identifier, event_time, features, ttl_s, online, offline, description,
            tags, aggregations, aggregation_config,
        )
        return self._admin_transport().send(call)

    def describe_feature_group(self, name: str) -> dict[str, Any]:
        """The group's definition and status; FeatureGroupNotFoundError when it does not exist."""
        return self._admin_transport().send(_admin.describe_feature_group(name))

    def statistics(self, group: str, *, start: datetime | str,
                   end: datetime | str) -> pd.DataFrame:
        """Feature statistics of `group`'s offline history rows with event time in [start, end)
        (GET /v1/feature-groups/{group}/statistics): a pandas DataFrame, one row per feature
        (tessera.client.offline.statistics_frame). Needs pandas."""
        call = _admin.feature_statistics(group, window_params(start, end))
        return statistics_frame(self._admin_transport().send(call))

    def drift(self, group: str, *, baseline: tuple[datetime | str, datetime | str],
              window: tuple[datetime | str, datetime | str]) -> pd.DataFrame:
        """Drift of `window` from `baseline` per feature (GET .../drift): psi, p_value,
        drifted, ... as a DataFrame, one row per feature (tessera.client.offline.drift_frame);
        the server's gauge tessera_feature_drift_psi takes these PSIs."""
        params = {**window_params(*baseline, "baseline_"), **window_params(*window)}
        return drift_frame(self._admin_transport().send(_admin.feature_drift(group, params)))

    def list_feature_groups(self) -> list[dict[str, Any]]:
        """The descriptions of every feature group."""
        return self._admin_transport().send(_admin.list_feature_groups())

    def update_feature_group(
        self,
        name: str,
        add_features: FeatureSpecs | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Add features (never remove or retype them) and/or set the description."""
        call = _admin.update_feature_group(name, add_features, description)
        return self._admin_transport().send(call)

    def update_feature_metadata(
        self,
        name: str,
        feature: str,
        description: str | None = None,
        parameters: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """Set a feature's metadata: `description` (None keeps it, "" clears it) and
        `parameters`, key/value pairs searchable like SageMaker's (a None value removes the
        key). Returns the group's description, where each feature shows its `description`
        and `parameters`. NotFoundError when the group or the feature does not exist."""
        call = _admin.update_feature_metadata(name, feature, description, parameters)
        return self._admin_transport().send(call)

    def delete_feature_group(self, name: str) -> None:
        """Delete a feature group and its records."""
        self._admin_transport().send(_admin.delete_feature_group(name))

    # --- records (gRPC) -------------------------------------------------------------------------

    def put_record(
        self, feature_group_name: str, record: Mapping[str, Any], ttl_s: float | None = None
    ) -> bool:
        """Write one record (feature name -> value; None means absent). Returns False when the
        stored record has a newer event time (the online record is kept; history gets it)."""
        request = _requests.put_record_request(feature_group_name, record, ttl_s)
        response = self._call(self._stub.PutRecord, request, WRITE_RETRY_CODES, feature_group_name)
        self._tokens.acknowledged(response.write_token)
        return bool(response.applied)

    def put_records(
        self,
        feature_group_name: str,
        records: Iterable[RecordInput],
        ttl_s: float | None = None,
        batch_size: int = 500,
        sources: Iterable[str] | None = None,
    ) -> int:
        """Write records in PutRecords calls of `batch_size`; returns how many were written.

        Each call is all or nothing; when one fails, the earlier calls stay written. A record
        may also be a wire `Record` (sent as is). `sources`: one per record, kept in the offline
        store's tessera_source column (e.g. "kafka:<topic>/<partition>/<offset>")."""
        written = 0
        for request in put_records_requests(
            feature_group_name, records, ttl_s, batch_size, sources=sources
        ):
            response = self._call(
                self._stub.PutRecords, request, WRITE_RETRY_CODES, feature_group_name
            )
            self._tokens.acknowledged(response.write_token)
            written += response.written
        return written

    def put_records_encoded(
        self,
        feature_group_name: str,
        records: Sequence[bytes],
        ttl_s: float | None = None,
        sources: Sequence[str] | None = None,
    ) -> int:
        """Write records given as serialized tessera.v1.Record messages in ONE PutRecords call
        (the bytes are sent as they are; keep a call well under 64 MB). Returns how many were
        written. For bulk writers that already hold wire records, e.g. the Kafka ingest."""
        request = encode_put_records_request(feature_group_name, records, ttl_s, sources)
        if self._put_records_raw is None:
            self._put_records_raw = self._channel.unary_unary(
                "/tessera.v1.FeatureStore/PutRecords",
                request_serializer=None,  # already bytes
                response_deserializer=pb.PutRecordsResponse.FromString,
            )
        response = self._call(self._put_records_raw, request, WRITE_RETRY_CODES, feature_group_name)
        self._tokens.acknowledged(response.write_token)
        return int(response.written)

    def get_record(
        self,
        feature_group_name: str,
        record_identifier: RecordId,
        features: Iterable[str] | str | None = None,
        with_expiry: bool = False,
        consistent_after: str | None = None,
    ) -> dict[str, Any] | None:
        """The record as a dict (vectors as float32 arrays), only `features` if given; None when
        it does not exist, was deleted or expired. `with_expiry` adds '_expires_at' (epoch
        seconds, None without TTL). `consistent_after`: a write token (from another client) the
        read must reflect, besides this client's own `write_token`."""
        request = _requests.get_record_request(
            feature_group_name, record_identifier, features, with_expiry,
            self._tokens.for_read(consistent_after),
        )
        response = self._call(self._stub.GetRecord, request, READ_RETRY_CODES, feature_group_name)
        return _requests.parse_get_record_response(response, with_expiry)

    def batch_get_record(
        self,
        identifiers: Mapping[str, Iterable[RecordId]],
        features: FeatureFilter = None,
        with_expiry: bool = False,
        consistent_after: str | None = None,
    ) -> BatchGetResult:
        """Records of several groups: {group: [identifiers]}. Split into calls within the
        server's limits (100 groups x 100 identifiers); per-identifier failures (an unknown
        group, say) are in `.errors`, not raised. `features`: names for all groups, or a dict
        of group -> names. `consistent_after`: as for get_record."""
        requests = batch_get_requests(
            identifiers, features, with_expiry, self._tokens.for_read(consistent_after)
        )
        responses = [
            self._call(self._stub.BatchGetRecord, request, READ_RETRY_CODES, None)
            for request in requests
        ]
        return merge_batch_get_responses(responses, with_expiry)

    def delete_record(
        self,
        feature_group_name: str,
        record_identifier: RecordId,
        event_time: EventTime | None = None,
        mode: DeletionMode = "soft",
    ) -> bool:
        """Delete a record as of `event_time` (None: now; epoch seconds, an aware datetime or an
        ISO-8601 string). 'soft': it reads as absent until a newer put; 'hard': it is removed.
        Returns False when the stored record is newer (a soft delete is then ignored)."""
        request = _requests.delete_record_request(
            feature_group_name, record_identifier, event_time, mode
        )
        response = self._call(
            self._stub.DeleteRecord, request, WRITE_RETRY_CODES, feature_group_name
        )
        self._tokens.acknowledged(response.write_token)
        return bool(response.applied)

    @property
    def write_token(self) -> str | None:
        """The token of this client's newest acknowledged write (None: no write yet): pass it
        to another client's read as `consistent_after` to make that read reflect it."""
        return self._tokens.token

    # --- lifetime -------------------------------------------------------------------------------

    def import_table(
        self,
        feature_group_name: str,
        data: Any,
        *,
        batch_size: int = 1000,
        progress: bool | None = None,
    ) -> ImportResult:
        """Backfill a pandas DataFrame, a pyarrow Table or a Parquet / CSV path into a group:
        every row is validated first (bad rows are reported by number and nothing is written),
        then every row goes to history and the latest per id to the online store."""
        from tessera.client.importer import import_table

        return import_table(self, feature_group_name, data, batch_size=batch_size,
                            progress=progress)

    def close(self) -> None:
        """Close the gRPC channel and the HTTP connection pool."""
        self._channel.close()
        if self._admin is not None:
            self._admin.close()

    def __enter__(self) -> FeatureStoreClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _call(
        self,
        method: Callable[..., T],
        request: Any,
        codes: frozenset[StatusCode],
        feature_group_name: str | None,
    ) -> T:
        metadata = self._metadata
        with rpc_errors(feature_group_name, self._security):
            deadline = Deadline(self._timeout_s)
            return call_with_retry(
                lambda: method(request, timeout=deadline.attempt_timeout_s(), metadata=metadata),
                self._policy, codes, deadline=deadline, what=_rpc_name(method),
            )

    def _admin_transport(self) -> AdminTransport:
        if self._admin is None:
            raise TesseraError("this client has no control plane URL; pass http=...")
        return self._admin
