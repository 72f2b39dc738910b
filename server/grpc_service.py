"""The gRPC runtime API (`tessera.v1.FeatureStore`, `tessera.v1.Diagnostics`).

Handlers take and return raw bytes: requests are parsed here so a malformed message becomes
INVALID_ARGUMENT (not grpc's INTERNAL), and read responses are spliced from stored bytes
(server/wire.py). `_rpc` is the one place where errors become status codes and where every call
is counted and timed; the handlers hold no try/except.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tessera.core import eventtime
from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.core.keys import normalize_record_id, record_key
from tessera.core.records import validate_record
from tessera.core.schema import CompiledSchema
from tessera.core.wire import length_delimited
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import metrics, wire
from tessera.server.aggregates import read_features, stream_keys
from tessera.server.online_store import OpResult, RocksDBOnlineStore, now_us
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.writes import count_writes, delete_op, no_online_store, put_op

log = logging.getLogger(__name__)

FEATURE_STORE = "tessera.v1.FeatureStore"
DIAGNOSTICS = "tessera.v1.Diagnostics"
MAX_BATCH_GROUPS = 100
MAX_BATCH_IDS = 100


class FeatureStoreService:
    """The FeatureStore RPCs over a registry and an online store."""

    def __init__(self, registry: FeatureGroupRegistry, store: RocksDBOnlineStore) -> None:
        self._registry = registry
        self._store = store

    # --- writes --------------------------------------------------------------------------------

    async def put_record(self, data: bytes) -> bytes:
        api_us = now_us()
        req = pb.PutRecordRequest.FromString(data)
        schema = self._registry.schema(req.feature_group_name)
        ttl_s = req.ttl_s if req.HasField("ttl_s") else None
        op = put_op(schema, validate_record(schema, req.record, ttl_s), api_us, req.source)
        (result,) = await self._commit([op])
        count_writes(schema, [result])
        out: bytes = pb.PutRecordResponse(applied=bool(result)).SerializeToString()
        return out

    async def put_records(self, data: bytes) -> bytes:
        api_us = now_us()
        req = pb.PutRecordsRequest.FromString(data)
        schema = self._registry.schema(req.feature_group_name)
        ttl_s = req.ttl_s if req.HasField("ttl_s") else None
        sources = req.sources
        if sources and len(sources) != len(req.records):
            raise InvalidRequestError(
                f"sources has {len(sources)} entries for {len(req.records)} records; "
                "give none or one per record"
            )
        ops = [
            put_op(
                schema,
                validate_record(schema, record, ttl_s, where=f"records[{i}]"),
                api_us,
                sources[i] if sources else "",
            )
            for i, record in enumerate(req.records)
        ]
        results = await self._commit(ops) if ops else []
        stale = count_writes(schema, results)
        out: bytes = pb.PutRecordsResponse(written=len(results), stale=stale).SerializeToString()
        return out

    async def delete_record(self, data: bytes) -> bytes:
        api_us = now_us()
        req = pb.DeleteRecordRequest.FromString(data)
        schema = self._registry.schema(req.feature_group_name)
        record_id = normalize_record_id(schema, req.record_identifier)
        if not req.event_time:
            raise InvalidRequestError(
                "event_time is required: ISO-8601 UTC or epoch seconds, as a string"
            )
        event_time_us = eventtime.parse(req.event_time, "event_time")
        hard = req.deletion_mode == pb.DELETION_MODE_HARD_DELETE
        op = delete_op(schema, record_id, event_time_us, hard, api_us)
        (result,) = await self._commit([op])
        out: bytes = pb.DeleteRecordResponse(applied=bool(result)).SerializeToString()
        return out

    async def _commit(self, ops: list[Any]) -> list[OpResult]:
        results = await asyncio.wrap_future(self._store.submit(ops))
        for r in results:
            if isinstance(r, TesseraError):
                raise r
        return results

    # --- reads ---------------------------------------------------------------------------------

    def get_record(self, data: bytes) -> bytes:
        req = pb.GetRecordRequest.FromString(data)
        schema = self._registry.schema(req.feature_group_name)
        if not schema.online:
            raise no_online_store(schema)
        record_id = normalize_record_id(schema, req.record_identifier)
        names = req.feature_names
        if names:
            _check_names(schema, names)
        hit = self._store.get(record_key(schema.group_id, record_id), now_us())
        if hit is None:
            return b""
        payload, expires_at_us = hit
        wanted = _aggregates_wanted(schema, names)
        extra = b""
        if wanted is not None:
            (extra,) = self._aggregates(schema, [record_id], [payload], wanted)
        if names:
            payload = _project(schema, payload, names)
        if extra:
            payload = memoryview(bytes(payload) + extra)
        return wire.get_record_response(
            payload, expires_at_us if req.expiration_time_response else None
        )

    def _aggregates(
        self,
        schema: CompiledSchema,
        record_ids: list[str],
        payloads: list[memoryview],
        wanted: frozenset[str] | None,
    ) -> list[bytes]:
        """The records' aggregation features as of now, encoded to append to their bytes."""
        plan = schema.aggregations
        assert plan is not None
        gid = schema.group_id
        keys = [stream_keys(plan, gid, rid, p) for rid, p in zip(record_ids, payloads, strict=True)]
        stored: list[list[bytes | None]] = []
        present: list[list[bool]] = []
        for s in range(len(plan.streams)):
            column = [k[s] for k in keys]
            found = self._store.get_aggregates([k for k in column if k is not None])
            values = iter(found)
            stored.append([None if k is None else next(values) for k in column])
            present.append([k is not None for k in column])
        # "Now" is taken after the tiles were read, so it is never before the commit that
        # wrote them (the fold's eviction and write times assume reads come later).
        return read_features(plan, stored, present, now_us(), wanted)

    def batch_get_record(self, data: bytes) -> bytes:
        req = pb.BatchGetRecordRequest.FromString(data)
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
            schema = self._registry.find_schema(name)
            if schema is None:
                msg = f"feature group '{name}' does not exist"
                for rid in ids:
                    side.errors.add(feature_group_name=name, record_identifier=rid,
                                    error_code="NOT_FOUND", error_message=msg)
                continue
            try:
                if not schema.online:
                    raise no_online_store(schema)
                _check_names(schema, entry.feature_names)
            except TesseraError as exc:
                for rid in ids:
                    side.errors.add(feature_group_name=name, record_identifier=rid,
                                    error_code=exc.grpc_code, error_message=exc.message)
                continue
            good: list[str] = []
            for rid in ids:
                try:
                    good.append(normalize_record_id(schema, rid))
                except InvalidRequestError as exc:
                    side.errors.add(feature_group_name=name, record_identifier=rid,
                                    error_code="INVALID_ARGUMENT", error_message=exc.message)
            gid = schema.group_id
            hits = self._store.multi_get([record_key(gid, rid) for rid in good], at_us)
            group_enc = length_delimited(1, name.encode())
            found = [(rid, hit) for rid, hit in zip(good, hits, strict=True) if hit is not None]
            wanted = _aggregates_wanted(schema, entry.feature_names)
            extras: list[bytes] = []
            if wanted is not None and found:
                extras = self._aggregates(
                    schema, [rid for rid, _ in found], [hit[0] for _, hit in found], wanted
                )
            for i, (rid, (payload, expires_at_us)) in enumerate(found):
                if entry.feature_names:
                    payload = _project(schema, payload, entry.feature_names)
                if extras and extras[i]:
                    payload = memoryview(bytes(payload) + extras[i])
                parts.append(wire.batch_result_detail(
                    group_enc, rid, payload, expires_at_us if with_expiry else None
                ))
        parts.append(side.SerializeToString())
        return b"".join(parts)

    # --- diagnostics ---------------------------------------------------------------------------

    def echo(self, data: bytes) -> bytes:
        # EchoResponse has EchoRequest's layout: the request bytes are the response.
        return data


def _check_names(schema: CompiledSchema, names: Any) -> None:
    """Refuse a feature filter naming neither a feature nor an aggregation of the group."""
    plan = schema.aggregations
    for f in names:
        if f not in schema.features and (plan is None or f not in plan.aggregations):
            raise schema.unknown_feature(f)


def _aggregates_wanted(schema: CompiledSchema, names: Any) -> frozenset[str] | None:
    """The aggregations a read returns: all of them without a filter, the named ones with one;
    None when there are none to compute."""
    plan = schema.aggregations
    if plan is None:
        return None
    if not names:
        return frozenset(plan.aggregations)
    wanted = frozenset(n for n in names if n in plan.aggregations)
    return wanted or None


def _project(schema: CompiledSchema, payload: memoryview, names: Any) -> memoryview:
    """The stored record restricted to `names` (decoded: only when a filter is asked for)."""
    wanted = set(names)
    record = pb.Record.FromString(bytes(payload))
    kept = pb.Record(features=[fv for fv in record.features if fv.feature_name in wanted])
    return memoryview(kept.SerializeToString())


# --- the edge: error mapping, metrics ----------------------------------------------------------


def _rpc(
    method: str, request_type: str, impl: Callable[[bytes], bytes | Awaitable[bytes]]
) -> grpc.RpcMethodHandler:
    counter = metrics.GRPC_REQUESTS
    latency = metrics.GRPC_LATENCY.labels(method)
    ok = counter.labels(method, "OK")
    is_async = asyncio.iscoroutinefunction(impl)

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            result = impl(request)
            if is_async:
                result = await result  # type: ignore[misc]
            ok.inc()
            return result  # type: ignore[return-value]
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
            counter.labels(method, "CANCELLED").inc()
            raise
        except Exception:
            request_id = uuid.uuid4().hex[:16]
            log.exception("%s failed (request id %s)", method, request_id)
            counter.labels(method, "INTERNAL").inc()
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}"
            )
        finally:
            latency.observe(time.perf_counter() - start)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(handler)


def handlers(service: FeatureStoreService) -> list[grpc.GenericRpcHandler]:
    """The generic handlers to add to a grpc.aio server."""
    fs = grpc.method_handlers_generic_handler(
        FEATURE_STORE,
        {
            "PutRecord": _rpc("PutRecord", "tessera.v1.PutRecordRequest", service.put_record),
            "PutRecords": _rpc("PutRecords", "tessera.v1.PutRecordsRequest", service.put_records),
            "GetRecord": _rpc("GetRecord", "tessera.v1.GetRecordRequest", service.get_record),
            "BatchGetRecord": _rpc(
                "BatchGetRecord", "tessera.v1.BatchGetRecordRequest", service.batch_get_record
            ),
            "DeleteRecord": _rpc(
                "DeleteRecord", "tessera.v1.DeleteRecordRequest", service.delete_record
            ),
        },
    )
    diag = grpc.method_handlers_generic_handler(
        DIAGNOSTICS, {"Echo": _rpc("Echo", "tessera.v1.EchoRequest", service.echo)}
    )
    return [fs, diag]
