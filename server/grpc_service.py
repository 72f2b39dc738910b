"""The gRPC runtime API (`tessera.v1.FeatureStore`, `tessera.v1.Diagnostics`).

Handlers take and return raw bytes: requests are parsed here so a malformed message becomes
INVALID_ARGUMENT (not grpc's INTERNAL), and read responses are spliced from stored bytes
(server/wire.py). The servicer maps proto <-> domain and nothing else: reads are
server/reads.py's, write operations server/writes.py's, storage the `OnlineStore` seam's
(server/store.py). `_rpc` is the one place where errors become status codes and where every call
is counted and timed; the handlers hold no try/except.

Read-your-writes: every write's response carries `write_token` (core/tokens.py: the commit's
sequence number). A read with `consistent_after` first makes sure the store reflects that commit:
at once when it already does (the single-process store always does); otherwise it waits in a
worker thread (`OnlineStore.wait_visible`, never on the event loop), within the call's deadline
and MAX_CONSISTENCY_WAIT_S, and answers UNAVAILABLE (retryable) when the commit is still not
visible. Reads without a token run exactly as before: synchronously, nothing asked of the store.

Authentication and authorization (README: Security). With authentication on, `_rpc` resolves
every call's `authorization` metadata ("Bearer <API key or JWT>") to a `Principal` through the
`Authenticator` (UNAUTHENTICATED with its message otherwise) and hands it to the method, which
checks it against the group the request names before it reads the registry (so a caller learns
nothing of a group it may not use): GetRecord and BatchGetRecord need `read`, PutRecord,
PutRecords and DeleteRecord `write`, Echo only an authenticated caller. A BatchGetRecord entry
for a group the caller may not read fails its identifiers with PERMISSION_DENIED per item; the
other entries are read. Every denial is one audit line (`_denied`, which also gives the caller
the line's request id). With authentication off (`OPEN_ACCESS`) the handlers are built without
any of it: the methods get `principal=None` and check nothing.
gRPC health and server reflection are other services, left open: health is what load balancers
and Kubernetes probe without credentials; reflection describes the API's schema (the public
proto files, no group names and no data), which the route-table test and tools like grpcurl
need to discover the methods they then call with credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from tessera.core import eventtime
from tessera.core.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    PreconditionFailedError,
    StorageError,
    TesseraError,
)
from tessera.core.keys import normalize_record_id
from tessera.core.records import validate_record
from tessera.core.schema import CompiledSchema
from tessera.core.tokens import decode_token, encode_token
from tessera.core.wire import length_delimited
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import metrics, put_batch, wire
from tessera.server.auth import audit
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.permissions import Action, Principal, denied_message
from tessera.server.reads import OnlineReader
from tessera.server.registry import Registry
from tessera.server.storage_health import storage_failure
from tessera.server.store import Committed, OnlineStore, Op, PutBatch, now_us
from tessera.server.writes import count_writes, delete_op, put_op

log = logging.getLogger(__name__)

FEATURE_STORE = "tessera.v1.FeatureStore"
DIAGNOSTICS = "tessera.v1.Diagnostics"
MAX_BATCH_GROUPS = 100
MAX_BATCH_IDS = 100
#: The longest a read with `consistent_after` waits for the store to reflect the write.
MAX_CONSISTENCY_WAIT_S = 5.0

#: Reads that asked for read-your-writes (only those: a read without a token pays nothing).
CONSISTENT_READS = Counter(
    "tessera_consistent_reads_total",
    "Reads with consistent_after, by method and outcome: the store already reflected the "
    "token's write (visible), the read waited for it (waited), or gave up (late: UNAVAILABLE; "
    "never: a token this store did not issue, FAILED_PRECONDITION).",
    ["method", "outcome"],
    registry=metrics.REGISTRY,
)
_GET_VISIBLE = CONSISTENT_READS.labels("GetRecord", "visible")
_BATCH_VISIBLE = CONSISTENT_READS.labels("BatchGetRecord", "visible")

#: The time left before the call's deadline (None: no deadline): grpc's `time_remaining`.
TimeRemaining: TypeAlias = Callable[[], float | None]


_Req = TypeVar("_Req", pb.GetRecordRequest, pb.BatchGetRecordRequest)
_T = TypeVar("_T")


class FeatureStoreService:
    """The FeatureStore RPCs over a registry and an online store."""

    def __init__(self, registry: Registry, store: OnlineStore) -> None:
        self._registry = registry
        self._store = store
        self._reader = OnlineReader(registry, store)

    def _newest(
        self, schema: CompiledSchema, build: Callable[[CompiledSchema], _T]
    ) -> tuple[CompiledSchema, _T]:
        """`build(schema)`; refused (e.g. a feature the schema does not know), again with a
        newer schema of the group if the registry has one (a serving process may be behind)."""
        try:
            return schema, build(schema)
        except InvalidRequestError:
            newer = self._registry.newer_schema(schema)
            if newer is None:
                raise
        return newer, build(newer)

    # --- writes --------------------------------------------------------------------------------

    async def put_record(self, data: bytes, principal: Principal | None = None) -> bytes:
        api_us = now_us()
        req = pb.PutRecordRequest.FromString(data)
        if principal is not None:
            _require(principal, Action.WRITE, req.feature_group_name, "PutRecord")
        schema = self._registry.schema(req.feature_group_name)
        ttl_s = req.ttl_s if req.HasField("ttl_s") else None
        schema, op = self._newest(schema, lambda s: put_op(
            s, validate_record(s, req.record, ttl_s), api_us, req.source))
        committed = await self._commit([op])
        (result,) = committed.results
        count_writes(schema, [result])
        out: bytes = pb.PutRecordResponse(
            applied=bool(result), write_token=encode_token(committed.seq)
        ).SerializeToString()
        return out

    async def put_records(self, data: bytes, principal: Principal | None = None) -> bytes:
        api_us = now_us()
        bulk = self._put_batch(data, api_us, principal)
        if bulk is not None:  # the common case, validated and encoded in compiled passes
            schema, batch = bulk
            committed = await self._commit([batch])
        else:
            committed_or_none = await self._put_records_one_by_one(data, api_us, principal)
            if committed_or_none is None:  # nothing committed: no token
                return b""
            schema, committed = committed_or_none
        stale = count_writes(schema, committed.results)
        out: bytes = pb.PutRecordsResponse(
            written=len(committed.results), stale=stale, write_token=encode_token(committed.seq)
        ).SerializeToString()
        return out

    def _put_batch(
        self, data: bytes, api_us: int, principal: Principal | None
    ) -> tuple[CompiledSchema, PutBatch] | None:
        """The request as one PutBatch (server/put_batch.py), or None: the per-record path
        decides (and raises what it raises, in its order: a malformed body before an unknown
        group)."""
        request = put_batch.scan(data)
        if request is None:
            return None
        if principal is not None:  # the group the batch would be written to
            _require(principal, Action.WRITE, request.group_name, "PutRecords")
        try:
            schema = self._registry.schema(request.group_name)
        except TesseraError:
            return None
        batch = put_batch.encode(schema, data, request, api_us)
        return None if batch is None else (schema, batch)

    async def _put_records_one_by_one(
        self, data: bytes, api_us: int, principal: Principal | None
    ) -> tuple[CompiledSchema, Committed] | None:
        req = pb.PutRecordsRequest.FromString(data)
        if principal is not None:
            _require(principal, Action.WRITE, req.feature_group_name, "PutRecords")
        schema = self._registry.schema(req.feature_group_name)
        ttl_s = req.ttl_s if req.HasField("ttl_s") else None
        sources = req.sources
        if sources and len(sources) != len(req.records):
            raise InvalidRequestError(
                f"sources has {len(sources)} entries for {len(req.records)} records; "
                "give none or one per record"
            )
        schema, ops = self._newest(schema, lambda s: list[Op]([
            put_op(
                s,
                validate_record(s, record, ttl_s, where=f"records[{i}]"),
                api_us,
                sources[i] if sources else "",
            )
            for i, record in enumerate(req.records)
        ]))
        if not ops:
            return None
        return schema, await self._commit(ops)

    async def delete_record(self, data: bytes, principal: Principal | None = None) -> bytes:
        api_us = now_us()
        req = pb.DeleteRecordRequest.FromString(data)
        if principal is not None:
            _require(principal, Action.WRITE, req.feature_group_name, "DeleteRecord")
        schema = self._registry.schema(req.feature_group_name)
        record_id = normalize_record_id(schema, req.record_identifier)
        if not req.event_time:
            raise InvalidRequestError(
                "event_time is required: ISO-8601 UTC or epoch seconds, as a string"
            )
        event_time_us = eventtime.parse(req.event_time, "event_time")
        hard = req.deletion_mode == pb.DELETION_MODE_HARD_DELETE
        op = delete_op(schema, record_id, event_time_us, hard, api_us)
        committed = await self._commit([op])
        (result,) = committed.results
        out: bytes = pb.DeleteRecordResponse(
            applied=bool(result), write_token=encode_token(committed.seq)
        ).SerializeToString()
        return out

    async def _commit(self, ops: list[Op]) -> Committed:
        committed = await asyncio.wrap_future(self._store.submit(ops))
        for r in committed.results:
            if isinstance(r, TesseraError):
                raise r
        return committed

    # --- reads ---------------------------------------------------------------------------------

    def get_record(
        self, data: bytes, time_remaining: TimeRemaining | None = None,
        principal: Principal | None = None,
    ) -> bytes | Awaitable[bytes]:
        req = pb.GetRecordRequest.FromString(data)
        if principal is not None:  # before a wait for its token, too
            _require(principal, Action.READ, req.feature_group_name, "GetRecord")
        if req.consistent_after:
            if not self._visible(req.consistent_after):
                return self._after("GetRecord", req.consistent_after, time_remaining,
                                   self._get_record, req)
            _GET_VISIBLE.inc()
        return self._get_record(req)

    def _get_record(self, req: pb.GetRecordRequest) -> bytes:
        hit = self._reader.get_record(
            req.feature_group_name, req.record_identifier, req.feature_names, now_us()
        )
        if hit is None:
            return b""
        payload, expires_at_us = hit
        return wire.get_record_response(
            payload, expires_at_us if req.expiration_time_response else None
        )

    def batch_get_record(
        self, data: bytes, time_remaining: TimeRemaining | None = None,
        principal: Principal | None = None,
    ) -> bytes | Awaitable[bytes]:
        req = pb.BatchGetRecordRequest.FromString(data)
        read = self._batch_get_record if principal is None else partial(
            self._batch_get_record, principal=principal)
        if req.consistent_after:
            if not self._visible(req.consistent_after):
                return self._after("BatchGetRecord", req.consistent_after, time_remaining,
                                   read, req)
            _BATCH_VISIBLE.inc()
        return read(req)

    def _batch_get_record(
        self, req: pb.BatchGetRecordRequest, principal: Principal | None = None
    ) -> bytes:
        side = pb.BatchGetRecordResponse()  # errors and unprocessed identifiers
        parts: list[bytes] = []
        at_us = now_us()
        with_expiry = req.expiration_time_response
        for n, entry in enumerate(req.identifiers):
            name = entry.feature_group_name
            ids = list(entry.record_identifiers)
            if n >= MAX_BATCH_GROUPS or len(ids) > MAX_BATCH_IDS:
                rest = ids if n >= MAX_BATCH_GROUPS else ids[MAX_BATCH_IDS:]
                side.unprocessed_identifiers.add(
                    feature_group_name=name, record_identifiers=rest,
                    feature_names=entry.feature_names,
                )
                if n >= MAX_BATCH_GROUPS:
                    continue
                ids = ids[:MAX_BATCH_IDS]
            if principal is not None and not principal.can(Action.READ, name):
                # Per item, like any other error of one group: the other groups are read.
                denied = _denied(principal, Action.READ, name, "BatchGetRecord")
                for rid in ids:
                    side.errors.add(feature_group_name=name, record_identifier=rid,
                                    error_code=denied.grpc_code, error_message=denied.message)
                continue
            read = self._reader.batch_get_record(name, ids, entry.feature_names, at_us)
            for rid, exc in read.errors:
                side.errors.add(feature_group_name=name, record_identifier=rid,
                                error_code=exc.grpc_code, error_message=exc.message)
            group_enc = length_delimited(1, name.encode())
            for rid, (payload, expires_at_us) in read.found:
                parts.append(wire.batch_result_detail(
                    group_enc, rid, payload, expires_at_us if with_expiry else None
                ))
        parts.append(side.SerializeToString())
        return b"".join(parts)

    # --- read-your-writes ----------------------------------------------------------------------

    def _visible(self, token: str) -> bool:
        """Whether the store reflects the write of `token` now (InvalidRequestError when it is
        not a token)."""
        return self._store.visible_seq() >= decode_token(token, "consistent_after")

    async def _after(
        self,
        method: str,
        token: str,
        time_remaining: TimeRemaining | None,
        read: Callable[[_Req], bytes],
        req: _Req,
    ) -> bytes:
        """`read(req)` once the store reflects `token`, waited for off the event loop (the
        store raises PreconditionFailedError at once for a token it knows it never issued)."""
        seq = decode_token(token, "consistent_after")
        left = time_remaining() if time_remaining is not None else None
        timeout_s = MAX_CONSISTENCY_WAIT_S if left is None else min(left, MAX_CONSISTENCY_WAIT_S)
        try:
            visible = await asyncio.to_thread(self._store.wait_visible, seq, max(timeout_s, 0.0))
        except PreconditionFailedError:
            CONSISTENT_READS.labels(method, "never").inc()
            raise
        CONSISTENT_READS.labels(method, "waited" if visible else "late").inc()
        if not visible:
            raise StorageError(
                f"the store does not reflect the write of consistent_after {token!r} yet "
                f"(waited {timeout_s:.3g}s; it is at commit {self._store.visible_seq()}, the "
                f"write is commit {seq}); retry"
            )
        return read(req)

    # --- diagnostics ---------------------------------------------------------------------------

    def echo(self, data: bytes, principal: Principal | None = None) -> bytes:
        # Any authenticated caller (`_rpc` authenticated it). EchoResponse has EchoRequest's
        # layout: the request bytes are the response.
        return data


# --- permissions -------------------------------------------------------------------------------


def _require(principal: Principal, action: Action, group: str, method: str) -> None:
    """PermissionDeniedError (audited) unless `principal` may do `action` on `group`."""
    if not principal.can(action, group):
        raise _denied(principal, action, group, method)


def _denied(principal: Principal, action: Action, group: str, method: str) -> PermissionDeniedError:
    """The error of a denied call, written to the audit log first (server/auth/audit.py; the
    action is the RPC's name): the one place a denial of this API is recorded. The caller's
    message carries the audit line's request id, so an operator finds the line."""
    request_id = uuid.uuid4().hex[:16]
    reason = denied_message(principal, action, group)
    audit.record(principal, method, group, audit.DENIED, request_id=request_id, reason=reason)
    return PermissionDeniedError(f"{reason}; request id {request_id}")


# --- the edge: error mapping, metrics ----------------------------------------------------------


class _DeadlinePassedError(Exception):
    """The call's deadline passed while its handler ran."""


def _past_deadline(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The call's `authorization` metadata value (None: absent). gRPC lower-cases metadata
    keys; a scan of the few entries a call carries, no dict built."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _rpc(
    method: str,
    request_type: str,
    impl: Callable[..., bytes | Awaitable[bytes]],
    with_deadline: bool = False,
    auth: Authenticator = OPEN_ACCESS,
) -> grpc.RpcMethodHandler:
    """The handler of `method`: `impl(request)`, or `impl(request, context.time_remaining)`
    when `with_deadline`; `impl` may return the response or an awaitable of it. With `auth`
    enabled, the call's principal is resolved first and passed as `principal=`."""
    counter = metrics.GRPC_REQUESTS
    latency = metrics.GRPC_LATENCY.labels(method)
    ok = counter.labels(method, "OK")
    authenticate = auth.authenticate if auth.enabled else None

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            if authenticate is None:
                result = impl(request, context.time_remaining) if with_deadline else impl(request)
            else:
                principal = authenticate(authorization(context))
                result = (impl(request, context.time_remaining, principal) if with_deadline
                          else impl(request, principal=principal))
            if not isinstance(result, bytes):  # a write, or a read waiting for its token
                result = await result
            if _past_deadline(context):  # say so, rather than let the call end as CANCELLED
                raise _DeadlinePassedError
            ok.inc()
            return result
        except _DeadlinePassedError:
            counter.labels(method, "DEADLINE_EXCEEDED").inc()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} ran past the call's deadline"
            )
        except TesseraError as exc:
            counter.labels(method, exc.grpc_code).inc()
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
        except DecodeError:
            counter.labels(method, "INVALID_ARGUMENT").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed request: the body is not a valid {request_type} message",
            )
        except asyncio.CancelledError:
            code = "DEADLINE_EXCEEDED" if _past_deadline(context) else "CANCELLED"
            counter.labels(method, code).inc()
            raise
        except Exception as exc:
            request_id = uuid.uuid4().hex[:16]
            log.exception("%s failed (request id %s)", method, request_id)
            if storage_failure(exc):  # disk full, I/O error: retryable
                counter.labels(method, "UNAVAILABLE").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"storage unavailable; request id {request_id}")
            counter.labels(method, "INTERNAL").inc()
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}"
            )
        finally:
            latency.observe(time.perf_counter() - start)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(handler)


def handlers(
    service: FeatureStoreService, auth: Authenticator = OPEN_ACCESS
) -> list[grpc.GenericRpcHandler]:
    """The generic handlers to add to a grpc.aio server; `auth` resolves each call's
    `authorization` metadata to a principal (server/auth; the module docstring)."""
    fs = grpc.method_handlers_generic_handler(
        FEATURE_STORE,
        {
            "PutRecord": _rpc(
                "PutRecord", "tessera.v1.PutRecordRequest", service.put_record, auth=auth
            ),
            "PutRecords": _rpc(
                "PutRecords", "tessera.v1.PutRecordsRequest", service.put_records, auth=auth
            ),
            "GetRecord": _rpc(
                "GetRecord", "tessera.v1.GetRecordRequest", service.get_record, True, auth
            ),
            "BatchGetRecord": _rpc(
                "BatchGetRecord", "tessera.v1.BatchGetRecordRequest", service.batch_get_record,
                True, auth,
            ),
            "DeleteRecord": _rpc(
                "DeleteRecord", "tessera.v1.DeleteRecordRequest", service.delete_record,
                auth=auth,
            ),
        },
    )
    diag = grpc.method_handlers_generic_handler(
        DIAGNOSTICS, {"Echo": _rpc("Echo", "tessera.v1.EchoRequest", service.echo, auth=auth)}
    )
    return [fs, diag]
