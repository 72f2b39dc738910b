"""Tessera's own REST runtime: the four core record operations over HTTP, on the fast path
(server/http_fast.py), for callers without a gRPC stack.

    GET    /v1/feature-groups/{group}/records/{record_id}[?features=a,b&consistent_after=T]
           -> {"record": {feature: value}, "expires_at": ISO-8601 | null}; 404 when absent
    PUT    /v1/feature-groups/{group}/records   {"record": {...}, "ttl_s": optional}
           -> {"applied": bool, "write_token": str}
    POST   /v1/feature-groups/{group}/records:batchGet
           {"record_ids": [...], "features": [...] optional, "consistent_after": optional}
           -> {"records": [{"record_id", "record", "expires_at"}], "missing": [...]}
    DELETE /v1/feature-groups/{group}/records/{record_id}?event_time=...&mode=soft|hard
           -> {"applied": bool, "write_token": str}

Values are typed as in the SDK (core/values.py): ints stay ints, floats floats, strings strings,
lists lists, and vectors are lists of their float32 values. `Content-Type:
application/x-protobuf` makes PUT take a PutRecordRequest's bytes (its group is the path's);
`Accept: application/x-protobuf` makes any route answer the gRPC response message's bytes
(GetRecordResponse, PutRecordResponse, BatchGetRecordResponse, DeleteRecordResponse).

Every route is the gRPC RPC of the same name over the same registry and store: writes and
reads with `consistent_after` (the `write_token` of a write, through whichever serving
process) go through the servicer's `FeatureStoreService` (the request turned into the RPC's
message, its response bytes into JSON), other reads through its `OnlineReader`
(server/reads.py), so validation, newer-schema retries and read-your-writes are the gRPC
API's. A read answers from the stored record's bytes: the protobuf answer is spliced as the
gRPC one is (server/wire.py), the JSON one written from them in one compiled pass
(server/record_json.py). Errors are
Tessera's HTTP error body with the status of the error class (http_fast.tessera_errors); a
malformed body is 422 and a body over MAX_BODY_BYTES 413.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI
from google.protobuf.message import DecodeError

from tessera.core.errors import InvalidRequestError, NotFoundError, error_for_grpc_code
from tessera.core.keys import normalize_record_id
from tessera.core.values import fill_value
from tessera.core.wire import length_delimited
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import wire
from tessera.server.grpc_service import MAX_BATCH_IDS, FeatureStoreService
from tessera.server.http_fast import (
    PROTOBUF,
    FastRequest,
    FastResponse,
    FastRouter,
    Handler,
    tessera_errors,
)
from tessera.server.reads import OnlineReader
from tessera.server.record_json import (
    BatchGetResult,
    RecordBody,
    batch_get_body,
    get_record_body,
)
from tessera.server.registry import Registry
from tessera.server.store import OnlineStore, now_us

#: The largest request body the REST runtime takes (a record of large vectors fits).
MAX_BODY_BYTES = 4 * 1024 * 1024

RECORD = "/v1/feature-groups/{group}/records/{record_id}"
RECORDS = "/v1/feature-groups/{group}/records"
BATCH_GET = "/v1/feature-groups/{group}/records:batchGet"

_PROTOBUF = b"application/x-protobuf"


# --- bodies (msgspec: decoded and typed in one pass; also their OpenAPI schemas) --------------


class PutRecordBody(msgspec.Struct, forbid_unknown_fields=True):
    """The record to write: feature name -> value (null: absent); `ttl_s` overrides the
    group's default TTL for this record."""

    record: dict[str, Any]
    ttl_s: float | None = None


class BatchGetBody(msgspec.Struct, forbid_unknown_fields=True):
    """Up to 100 record ids of the group; `features` restricts each record (default: all)."""

    record_ids: list[str | int]
    features: list[str] = []
    consistent_after: str = ""


class WriteResult(msgspec.Struct):
    """`applied` is false when the stored record has a newer event time; `write_token` makes a
    later read see this write (`consistent_after`)."""

    applied: bool
    write_token: str


_decode_put = msgspec.json.Decoder(PutRecordBody).decode
_decode_batch = msgspec.json.Decoder(BatchGetBody).decode
_encode = msgspec.json.Encoder().encode
_JSON = [(b"content-type", b"application/json")]


def _json(body: msgspec.Struct) -> FastResponse:
    return FastResponse(200, _JSON, _encode(body))


def _wants_protobuf(req: FastRequest) -> bool:
    accept = req.header(b"accept")
    return accept is not None and _PROTOBUF in accept


# --- values ------------------------------------------------------------------------------------


def _wire_record(values: dict[str, Any]) -> pb.Record:
    """A JSON record as the wire Record validate_record checks (as the SDK builds it)."""
    record = pb.Record()
    for name, value in values.items():
        if value is None:
            continue
        fv = record.features.add(feature_name=name)
        try:
            fill_value(fv, value)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. an int past int64
            raise InvalidRequestError(
                f"record: feature '{name}': {value!r} is not a valid value: {exc}") from None
    return record


# --- the routes --------------------------------------------------------------------------------


class RestRuntime:
    """The route handlers over the gRPC servicer's `FeatureStoreService` and registry. A read
    without `consistent_after` is the servicer's read itself (server/reads.py's `OnlineReader`,
    answered without a coroutine); a read with one goes through the servicer's RPC (it waits
    for the write, as the gRPC API does); writes are the servicer's RPCs."""

    def __init__(self, service: FeatureStoreService, registry: Registry, store: OnlineStore
                 ) -> None:
        self._service, self._registry = service, registry
        self._reader = OnlineReader(registry, store)

    def get_record(self, req: FastRequest) -> FastResponse | Awaitable[FastResponse]:
        group, record_id = req.params["group"], req.params["record_id"]
        features: list[str] = []
        token = ""
        if req.query_string:
            for value in req.query.get("features", ()):
                features.extend(f for f in value.split(",") if f)
            token = req.query_one("consistent_after") or ""
        if token:
            return self._get_record_after(req, group, record_id, features, token)
        hit = self._reader.get_record(group, record_id, features, now_us())
        if hit is None:
            raise _absent(group, record_id)
        payload, expires_at_us = hit
        if _wants_protobuf(req):
            return FastResponse(200, PROTOBUF, wire.get_record_response(payload, expires_at_us))
        return FastResponse(200, _JSON, get_record_body(payload, expires_at_us))

    async def _get_record_after(self, req: FastRequest, group: str, record_id: str,
                                features: list[str], token: str) -> FastResponse:
        message = pb.GetRecordRequest(
            feature_group_name=group, record_identifier=record_id, feature_names=features,
            expiration_time_response=True, consistent_after=token,
        ).SerializeToString()
        data = await _answer(self._service.get_record(message))
        if not data:
            raise _absent(group, record_id)
        if _wants_protobuf(req):
            return FastResponse(200, PROTOBUF, data)
        response = pb.GetRecordResponse.FromString(data)
        expires = response.expires_at_us if response.HasField("expires_at_us") else None
        return FastResponse(200, _JSON,
                            get_record_body(response.record.SerializeToString(), expires))

    async def put_record(self, req: FastRequest) -> FastResponse:
        group = req.params["group"]
        content_type = req.header(b"content-type")
        if content_type is not None and content_type.startswith(_PROTOBUF):
            message = _decode_proto(pb.PutRecordRequest, req.body, "tessera.v1.PutRecordRequest")
            if message.feature_group_name not in ("", group):
                raise InvalidRequestError(
                    f"feature_group_name '{message.feature_group_name}' of the message is not "
                    f"the path's feature group '{group}'")
            message.feature_group_name = group
        else:
            body = _decode_json(_decode_put, req.body)
            message = pb.PutRecordRequest(feature_group_name=group,
                                          record=_wire_record(body.record))
            if body.ttl_s is not None:
                message.ttl_s = body.ttl_s
        data = await self._service.put_record(message.SerializeToString())
        return _write_result(req, pb.PutRecordResponse, data)

    def batch_get_record(self, req: FastRequest) -> FastResponse | Awaitable[FastResponse]:
        group = req.params["group"]
        body = _decode_json(_decode_batch, req.body)
        ids = [rid if isinstance(rid, str) else str(rid) for rid in body.record_ids]
        if len(ids) > MAX_BATCH_IDS:
            raise InvalidRequestError(
                f"record_ids has {len(ids)} ids; at most {MAX_BATCH_IDS} per request")
        if body.consistent_after:
            return self._batch_get_record_after(req, group, ids, body)
        read = self._reader.batch_get_record(group, ids, body.features, now_us())
        if read.errors:  # the group, a feature or an id is refused: the request is
            raise read.errors[0][1]
        if _wants_protobuf(req):
            group_enc = length_delimited(1, group.encode())
            return FastResponse(200, PROTOBUF, b"".join(
                wire.batch_result_detail(group_enc, rid, payload, expires_at_us)
                for rid, (payload, expires_at_us) in read.found))
        missing = self._missing(group, ids, [rid for rid, _ in read.found])
        return FastResponse(200, _JSON, batch_get_body(read.found, missing))

    async def _batch_get_record_after(self, req: FastRequest, group: str, ids: list[str],
                                      body: BatchGetBody) -> FastResponse:
        message = pb.BatchGetRecordRequest(
            identifiers=[pb.BatchGetRecordIdentifier(
                feature_group_name=group, record_identifiers=ids, feature_names=body.features)],
            expiration_time_response=True, consistent_after=body.consistent_after,
        ).SerializeToString()
        data = await _answer(self._service.batch_get_record(message))
        response = pb.BatchGetRecordResponse.FromString(data)
        if response.errors:
            first = response.errors[0]
            raise error_for_grpc_code(first.error_code, first.error_message)
        if _wants_protobuf(req):
            return FastResponse(200, PROTOBUF, data)
        found: list[tuple[str, tuple[bytes, int | None]]] = [
            (r.record_identifier, (r.record.SerializeToString(),
                                   r.expires_at_us if r.HasField("expires_at_us") else None))
            for r in response.records
        ]
        missing = self._missing(group, ids, [rid for rid, _ in found])
        return FastResponse(200, _JSON, batch_get_body(found, missing))

    def _missing(self, group: str, ids: list[str], found_ids: list[str]) -> list[str]:
        """The ids asked (canonical form, once each) that were not found."""
        found = set(found_ids)
        if len(found) == len(ids):
            return []
        schema = self._registry.schema(group)
        return [c for c in dict.fromkeys(normalize_record_id(schema, rid) for rid in ids)
                if c not in found]

    async def delete_record(self, req: FastRequest) -> FastResponse:
        group, record_id = req.params["group"], req.params["record_id"]
        mode = req.query_one("mode") or "soft"
        if mode not in ("soft", "hard"):
            raise InvalidRequestError(f"mode '{mode}' is not a deletion mode; allowed: soft, hard")
        message = pb.DeleteRecordRequest(
            feature_group_name=group, record_identifier=record_id,
            event_time=req.query_one("event_time") or "",
            deletion_mode=pb.DELETION_MODE_HARD_DELETE if mode == "hard"
            else pb.DELETION_MODE_SOFT_DELETE,
        ).SerializeToString()
        data = await self._service.delete_record(message)
        return _write_result(req, pb.DeleteRecordResponse, data)


def _absent(group: str, record_id: str) -> NotFoundError:
    return NotFoundError(f"record '{record_id}' of feature group '{group}' does not exist "
                         "(never written, deleted or expired)")


async def _answer(result: bytes | Awaitable[bytes]) -> bytes:
    return result if isinstance(result, bytes) else await result


def _write_result(
    req: FastRequest, kind: type[pb.PutRecordResponse] | type[pb.DeleteRecordResponse],
    data: bytes,
) -> FastResponse:
    if _wants_protobuf(req):
        return FastResponse(200, PROTOBUF, data)
    response = kind.FromString(data)
    return _json(WriteResult(response.applied, response.write_token))


def _decode_json(decode: Callable[[bytes], Any], body: bytes) -> Any:
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"malformed JSON body: {exc}") from None


def _decode_proto(kind: type[pb.PutRecordRequest], body: bytes, name: str) -> pb.PutRecordRequest:
    try:
        return kind.FromString(body)
    except DecodeError:
        raise InvalidRequestError(
            f"malformed request: the body is not a valid {name} message") from None


def register(router: FastRouter, app: FastAPI, service: FeatureStoreService,
             registry: Registry, store: OnlineStore) -> None:
    """Add the REST runtime's routes to `router` and its paths to `app`'s OpenAPI schema
    (`service`, `registry` and `store`: the gRPC servicer's)."""
    rest = RestRuntime(service, registry, store)
    handlers: list[tuple[str, str, Handler, bool]] = [
        ("GET", RECORD, rest.get_record, False),
        ("DELETE", RECORD, rest.delete_record, False),
        ("PUT", RECORDS, rest.put_record, True),
        ("POST", BATCH_GET, rest.batch_get_record, True),
    ]
    for method, template, handler, body in handlers:
        router.add(method, template, handler, errors=tessera_errors,
                   max_body_bytes=MAX_BODY_BYTES, body=body)
    _document(app)


def _document(app: FastAPI) -> None:
    """The routes in FastAPI's /openapi.json (the fast path answers them, FastAPI lists them)."""
    previous = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = previous()
        (bodies, components) = msgspec.json.schema_components(
            [PutRecordBody, BatchGetBody, RecordBody, WriteResult, BatchGetResult],
            ref_template="#/components/schemas/{name}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        put_body, batch_body, record, write, batch = bodies
        schema["paths"].update(_paths(put_body, batch_body, record, write, batch))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _paths(put_body: dict[str, Any], batch_body: dict[str, Any], record: dict[str, Any],
           write: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    def param(name: str, where: str, description: str, required: bool = True) -> dict[str, Any]:
        return {"name": name, "in": where, "required": required, "description": description,
                "schema": {"type": "string"}}

    def ok(body: dict[str, Any], proto: str) -> dict[str, Any]:
        return {"200": {"description": f"JSON, or {proto}'s bytes with Accept: "
                                       "application/x-protobuf",
                        "content": {"application/json": {"schema": body},
                                    "application/x-protobuf": {}}},
                "404": {"description": "unknown feature group" +
                                       (" or record" if proto == "GetRecordResponse" else "")},
                "413": {"description": f"body over {MAX_BODY_BYTES} bytes"},
                "422": {"description": "invalid request: Tessera's error body"}}

    group = param("group", "path", "the feature group")
    rid = param("record_id", "path", "the record identifier (percent-encoded)")
    tags = ["REST runtime"]
    return {
        RECORD: {
            "get": {"tags": tags, "operationId": "rest_get_record", "summary": "GetRecord",
                    "parameters": [group, rid,
                                   param("features", "query", "comma-separated feature names",
                                         False),
                                   param("consistent_after", "query",
                                         "a write_token: read that write or later", False)],
                    "responses": ok(record, "GetRecordResponse")},
            "delete": {"tags": tags, "operationId": "rest_delete_record",
                       "summary": "DeleteRecord",
                       "parameters": [group, rid,
                                      param("event_time", "query",
                                            "ISO-8601 UTC or epoch seconds"),
                                      param("mode", "query", "soft (default) or hard", False)],
                       "responses": ok(write, "DeleteRecordResponse")},
        },
        RECORDS: {
            "put": {"tags": tags, "operationId": "rest_put_record", "summary": "PutRecord",
                    "parameters": [group],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": put_body},
                        "application/x-protobuf": {"schema": {
                            "type": "string", "format": "binary",
                            "description": "a tessera.v1.PutRecordRequest"}}}},
                    "responses": ok(write, "PutRecordResponse")},
        },
        BATCH_GET: {
            "post": {"tags": tags, "operationId": "rest_batch_get_record",
                     "summary": "BatchGetRecord", "parameters": [group],
                     "requestBody": {"required": True,
                                     "content": {"application/json": {"schema": batch_body}}},
                     "responses": ok(batch, "BatchGetRecordResponse")},
        },
    }
