"""The error classes of Tessera, shared by the server (which maps them to gRPC / HTTP status codes
in one place each) and the client (which raises them from those status codes)."""

from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error Tessera raises on purpose."""

    #: gRPC status code name and HTTP status this error maps to at the edges.
    grpc_code = "INTERNAL"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(TesseraError):
    """The request is malformed or violates the schema: INVALID_ARGUMENT / HTTP 422."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 422


class NotFoundError(TesseraError):
    """A named thing does not exist: NOT_FOUND / HTTP 404."""

    grpc_code = "NOT_FOUND"
    http_status = 404


class FeatureGroupNotFoundError(NotFoundError):
    """The feature group does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"feature group '{name}' does not exist")
        self.feature_group_name = name


class ConflictError(TesseraError):
    """The request conflicts with the current state: ALREADY_EXISTS / HTTP 409."""

    grpc_code = "ALREADY_EXISTS"
    http_status = 409


class PreconditionFailedError(ConflictError):
    """The request is valid but the stored state refuses it: FAILED_PRECONDITION / HTTP 409."""

    grpc_code = "FAILED_PRECONDITION"


class StorageError(TesseraError):
    """The store cannot serve the request now; retrying later may succeed: UNAVAILABLE / 503."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


class DeadlineExceededError(TesseraError):
    """A call did not complete within its deadline, retries included (raised by the client):
    DEADLINE_EXCEEDED / HTTP 504."""

    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class SerializationError(TesseraError):
    """A message cannot be decoded (ingest: dead-letter it and keep consuming)."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 422


class UnauthenticatedError(TesseraError):
    """No credentials, or credentials Tessera does not accept (unknown, revoked or expired key,
    bad signature): UNAUTHENTICATED / HTTP 401. `reason` is the metric label
    (tessera_auth_failures_total{reason})."""

    grpc_code = "UNAUTHENTICATED"
    http_status = 401

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDeniedError(TesseraError):
    """Valid credentials without the permission a call needs (the message names the
    permission and the feature group): PERMISSION_DENIED / HTTP 403."""

    grpc_code = "PERMISSION_DENIED"
    http_status = 403


_BY_GRPC_CODE: dict[str, type[TesseraError]] = {
    "UNAUTHENTICATED": UnauthenticatedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "INVALID_ARGUMENT": InvalidRequestError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": ConflictError,
    "FAILED_PRECONDITION": PreconditionFailedError,
    "UNAVAILABLE": StorageError,
}


def error_for_grpc_code(code_name: str, message: str) -> TesseraError:
    """The error a client raises for a gRPC status (by its code name, e.g. 'NOT_FOUND')."""
    cls = _BY_GRPC_CODE.get(code_name, TesseraError)
    return cls(message)


def error_for_http_status(status: int, message: str) -> TesseraError:
    """The error a client raises for an HTTP error status from the control plane."""
    if status in (400, 422):
        return InvalidRequestError(message)
    if status == 401:
        return UnauthenticatedError(message)
    if status == 403:
        return PermissionDeniedError(message)
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status in (502, 503, 504):
        return StorageError(message)
    return TesseraError(f"HTTP {status}: {message}")
