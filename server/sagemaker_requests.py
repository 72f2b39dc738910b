"""The SageMaker runtime's requests: their shapes as botocore's service model gives them (decoded
by msgspec; members Tessera does not know are ignored), the fields read from them, ListRecords'
NextToken, and the one mapping of errors onto the runtime's error shapes (server/
sagemaker_runtime.py serves them)."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from tessera.core.errors import (
    ConflictError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    TesseraError,
)
from tessera.core.schema import CompiledSchema, TtlDuration
from tessera.server.http_fast import FastRequest, FastResponse
from tessera.server.sagemaker_common import AwsError, validation_error
from tessera.server.sagemaker_values import FeatureValue
from tessera.server.storage_health import storage_failure

log = logging.getLogger(__name__)

TARGET_STORES = ("OnlineStore", "OfflineStore")
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


def decode(body: bytes, shape: type[_T]) -> _T:
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


def item_error(exc: BaseException) -> tuple[str, str]:
    err = runtime_error(exc)
    return err.code, err.message


# --- request fields ---------------------------------------------------------------------------


def required(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    if not values:
        raise validation_error(f"the query parameter {name} is required")
    return values[0]


def choice(value: str | None, field: str, allowed: Sequence[str], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise validation_error(
            f"{field} {value!r} is not valid; allowed: {', '.join(allowed)}"
        )
    return value


def with_expiry(value: str | None) -> bool:
    return choice(value, "ExpirationTimeResponse", ("Enabled", "Disabled"),
                   "Disabled") == "Enabled"


def ttl_s(ttl: TtlDurationShape | None, field: str) -> int | None:
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


def targets(values: list[str] | None) -> frozenset[str] | None:
    """TargetStores (None: the stores the group has)."""
    if values is None:
        return None
    if not values:
        raise validation_error("TargetStores must name at least one store: "
                               + " or ".join(TARGET_STORES))
    for v in values:
        choice(v, "TargetStores member", TARGET_STORES, "")
    return frozenset(values)


def next_token(group_id: int, after: str) -> str:
    raw = msgspec.msgpack.encode((group_id, after))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def resume_after(token: str, schema: CompiledSchema) -> str:
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
