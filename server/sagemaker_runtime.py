"""The SageMaker Feature Store runtime API (`sagemaker-featurestore-runtime`, rest-json) on
Tessera's HTTP port: boto3 code runs unchanged against Tessera by changing `endpoint_url`.

    PUT    /FeatureGroup/{name}               PutRecord     (TargetStores, TtlDuration)
    GET    /FeatureGroup/{name}?Record...     GetRecord     (FeatureName, ExpirationTimeResponse)
    DELETE /FeatureGroup/{name}?Record...     DeleteRecord  (EventTime, DeletionMode, TargetStores)
    POST   /FeatureGroup/{name}/Record        UpdateRecord  (a partial update of 1-100 features)
    POST   /FeatureGroup/{name}/ListRecords   ListRecords   (NextToken, MaxResults, soft deleted)
    POST   /BatchGetRecord                    BatchGetRecord   (Errors, UnprocessedIdentifiers)
    POST   /BatchWriteRecord                  BatchWriteRecord (Errors, UnprocessedEntries)

It is the same store as the gRPC API, with the same semantics: reads are server/reads.py's,
writes server/writes.py's and core/records.py's validation; only the shapes differ (values as
text: server/sagemaker_values.py). A group is named by name or by the ARN Tessera returns
(whose name is lower case: looked up without regard to case). Errors leave in AWS's shape
through one mapping (`runtime_error`): ValidationError 400, ResourceNotFound 404,
ConflictException 409, ServiceUnavailable 503, InternalFailure 500. Every write's response
carries Tessera's read-your-writes token in `x-tessera-write-token` (boto3 shows it in
`ResponseMetadata.HTTPHeaders`), for a read through Tessera's own APIs.

Semantics where SageMaker leaves a choice:
- GetRecord of a record that does not exist (or was deleted, or expired) answers 200 with no
  `Record`, as SageMaker does; an unknown group is ResourceNotFound.
- UpdateRecord reads the record, merges the given features over it and writes the result as a
  put conditional on the record read (`PutOp.if_match`): a concurrent write in between makes
  the writer refuse it, and the update reads again (at most MAX_UPDATE_ATTEMPTS times), so
  concurrent updates never lose each other's features. The features must include the event
  time feature; one older than the stored record's is a ConflictException.
- ListRecords lists a group's online records in key order (the identifiers' text order).
- BatchGetRecord and BatchWriteRecord report per-item failures in `Errors`; what a request
  holds past the limits (100 groups x 100 identifiers, as gRPC's BatchGetRecord) is returned in
  `UnprocessedIdentifiers`; write entries that could not be committed (a storage failure:
  nothing of them was written) in `UnprocessedEntries`, to send again.

Requests arrive SigV4-signed; they are accepted without checking the signature for now
(server/sigv4.py verifies one, for when authentication is switched on).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import msgspec

from tessera.core import eventtime
from tessera.core.errors import (
    ConflictError,
    DeadlineExceededError,
    FeatureGroupNotFoundError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    TesseraError,
)
from tessera.core.keys import normalize_record_id, record_key
from tessera.core.records import validate_record
from tessera.core.schema import CompiledSchema, TtlDuration, fold_name
from tessera.core.tokens import encode_token
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.grpc_service import MAX_BATCH_GROUPS, MAX_BATCH_IDS
from tessera.server.http_fast import JSON, FastRequest, FastResponse, FastRouter, json_response
from tessera.server.reads import OnlineReader
from tessera.server.registry import Registry
from tessera.server.sagemaker_common import AwsError, group_name, validation_error
from tessera.server.sagemaker_values import FeatureValue, from_record, to_record
from tessera.server.storage_health import storage_failure
from tessera.server.store import (
    Committed,
    DeleteOp,
    OnlineStore,
    Op,
    PutOp,
    StaleReadError,
    now_us,
    payload_digest,
)
from tessera.server.writes import count_writes, delete_op, no_online_store, put_op

log = logging.getLogger(__name__)

#: BatchWriteRecord's limit (the service model's): entries per request.
MAX_BATCH_WRITE_ENTRIES = 25
#: UpdateRecord's limit: features per update.
MAX_UPDATE_FEATURES = 100
#: How often an UpdateRecord reads again after a concurrent write beat it.
MAX_UPDATE_ATTEMPTS = 8
#: ListRecords' page size when MaxResults is not given (and its largest).
MAX_LIST_RESULTS = 100
#: The response header carrying a write's read-your-writes token (core/tokens.py).
WRITE_TOKEN_HEADER = b"x-tessera-write-token"
TARGET_STORES = ("OnlineStore", "OfflineStore")

_EMPTY_JSON = FastResponse(200, JSON, b"{}")
_T = TypeVar("_T")


# --- request shapes (botocore's service model; unknown members are ignored) -------------------


class TtlDurationShape(msgspec.Struct):
    Unit: str
    Value: int


class PutRecordShape(msgspec.Struct):
    Record: list[FeatureValue]
    TargetStores: list[str] | None = None
    TtlDuration: TtlDurationShape | None = None


class UpdateRecordShape(msgspec.Struct):
    RecordIdentifierValueAsString: str
    Features: list[FeatureValue]
    TargetStores: list[str] | None = None
    TtlDuration: TtlDurationShape | None = None


class BatchGetIdentifier(msgspec.Struct, omit_defaults=True):
    FeatureGroupName: str
    RecordIdentifiersValueAsString: list[str]
    FeatureNames: list[str] | None = None


class BatchGetRecordShape(msgspec.Struct):
    Identifiers: list[BatchGetIdentifier]
    ExpirationTimeResponse: str | None = None


class BatchWriteEntry(msgspec.Struct, omit_defaults=True):
    FeatureGroupName: str
    Record: list[FeatureValue]
    TargetStores: list[str] | None = None
    TtlDuration: TtlDurationShape | None = None


class BatchWriteRecordShape(msgspec.Struct):
    Entries: list[BatchWriteEntry]
    TtlDuration: TtlDurationShape | None = None


class ListRecordsShape(msgspec.Struct):
    MaxResults: int | None = None
    NextToken: str | None = None
    IncludeSoftDeletedRecords: bool | None = None


_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def _decode(body: bytes, shape: type[_T]) -> _T:
    decoder = _DECODERS.get(shape)
    if decoder is None:
        decoder = _DECODERS[shape] = msgspec.json.Decoder(shape)
    try:
        return decoder.decode(body or b"{}")  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise validation_error(f"invalid {shape.__name__.removesuffix('Shape')} request: "
                               f"{exc}") from None


# --- errors -----------------------------------------------------------------------------------


def runtime_error(exc: BaseException) -> AwsError:
    """The one mapping of an error onto the runtime's error shapes. A TesseraError by its class
    (core/errors.py); anything else is logged with a request id and answered InternalFailure
    (ServiceUnavailable for a disk or I/O failure: retryable)."""
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, TesseraError):
        if isinstance(exc, NotFoundError):
            return AwsError("ResourceNotFound", exc.message, 404)
        if isinstance(exc, PreconditionFailedError):  # no online store, a quarantined group
            return AwsError("ValidationError", exc.message, 400)
        if isinstance(exc, ConflictError):
            return AwsError("ConflictException", exc.message, 409)
        if isinstance(exc, InvalidRequestError):  # a body over the limit keeps its 413
            return AwsError("ValidationError", exc.message,
                            413 if exc.http_status == 413 else 400)
        if isinstance(exc, StorageError | DeadlineExceededError):
            return AwsError("ServiceUnavailable", exc.message, 503)
        return AwsError("InternalFailure", exc.message, 500)
    request_id = uuid.uuid4().hex[:16]
    log.error("SageMaker runtime request failed (request id %s)", request_id, exc_info=exc)
    if storage_failure(exc):
        return AwsError("ServiceUnavailable",
                        f"storage unavailable; retry later; request id {request_id}", 503)
    return AwsError("InternalFailure", f"internal error; request id {request_id}", 500)


def aws_errors(req: FastRequest, exc: Exception) -> FastResponse:
    """The fast router's error mapper for the runtime's routes."""
    err = runtime_error(exc)
    return FastResponse(err.status, err.headers(), err.body())


def _item_error(exc: BaseException) -> tuple[str, str]:
    err = runtime_error(exc)
    return err.code, err.message


# --- request fields ---------------------------------------------------------------------------


def _required(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    if not values:
        raise validation_error(f"the query parameter {name} is required")
    return values[0]


def _choice(value: str | None, field: str, allowed: Sequence[str], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise validation_error(
            f"{field} {value!r} is not valid; allowed: {', '.join(allowed)}"
        )
    return value


def _with_expiry(value: str | None) -> bool:
    return _choice(value, "ExpirationTimeResponse", ("Enabled", "Disabled"),
                   "Disabled") == "Enabled"


def _ttl_s(ttl: TtlDurationShape | None, field: str) -> int | None:
    """A TtlDuration in seconds (None: the group's default TTL applies)."""
    if ttl is None:
        return None
    try:
        duration = TtlDuration(unit=ttl.Unit, value=ttl.Value)
    except ValueError:
        raise validation_error(
            f"{field} {{Unit: {ttl.Unit!r}, Value: {ttl.Value}}} is not valid; Unit is one of "
            "Seconds, Minutes, Hours, Days, Weeks and Value a whole number >= 1"
        ) from None
    duration.check(field)
    return duration.seconds


def _targets(values: list[str] | None) -> frozenset[str] | None:
    """TargetStores (None: the stores the group has)."""
    if values is None:
        return None
    if not values:
        raise validation_error("TargetStores must name at least one store: "
                               + " or ".join(TARGET_STORES))
    for v in values:
        _choice(v, "TargetStores member", TARGET_STORES, "")
    return frozenset(values)


_OpT = TypeVar("_OpT", PutOp, DeleteOp)


def _targeted(schema: CompiledSchema, op: _OpT, targets: frozenset[str] | None) -> _OpT:
    """`op` restricted to the TargetStores (each must be a store the group has)."""
    if targets is None:
        return op
    online, offline = "OnlineStore" in targets, "OfflineStore" in targets
    if online and not schema.online:
        raise validation_error(f"TargetStores names OnlineStore; feature group "
                               f"'{schema.group_name}' has no online store")
    if offline and not schema.offline:
        raise validation_error(f"TargetStores names OfflineStore; feature group "
                               f"'{schema.group_name}' has no offline store")
    return replace(op, online=online, history=op.history if offline else None)


def _token_header(committed: Committed) -> list[tuple[bytes, bytes]]:
    return [(WRITE_TOKEN_HEADER, encode_token(committed.seq).encode())]


def _next_token(group_id: int, after: str) -> str:
    raw = msgspec.msgpack.encode((group_id, after))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _resume_after(token: str, schema: CompiledSchema) -> str:
    try:
        group_id, after = msgspec.msgpack.decode(
            base64.urlsafe_b64decode(token.encode("ascii")), type=tuple[int, str])
    except (UnicodeEncodeError, binascii.Error, ValueError, msgspec.DecodeError):
        raise validation_error(
            f"NextToken {token[:40]!r} is not a token of ListRecords: pass back the NextToken "
            "of the previous page as it was received"
        ) from None
    if group_id != schema.group_id:
        raise validation_error(
            f"NextToken was issued for another feature group than '{schema.group_name}' (or "
            "for one deleted since); start again without it"
        )
    return str(after)


# --- the runtime ------------------------------------------------------------------------------


class SageMakerRuntime:
    """The runtime operations over a registry and an online store (see the module docstring).
    Handlers take the fast router's request and return its response; errors raise, and
    `aws_errors` answers them."""

    def __init__(self, registry: Registry, store: OnlineStore) -> None:
        self._registry = registry
        self._store = store
        self._reader = OnlineReader(registry, store)

    def _schema(self, name_or_arn: str) -> CompiledSchema:
        """The group a "name or ARN" names; an ARN's lower-case name matches the group without
        regard to case (names are unique that way)."""
        name = group_name(name_or_arn)
        schema = self._registry.find_schema(name)
        if schema is not None:
            return schema
        try:
            return self._registry.schema(name)  # a serving process catches up on a miss
        except FeatureGroupNotFoundError:
            folded = fold_name(name)
            for group in self._registry.list():
                if fold_name(group.name) == folded:
                    return self._registry.schema(group.name)
            raise

    def _newest(
        self, schema: CompiledSchema, build: Callable[[CompiledSchema], _T]
    ) -> tuple[CompiledSchema, _T]:
        """`build(schema)`; refused (a feature the schema does not know), again with a newer
        schema of the group if the registry has one (a serving process may be behind)."""
        try:
            return schema, build(schema)
        except InvalidRequestError:
            newer = self._registry.newer_schema(schema)
            if newer is None:
                raise
        return newer, build(newer)

    async def _commit(self, ops: list[Op]) -> Committed:
        committed = await asyncio.wrap_future(self._store.submit(ops))
        for r in committed.results:
            if isinstance(r, TesseraError):
                raise r
        return committed

    @staticmethod
    def _put_op(
        schema: CompiledSchema, values: list[FeatureValue], ttl_s: int | None,
        targets: frozenset[str] | None, api_us: int, where: str,
    ) -> PutOp:
        record = validate_record(schema, to_record(schema, values, where), ttl_s, where)
        return _targeted(schema, put_op(schema, record, api_us, ""), targets)

    # --- reads ---------------------------------------------------------------------------------

    def get_record(self, req: FastRequest) -> FastResponse:
        schema = self._schema(req.params["FeatureGroupName"])
        query = req.query
        record_id = _required(query, "RecordIdentifierValueAsString")
        with_expiry = _with_expiry(req.query_one("ExpirationTimeResponse"))
        hit = self._reader.get_record(
            schema.group_name, record_id, query.get("FeatureName", ()), now_us())
        if hit is None:
            return _EMPTY_JSON
        payload, expires_at_us = hit
        out: dict[str, Any] = {"Record": from_record(payload)}
        if with_expiry and expires_at_us is not None:
            out["ExpiresAt"] = eventtime.to_iso(expires_at_us)
        return json_response(200, out)

    def batch_get_record(self, req: FastRequest) -> FastResponse:
        body = _decode(req.body, BatchGetRecordShape)
        if not body.Identifiers:
            raise validation_error("Identifiers must hold at least one entry")
        with_expiry = _with_expiry(body.ExpirationTimeResponse)
        at_us = now_us()
        records: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        unprocessed: list[BatchGetIdentifier] = []
        for n, entry in enumerate(body.Identifiers):
            name, ids = entry.FeatureGroupName, entry.RecordIdentifiersValueAsString
            if n >= MAX_BATCH_GROUPS:
                unprocessed.append(entry)
                continue
            if len(ids) > MAX_BATCH_IDS:
                rest = ids[MAX_BATCH_IDS:]
                unprocessed.append(
                    msgspec.structs.replace(entry, RecordIdentifiersValueAsString=rest))
                ids = ids[:MAX_BATCH_IDS]
            failed: list[tuple[str, BaseException]]
            try:
                schema = self._schema(name)
            except (TesseraError, AwsError) as exc:
                failed = [(rid, exc) for rid in ids]
            else:
                read = self._reader.batch_get_record(
                    schema.group_name, ids, entry.FeatureNames or (), at_us)
                failed = list(read.errors)
                for rid, (payload, expires_at_us) in read.found:
                    detail: dict[str, Any] = {"FeatureGroupName": name,
                                              "RecordIdentifierValueAsString": rid,
                                              "Record": from_record(payload)}
                    if with_expiry and expires_at_us is not None:
                        detail["ExpiresAt"] = eventtime.to_iso(expires_at_us)
                    records.append(detail)
            for rid, cause in failed:
                code, message = _item_error(cause)
                errors.append({"FeatureGroupName": name, "RecordIdentifierValueAsString": rid,
                               "ErrorCode": code, "ErrorMessage": message})
        return json_response(200, {"Records": records, "Errors": errors,
                                   "UnprocessedIdentifiers": unprocessed})

    def list_records(self, req: FastRequest) -> FastResponse:
        body = _decode(req.body, ListRecordsShape)
        schema = self._schema(req.params["FeatureGroupName"])
        if not schema.online:
            raise no_online_store(schema)
        limit = MAX_LIST_RESULTS if body.MaxResults is None else body.MaxResults
        if not 1 <= limit <= MAX_LIST_RESULTS:
            raise validation_error(
                f"MaxResults {limit} is out of range; allowed: 1-{MAX_LIST_RESULTS}")
        after = None if body.NextToken is None else _resume_after(body.NextToken, schema)
        page = self._store.scan(schema.group_id, after, limit, now_us(),
                                bool(body.IncludeSoftDeletedRecords))
        out: dict[str, Any] = {"RecordIdentifiers": page.record_ids}
        if page.resume_after is not None:
            out["NextToken"] = _next_token(schema.group_id, page.resume_after)
        return json_response(200, out)

    # --- writes --------------------------------------------------------------------------------

    async def put_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        body = _decode(req.body, PutRecordShape)
        schema = self._schema(req.params["FeatureGroupName"])
        ttl_s = _ttl_s(body.TtlDuration, "TtlDuration")
        targets = _targets(body.TargetStores)
        schema, op = self._newest(schema, lambda s: self._put_op(
            s, body.Record, ttl_s, targets, api_us, "Record"))
        committed = await self._commit([op])
        count_writes(schema, committed.results)
        return FastResponse(200, JSON + _token_header(committed), b"")

    async def delete_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        schema = self._schema(req.params["FeatureGroupName"])
        query = req.query
        record_id = normalize_record_id(schema, _required(query, "RecordIdentifierValueAsString"))
        event_time_us = eventtime.parse(_required(query, "EventTime"), "EventTime")
        mode = _choice(req.query_one("DeletionMode"), "DeletionMode",
                       ("SoftDelete", "HardDelete"), "SoftDelete")
        op = delete_op(schema, record_id, event_time_us, mode == "HardDelete", api_us)
        committed = await self._commit([_targeted(schema, op, _targets(query.get("TargetStores")))])
        return FastResponse(200, JSON + _token_header(committed), b"")

    async def batch_write_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        body = _decode(req.body, BatchWriteRecordShape)
        entries = body.Entries
        if not 1 <= len(entries) <= MAX_BATCH_WRITE_ENTRIES:
            raise validation_error(f"Entries holds {len(entries)} entries; allowed: "
                                   f"1-{MAX_BATCH_WRITE_ENTRIES}")
        errors: list[dict[str, Any]] = []
        ops: list[Op] = []
        placed: list[tuple[BatchWriteEntry, CompiledSchema]] = []
        for i, entry in enumerate(entries):
            try:
                schema = self._schema(entry.FeatureGroupName)
                ttl_s = _ttl_s(entry.TtlDuration or body.TtlDuration, f"Entries[{i}].TtlDuration")
                targets = _targets(entry.TargetStores)
                schema, op = self._newest(schema, partial(
                    self._put_op, values=entry.Record, ttl_s=ttl_s, targets=targets,
                    api_us=api_us, where=f"Entries[{i}].Record"))
            except (TesseraError, AwsError) as exc:
                code, message = _item_error(exc)
                errors.append({"Entry": entry, "ErrorCode": code, "ErrorMessage": message})
                continue
            ops.append(op)
            placed.append((entry, schema))
        unprocessed: list[BatchWriteEntry] = []
        headers: list[tuple[bytes, bytes]] = []
        if ops:
            try:
                committed = await asyncio.wrap_future(self._store.submit(ops))
            except StorageError:  # nothing of them was written: the client sends them again
                unprocessed = [entry for entry, _ in placed]
            else:
                headers = _token_header(committed)
                for (entry, schema), result in zip(placed, committed.results, strict=True):
                    if isinstance(result, TesseraError):
                        code, message = _item_error(result)
                        errors.append({"Entry": entry, "ErrorCode": code,
                                       "ErrorMessage": message})
                    else:
                        count_writes(schema, [result])
        return json_response(200, {"Errors": errors, "UnprocessedEntries": unprocessed},
                             headers)

    async def update_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        body = _decode(req.body, UpdateRecordShape)
        schema = self._schema(req.params["FeatureGroupName"])
        if not schema.online:
            raise no_online_store(schema)
        if not 1 <= len(body.Features) <= MAX_UPDATE_FEATURES:
            raise validation_error(f"Features holds {len(body.Features)} features; allowed: "
                                   f"1-{MAX_UPDATE_FEATURES}")
        ttl_s = _ttl_s(body.TtlDuration, "TtlDuration")
        targets = _targets(body.TargetStores)
        record_id = normalize_record_id(schema, body.RecordIdentifierValueAsString)
        key = record_key(schema.group_id, record_id)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            hit = self._store.get(key, now_us())
            if hit is None:
                raise NotFoundError(
                    f"record '{record_id}' of feature group '{schema.group_name}' does not "
                    "exist (or was deleted, or expired): UpdateRecord changes a stored record; "
                    "PutRecord writes a new one"
                )
            schema, op = self._newest(schema, partial(
                self._merged, record_id=record_id, stored=hit[0], features=body.Features,
                ttl_s=ttl_s, targets=targets, api_us=api_us))
            committed = await asyncio.wrap_future(self._store.submit([op]))
            (result,) = committed.results
            if isinstance(result, StaleReadError):  # a write came between: read it, again
                if self._store.visible_seq() < committed.seq:
                    await asyncio.to_thread(self._store.wait_visible, committed.seq, 5.0)
                continue
            if isinstance(result, TesseraError):
                raise result
            count_writes(schema, [result])
            return FastResponse(200, JSON + _token_header(committed), b"")
        raise ConflictError(
            f"record '{record_id}' changed {MAX_UPDATE_ATTEMPTS} times while this update was "
            "merging into it (concurrent writes); retry"
        )

    @staticmethod
    def _merged(
        schema: CompiledSchema, record_id: str, stored: memoryview,
        features: list[FeatureValue], ttl_s: int | None, targets: frozenset[str] | None,
        api_us: int,
    ) -> PutOp:
        """The put of `features` merged over the stored record, conditional on it."""
        given = to_record(schema, features, "Features")
        names = {fv.feature_name for fv in given.features}
        et_name = schema.event_time.name
        if et_name not in names:
            raise InvalidRequestError(
                f"Features must include the event time feature '{et_name}': an update is "
                "ordered by it like a put"
            )
        old = pb.Record.FromString(bytes(stored))
        merged = pb.Record()
        merged.features.extend(fv for fv in old.features if fv.feature_name not in names)
        merged.features.extend(given.features)
        rec = validate_record(schema, merged, ttl_s, "Features")
        if rec.record_id != record_id:
            raise InvalidRequestError(
                f"Features gives the record identifier '{schema.record_identifier.name}' as "
                f"'{rec.record_id}', not RecordIdentifierValueAsString '{record_id}'"
            )
        stored_us = _event_time_us(schema, old)
        if rec.event_time_us < stored_us:
            raise ConflictError(
                f"EventTime {eventtime.to_iso(rec.event_time_us)} is older than the stored "
                f"record's {eventtime.to_iso(stored_us)}; an update must not go back in time"
            )
        op = _targeted(schema, put_op(schema, rec, api_us, ""), targets)
        return replace(op, if_match=payload_digest(stored))


def _event_time_us(schema: CompiledSchema, record: pb.Record) -> int:
    """The event time of a stored (valid) record."""
    spec = schema.event_time
    for fv in record.features:
        if fv.feature_name == spec.name:
            if spec.oneof == "float_value":
                return eventtime.from_epoch_s(fv.float_value, spec.name)
            return eventtime.from_iso(fv.string_value, spec.name)
    raise StorageError(f"the stored record has no event time feature '{spec.name}'")


def register(router: FastRouter, runtime: SageMakerRuntime) -> None:
    """Answer the runtime's routes (botocore's request URIs) from `router`."""
    add = partial(router.add, errors=aws_errors)
    group = "/FeatureGroup/{FeatureGroupName}"
    add("GET", group, runtime.get_record)
    add("PUT", group, runtime.put_record)
    add("DELETE", group, runtime.delete_record)
    add("POST", group + "/Record", runtime.update_record)
    add("POST", group + "/ListRecords", runtime.list_records)
    add("POST", "/BatchGetRecord", runtime.batch_get_record)
    add("POST", "/BatchWriteRecord", runtime.batch_write_record)
