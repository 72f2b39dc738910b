"""gRPC status -> TesseraError, in one place for the sync and the asyncio client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from tessera.client._security import ClientSecurity
from tessera.core.errors import (
    FeatureGroupNotFoundError,
    StorageError,
    TesseraError,
    error_for_grpc_code,
)


def status_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call (None for an RpcError that carries none)."""
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def error_from_rpc(
    exc: grpc.RpcError, feature_group_name: str | None = None,
    security: ClientSecurity | None = None,
) -> TesseraError:
    """The TesseraError for a failed call.

    `feature_group_name` is the one group a call is about (every RPC but BatchGetRecord): its
    NOT_FOUND can then only mean that group, so it becomes a FeatureGroupNotFoundError.
    `security`: the client's TLS, to say what a failed connection most likely means (a
    plaintext client at a TLS port, a certificate refused).
    """
    code = status_code(exc)
    code_name = code.name if code is not None else "UNKNOWN"
    details_fn = getattr(exc, "details", None)
    details = (details_fn() if callable(details_fn) else None) or code_name
    if code is grpc.StatusCode.NOT_FOUND and feature_group_name is not None:
        return FeatureGroupNotFoundError(feature_group_name)
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = (security or ClientSecurity()).connection_hint(details)
        if hint:
            return StorageError(details + hint)
    error = error_for_grpc_code(code_name, details)
    if type(error) is TesseraError:
        # DEADLINE_EXCEEDED, INTERNAL, ...: no class of its own, so the message names the code.
        error = TesseraError(f"{code_name}: {details}")
    return error


@contextmanager
def rpc_errors(
    feature_group_name: str | None = None, security: ClientSecurity | None = None
) -> Iterator[None]:
    """Raise the TesseraError of any grpc.RpcError leaving the block (works around `await`)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, feature_group_name, security) from exc
