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
  The merged record is a put like any other: the offline store gets it whole, and a group's
  aggregations count it as an event.
- ListRecords lists a group's online records in key order (the identifiers' text order); in a
  serving process of --workers N it reads the secondary, as GetRecord does (writes through
  another process show within the catch-up interval).
- BatchGetRecord and BatchWriteRecord report per-item failures in `Errors`; what a request
  holds past the limits (100 groups x 100 identifiers, as gRPC's BatchGetRecord) is returned in
  `UnprocessedIdentifiers`; write entries that could not be committed (a storage failure:
  nothing of them was written) in `UnprocessedEntries`, to send again.

Who may call (server/http_auth.py): with authentication on (`--auth`) the router verifies each
request's SigV4 signature (server/sigv4.py; the access key of `tessera keys create --sigv4`)
or bearer key; each operation then needs its permission on the group it names, once the name
or ARN is resolved: GetRecord, BatchGetRecord and ListRecords `read`; PutRecord, DeleteRecord,
UpdateRecord and BatchWriteRecord `write`. A refusal is AccessForbidden (403; 401 without
credentials); BatchGetRecord and BatchWriteRecord report a group the caller may not use as
per-item errors (AccessForbidden), never a failed call. Without authentication requests are
served signed or not, and their signatures are not checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import msgspec

from tessera.core import eventtime
from tessera.core.errors import (
    ConflictError,
    FeatureGroupNotFoundError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    TesseraError,
    UnauthenticatedError,
)
from tessera.core.keys import normalize_record_id, record_key
from tessera.core.records import validate_record
from tessera.core.schema import CompiledSchema, fold_name
from tessera.core.tokens import encode_token
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import http_auth
from tessera.server import sagemaker_requests as rq
from tessera.server.auth.permissions import LOCAL, Action
from tessera.server.grpc_service import MAX_BATCH_GROUPS, MAX_BATCH_IDS
from tessera.server.http_fast import JSON, FastRequest, FastResponse, FastRouter, json_response
from tessera.server.reads import OnlineReader
from tessera.server.registry import Registry
from tessera.server.sagemaker_common import AwsError, group_name, validation_error
from tessera.server.sagemaker_values import FeatureValue, record_json, to_record
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
_EMPTY_JSON = FastResponse(200, JSON, b"{}")
_T = TypeVar("_T")
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

    def _allowed(self, req: FastRequest, action: Action, name_or_arn: str) -> CompiledSchema:
        """`_schema(name_or_arn)` once the caller may do `action` on it (AccessForbidden
        otherwise; also for a group that does not exist, when the caller may not use the name
        it gave: a refused caller does not learn which groups exist)."""
        principal = req.principal
        if principal is LOCAL:  # authentication off: nothing to check
            return self._schema(name_or_arn)
        operation = f"{req.method} {req.route}"
        try:
            try:
                schema = self._schema(name_or_arn)
            except FeatureGroupNotFoundError:
                http_auth.require(principal, action, group_name(name_or_arn), operation)
                raise
            http_auth.require(principal, action, schema.group_name, operation)
        except PermissionDeniedError as exc:
            raise http_auth.aws_access_error(exc) from None
        return schema

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
        schema = self._allowed(req, Action.READ, req.params["FeatureGroupName"])
        query = req.query
        record_id = rq.required(query, "RecordIdentifierValueAsString")
        expiry = rq.with_expiry(req.query_one("ExpirationTimeResponse"))
        hit = self._reader.get_record(
            schema.group_name, record_id, query.get("FeatureName", ()), now_us())
        if hit is None:
            return _EMPTY_JSON
        payload, expires_at_us = hit
        body = b'{"Record":' + record_json(payload)
        if expiry and expires_at_us is not None:
            body += b',"ExpiresAt":"%s"' % eventtime.to_iso(expires_at_us).encode()
        return FastResponse(200, JSON, body + b"}")

    def batch_get_record(self, req: FastRequest) -> FastResponse:
        body = rq.decode(req.body, rq.BatchGetRecordShape)
        if not body.Identifiers:
            raise validation_error("Identifiers must hold at least one entry")
        expiry = rq.with_expiry(body.ExpirationTimeResponse)
        at_us = now_us()
        records: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        unprocessed: list[rq.BatchGetIdentifier] = []
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
                schema = self._allowed(req, Action.READ, name)
            except (TesseraError, AwsError) as exc:
                failed = [(rid, exc) for rid in ids]
            else:
                read = self._reader.batch_get_record(
                    schema.group_name, ids, entry.FeatureNames or (), at_us)
                failed = list(read.errors)
                for rid, (payload, expires_at_us) in read.found:
                    detail: dict[str, Any] = {"FeatureGroupName": name,
                                              "RecordIdentifierValueAsString": rid,
                                              "Record": msgspec.Raw(record_json(payload))}
                    if expiry and expires_at_us is not None:
                        detail["ExpiresAt"] = eventtime.to_iso(expires_at_us)
                    records.append(detail)
            for rid, cause in failed:
                code, message = rq.item_error(cause)
                errors.append({"FeatureGroupName": name, "RecordIdentifierValueAsString": rid,
                               "ErrorCode": code, "ErrorMessage": message})
        return json_response(200, {"Records": records, "Errors": errors,
                                   "UnprocessedIdentifiers": unprocessed})

    def list_records(self, req: FastRequest) -> FastResponse:
        schema = self._allowed(req, Action.READ, req.params["FeatureGroupName"])
        body = rq.decode(req.body, rq.ListRecordsShape)
        if not schema.online:
            raise no_online_store(schema)
        limit = MAX_LIST_RESULTS if body.MaxResults is None else body.MaxResults
        if not 1 <= limit <= MAX_LIST_RESULTS:
            raise validation_error(
                f"MaxResults {limit} is out of range; allowed: 1-{MAX_LIST_RESULTS}")
        after = None if body.NextToken is None else rq.resume_after(body.NextToken, schema)
        page = self._store.scan(schema.group_id, after, limit, now_us(),
                                bool(body.IncludeSoftDeletedRecords))
        out: dict[str, Any] = {"RecordIdentifiers": page.record_ids}
        if page.resume_after is not None:
            out["NextToken"] = rq.next_token(schema.group_id, page.resume_after)
        return json_response(200, out)

    # --- writes --------------------------------------------------------------------------------

    async def put_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        schema = self._allowed(req, Action.WRITE, req.params["FeatureGroupName"])
        body = rq.decode(req.body, rq.PutRecordShape)
        ttl_s = rq.ttl_s(body.TtlDuration, "TtlDuration")
        targets = rq.targets(body.TargetStores)
        schema, op = self._newest(schema, lambda s: self._put_op(
            s, body.Record, ttl_s, targets, api_us, "Record"))
        committed = await self._commit([op])
        count_writes(schema, committed.results)
        return FastResponse(200, JSON + _token_header(committed), b"")

    async def delete_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        schema = self._allowed(req, Action.WRITE, req.params["FeatureGroupName"])
        query = req.query
        record_id = normalize_record_id(schema, rq.required(query, "RecordIdentifierValueAsString"))
        event_time_us = eventtime.parse(rq.required(query, "EventTime"), "EventTime")
        mode = rq.choice(req.query_one("DeletionMode"), "DeletionMode",
                       ("SoftDelete", "HardDelete"), "SoftDelete")
        op = delete_op(schema, record_id, event_time_us, mode == "HardDelete", api_us)
        op = _targeted(schema, op, rq.targets(query.get("TargetStores")))
        committed = await self._commit([op])
        return FastResponse(200, JSON + _token_header(committed), b"")

    async def batch_write_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        body = rq.decode(req.body, rq.BatchWriteRecordShape)
        entries = body.Entries
        if not 1 <= len(entries) <= MAX_BATCH_WRITE_ENTRIES:
            raise validation_error(f"Entries holds {len(entries)} entries; allowed: "
                                   f"1-{MAX_BATCH_WRITE_ENTRIES}")
        errors: list[dict[str, Any]] = []
        ops: list[Op] = []
        placed: list[tuple[rq.BatchWriteEntry, CompiledSchema]] = []
        for i, entry in enumerate(entries):
            try:
                schema = self._allowed(req, Action.WRITE, entry.FeatureGroupName)
                ttl_s = rq.ttl_s(entry.TtlDuration or body.TtlDuration, f"Entries[{i}].TtlDuration")
                targets = rq.targets(entry.TargetStores)
                schema, op = self._newest(schema, partial(
                    self._put_op, values=entry.Record, ttl_s=ttl_s, targets=targets,
                    api_us=api_us, where=f"Entries[{i}].Record"))
            except (TesseraError, AwsError) as exc:
                code, message = rq.item_error(exc)
                errors.append({"Entry": entry, "ErrorCode": code, "ErrorMessage": message})
                continue
            ops.append(op)
            placed.append((entry, schema))
        unprocessed: list[rq.BatchWriteEntry] = []
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
                        code, message = rq.item_error(result)
                        errors.append({"Entry": entry, "ErrorCode": code,
                                       "ErrorMessage": message})
                    else:
                        count_writes(schema, [result])
        return json_response(200, {"Errors": errors, "UnprocessedEntries": unprocessed},
                             headers)

    async def update_record(self, req: FastRequest) -> FastResponse:
        api_us = now_us()
        schema = self._allowed(req, Action.WRITE, req.params["FeatureGroupName"])
        body = rq.decode(req.body, rq.UpdateRecordShape)
        if not schema.online:
            raise no_online_store(schema)
        if not 1 <= len(body.Features) <= MAX_UPDATE_FEATURES:
            raise validation_error(f"Features holds {len(body.Features)} features; allowed: "
                                   f"1-{MAX_UPDATE_FEATURES}")
        ttl_s = rq.ttl_s(body.TtlDuration, "TtlDuration")
        targets = rq.targets(body.TargetStores)
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


def runtime_errors(req: FastRequest, exc: Exception) -> FastResponse:
    """The runtime routes' error mapper: the router's refusals (no or bad credentials, a
    permission lacking) as AccessForbidden, the rest as sagemaker_requests maps them."""
    if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
        exc = http_auth.aws_access_error(exc)
    return rq.aws_errors(req, exc)


def register(router: FastRouter, runtime: SageMakerRuntime) -> None:
    """Answer the runtime's routes (botocore's request URIs) from `router` (who may call
    them: server/http_auth.py RULES, and `SageMakerRuntime._allowed`)."""
    add = partial(router.add, errors=runtime_errors)
    group = "/FeatureGroup/{FeatureGroupName}"
    add("GET", group, runtime.get_record)
    add("PUT", group, runtime.put_record)
    add("DELETE", group, runtime.delete_record)
    add("POST", group + "/Record", runtime.update_record)
    add("POST", group + "/ListRecords", runtime.list_records)
    add("POST", "/BatchGetRecord", runtime.batch_get_record)
    add("POST", "/BatchWriteRecord", runtime.batch_write_record)
