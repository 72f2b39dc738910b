"""AsyncFeatureStoreClient: the asyncio client (grpc.aio data plane, httpx.AsyncClient control
plane). Same methods as FeatureStoreClient, as coroutines; requests and responses are built and
read by the same code."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from grpc import ChannelCredentials, StatusCode, aio

from tessera.client import _admin, _requests
from tessera.client._admin import (
    Aggregations,
    AggregationSettings,
    AsyncAdminTransport,
    FeatureSpecs,
    Tags,
)
from tessera.client._batch import (
    BatchGetResult,
    FeatureFilter,
    RecordInput,
    batch_get_requests,
    merge_batch_get_responses,
    put_records_requests,
)
from tessera.client._channel import open_aio_channel
from tessera.client._grpc_errors import rpc_errors
from tessera.client._requests import DeletionMode, EventTime, RecordId
from tessera.client._retry import (
    READ_RETRY_CODES,
    WRITE_RETRY_CODES,
    Deadline,
    RetryPolicy,
    call_with_retry_async,
)
from tessera.client._retry import rpc_name as _rpc_name
from tessera.client._security import client_security
from tessera.client.offline import drift_frame, statistics_frame, window_params
from tessera.client.sync import DEFAULT_GRPC_TARGET, DEFAULT_HTTP_URL
from tessera.core.errors import TesseraError
from tessera.proto.v1 import feature_store_pb2_grpc

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the dev tools

T = TypeVar("T")


class AsyncFeatureStoreClient:
    """An asyncio client of a Tessera server: FeatureStoreClient's methods as coroutines.

    The gRPC channel opens on the first call, inside the event loop that uses it, so the client
    can be built anywhere; use it from one event loop. Read-your-writes as FeatureStoreClient:
    `write_token`, `read_your_writes=False`, `consistent_after=`. Close it with `await close()` or
    `async with`.
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
        """Arguments as for FeatureStoreClient (the API key and TLS too)."""
        self._target = grpc
        self._security = security = client_security(api_key, tls_ca, tls_cert, tls_key, tls)
        self._metadata = security.grpc_metadata
        self._credentials = credentials or security.grpc_credentials()
        self._timeout_s = timeout_s
        self._policy = retry_policy or RetryPolicy(retries=retries)
        self._tokens = _requests.WriteTokens(read_your_writes)
        self._channel: aio.Channel | None = None
        self._stub_: feature_store_pb2_grpc.FeatureStoreStub | None = None
        http = security.http_url(http, DEFAULT_HTTP_URL) if http is not None else None
        self._admin = (AsyncAdminTransport(http, timeout_s, retries, security=security)
                       if http is not None else None)

    # --- feature groups (HTTP) ------------------------------------------------------------------

    async def create_feature_group(
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
        """Create a feature group; see FeatureStoreClient.create_feature_group."""
        call = _admin.create_feature_group(
            name, record_identifier, event_time, features, ttl_s, online, offline, description,
            tags, aggregations, aggregation_config,
        )
        return await self._admin_transport().send(call)

    async def describe_feature_group(self, name: str) -> dict[str, Any]:
        """The group's definition and status; FeatureGroupNotFoundError when it does not exist."""
        return await self._admin_transport().send(_admin.describe_feature_group(name))

    async def statistics(self, group: str, *, start: datetime | str,
                   end: datetime | str) -> pd.DataFrame:
        """Feature statistics of `group`'s offline history rows with event time in [start, end)
        (GET /v1/feature-groups/{group}/statistics): a pandas DataFrame, one row per feature
        (tessera.client.offline.statistics_frame). Needs pandas."""
        call = _admin.feature_statistics(group, window_params(start, end))
        return statistics_frame(await self._admin_transport().send(call))

    async def drift(self, group: str, *, baseline: tuple[datetime | str, datetime | str],
              window: tuple[datetime | str, datetime | str]) -> pd.DataFrame:
        """Drift of `window` from `baseline` per feature (GET .../drift): psi, p_value,
        drifted, ... as a DataFrame, one row per feature (tessera.client.offline.drift_frame);
        the server's gauge tessera_feature_drift_psi takes these PSIs."""
        params = {**window_params(*baseline, "baseline_"), **window_params(*window)}
        return drift_frame(await self._admin_transport().send(_admin.feature_drift(group, params)))

    async def list_feature_groups(self) -> list[dict[str, Any]]:
        """The descriptions of every feature group."""
        return await self._admin_transport().send(_admin.list_feature_groups())

    async def update_feature_group(
        self,
        name: str,
        add_features: FeatureSpecs | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Add features (never remove or retype them) and/or set the description."""
        call = _admin.update_feature_group(name, add_features, description)
        return await self._admin_transport().send(call)

    async def update_feature_metadata(
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
        return await self._admin_transport().send(call)

    async def delete_feature_group(self, name: str) -> None:
        """Delete a feature group and its records."""
        await self._admin_transport().send(_admin.delete_feature_group(name))

    # --- records (gRPC) -------------------------------------------------------------------------

    async def put_record(
        self, feature_group_name: str, record: Mapping[str, Any], ttl_s: float | None = None
    ) -> bool:
        """Write one record; see FeatureStoreClient.put_record."""
        request = _requests.put_record_request(feature_group_name, record, ttl_s)
        stub = self._stub()
        response = await self._call(stub.PutRecord, request, WRITE_RETRY_CODES, feature_group_name)
        self._tokens.acknowledged(response.write_token)
        return bool(response.applied)

    async def put_records(
        self,
        feature_group_name: str,
        records: Iterable[RecordInput],
        ttl_s: float | None = None,
        batch_size: int = 500,
        sources: Iterable[str] | None = None,
    ) -> int:
        """Write records in PutRecords calls of `batch_size`, one after the other; returns how
        many were written. Records and `sources` as for FeatureStoreClient.put_records."""
        stub = self._stub()
        written = 0
        for request in put_records_requests(
            feature_group_name, records, ttl_s, batch_size, sources=sources
        ):
            response = await self._call(
                stub.PutRecords, request, WRITE_RETRY_CODES, feature_group_name
            )
            self._tokens.acknowledged(response.write_token)
            written += response.written
        return written

    async def get_record(
        self,
        feature_group_name: str,
        record_identifier: RecordId,
        features: Iterable[str] | str | None = None,
        with_expiry: bool = False,
        consistent_after: str | None = None,
    ) -> dict[str, Any] | None:
        """The record as a dict, or None; see FeatureStoreClient.get_record."""
        request = _requests.get_record_request(
            feature_group_name, record_identifier, features, with_expiry,
            self._tokens.for_read(consistent_after),
        )
        stub = self._stub()
        response = await self._call(stub.GetRecord, request, READ_RETRY_CODES, feature_group_name)
        return _requests.parse_get_record_response(response, with_expiry)

    async def batch_get_record(
        self,
        identifiers: Mapping[str, Iterable[RecordId]],
        features: FeatureFilter = None,
        with_expiry: bool = False,
        consistent_after: str | None = None,
    ) -> BatchGetResult:
        """Records of several groups; the calls it splits into run concurrently. See
        FeatureStoreClient.batch_get_record."""
        requests = batch_get_requests(
            identifiers, features, with_expiry, self._tokens.for_read(consistent_after)
        )
        stub = self._stub()
        responses = await asyncio.gather(
            *(self._call(stub.BatchGetRecord, r, READ_RETRY_CODES, None) for r in requests)
        )
        return merge_batch_get_responses(responses, with_expiry)

    async def delete_record(
        self,
        feature_group_name: str,
        record_identifier: RecordId,
        event_time: EventTime | None = None,
        mode: DeletionMode = "soft",
    ) -> bool:
        """Delete a record as of `event_time`; see FeatureStoreClient.delete_record."""
        request = _requests.delete_record_request(
            feature_group_name, record_identifier, event_time, mode
        )
        stub = self._stub()
        response = await self._call(
            stub.DeleteRecord, request, WRITE_RETRY_CODES, feature_group_name
        )
        self._tokens.acknowledged(response.write_token)
        return bool(response.applied)

    @property
    def write_token(self) -> str | None:
        """The token of this client's newest acknowledged write; see
        FeatureStoreClient.write_token."""
        return self._tokens.token

    # --- lifetime -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the gRPC channel and the HTTP connection pool."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub_ = None
        if self._admin is not None:
            await self._admin.close()

    async def __aenter__(self) -> AsyncFeatureStoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _stub(self) -> feature_store_pb2_grpc.FeatureStoreStub:
        if self._stub_ is None:
            self._channel = open_aio_channel(self._target, self._credentials)
            self._stub_ = feature_store_pb2_grpc.FeatureStoreStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub_

    async def _call(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        codes: frozenset[StatusCode],
        feature_group_name: str | None,
    ) -> T:
        metadata = self._metadata
        with rpc_errors(feature_group_name, self._security):
            deadline = Deadline(self._timeout_s)
            return await call_with_retry_async(
                lambda: method(request, timeout=deadline.attempt_timeout_s(), metadata=metadata),
                self._policy, codes, deadline=deadline, what=_rpc_name(method),
            )

    def _admin_transport(self) -> AsyncAdminTransport:
        if self._admin is None:
            raise TesseraError("this client has no control plane URL; pass http=...")
        return self._admin
