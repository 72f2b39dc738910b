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

Every route is the gRPC RPC of the same name, through the same `FeatureStoreService`: the
request is turned into the RPC's request message and the RPC's response bytes into JSON, so
validation, newer-schema retries, read-your-writes (`consistent_after`: the `write_token` of a
write, through whichever serving process) and the store are the gRPC API's. Errors are
Tessera's HTTP error body with the status of the error class (http_fast.tessera_errors); a
malformed body is 422 and a body over MAX_BODY_BYTES 413.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
from fastapi import FastAPI
from google.protobuf.message import DecodeError

from tessera.core import eventtime
from tessera.core.errors import InvalidRequestError, NotFoundError, error_for_grpc_code
from tessera.core.keys import normalize_record_id
from tessera.core.values import fill_value
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.grpc_service import MAX_BATCH_IDS, FeatureStoreService
from tessera.server.http_fast import (
    PROTOBUF,
    FastRequest,
    FastResponse,
    FastRouter,
    tessera_errors,
)
from tessera.server.registry import Registry

#: The largest request body the REST runtime takes (a record of large vectors fits).
MAX_BODY_BYTES = 4 * 1024 * 1024

RECORD = "/v1/feature-groups/{group}/records/{record_id}"
RECORDS = "/v1/feature-groups/{group}/records"
BATCH_GET = "/v1/feature-groups/{group}/records:batchGet"

_PROTOBUF = b"application/x-protobuf"
_LISTS = ("int_list", "float_list", "string_list")


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


class RecordBody(msgspec.Struct):
    record: dict[str, Any]
    expires_at: str | None


class WriteResult(msgspec.Struct):
    """`applied` is false when the stored record has a newer event time; `write_token` makes a
    later read see this write (`consistent_after`)."""

    applied: bool
    write_token: str


class BatchRecord(msgspec.Struct):
    record_id: str
    record: dict[str, Any]
    expires_at: str | None


class BatchGetResult(msgspec.Struct):
    """The records found, in the order asked, and the ids not found (canonical form)."""

    records: list[BatchRecord]
    missing: list[str]


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


def record_json(record: pb.Record) -> dict[str, Any]:
    """A stored record as JSON values (the SDK's types; vectors as lists of float32 values)."""
    out: dict[str, Any] = {}
    for fv in record.features:
        kind = fv.WhichOneof("value")
        if kind is None:
            continue
        if kind == "vector_value":
            out[fv.feature_name] = np.frombuffer(fv.vector_value, dtype="<f4").tolist()
        elif kind in _LISTS:
            out[fv.feature_name] = list(getattr(fv, kind).values)
        else:
            out[fv.feature_name] = getattr(fv, kind)
    return out


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


def _iso(expires_at_us: int | None) -> str | None:
    return None if expires_at_us is None else eventtime.to_iso(expires_at_us)


# --- the routes --------------------------------------------------------------------------------


class RestRuntime:
    """The route handlers over the gRPC servicer's `FeatureStoreService` and registry."""

    def __init__(self, service: FeatureStoreService, registry: Registry) -> None:
        self._service, self._registry = service, registry

    async def get_record(self, req: FastRequest) -> FastResponse:
        group, record_id = req.params["group"], req.params["record_id"]
        features: list[str] = []
        for value in req.query.get("features", ()) if req.query_string else ():
            features.extend(f for f in value.split(",") if f)
        message = pb.GetRecordRequest(
            feature_group_name=group, record_identifier=record_id, feature_names=features,
            expiration_time_response=True,
            consistent_after=req.query_one("consistent_after") or "",
        ).SerializeToString()
        data = await _answer(self._service.get_record(message))
        if not data:
            raise NotFoundError(
                f"record '{record_id}' of feature group '{group}' does not exist (never "
                "written, deleted or expired)")
        if _wants_protobuf(req):
            return FastResponse(200, PROTOBUF, data)
        response = pb.GetRecordResponse.FromString(data)
        expires = response.expires_at_us if response.HasField("expires_at_us") else None
        return _json(RecordBody(record_json(response.record), _iso(expires)))

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

    async def batch_get_record(self, req: FastRequest) -> FastResponse:
        group = req.params["group"]
        body = _decode_json(_decode_batch, req.body)
        ids = [str(rid) for rid in body.record_ids]
        if len(ids) > MAX_BATCH_IDS:
            raise InvalidRequestError(
                f"record_ids has {len(ids)} ids; at most {MAX_BATCH_IDS} per request")
        message = pb.BatchGetRecordRequest(
            identifiers=[pb.BatchGetRecordIdentifier(
                feature_group_name=group, record_identifiers=ids, feature_names=body.features)],
            expiration_time_response=True, consistent_after=body.consistent_after,
        ).SerializeToString()
        data = await _answer(self._service.batch_get_record(message))
        response = pb.BatchGetRecordResponse.FromString(data)
        if response.errors:  # the group, a feature or an id is refused: the request is
            first = response.errors[0]
            raise error_for_grpc_code(first.error_code, first.error_message)
        if _wants_protobuf(req):
            return FastResponse(200, PROTOBUF, data)
        records = [
            BatchRecord(r.record_identifier, record_json(r.record),
                        _iso(r.expires_at_us if r.HasField("expires_at_us") else None))
            for r in response.records
        ]
        found = {r.record_id for r in records}
        schema = self._registry.schema(group)
        missing = [c for c in dict.fromkeys(normalize_record_id(schema, rid) for rid in ids)
                   if c not in found]
        return _json(BatchGetResult(records, missing))

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
             registry: Registry) -> None:
    """Add the REST runtime's routes to `router` and its paths to `app`'s OpenAPI schema."""
    rest = RestRuntime(service, registry)
    for method, template, handler in (
        ("GET", RECORD, rest.get_record),
        ("DELETE", RECORD, rest.delete_record),
        ("PUT", RECORDS, rest.put_record),
        ("POST", BATCH_GET, rest.batch_get_record),
    ):
        router.add(method, template, handler, errors=tessera_errors,
                   max_body_bytes=MAX_BODY_BYTES)
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
