"""tessera.client: the Python SDK of Tessera.

`FeatureStoreClient` (blocking) and `AsyncFeatureStoreClient` (asyncio) write and read records
over gRPC and manage feature groups over HTTP; failures raise the TesseraError classes below.

    from tessera.client import FeatureStoreClient
    with FeatureStoreClient(grpc="127.0.0.1:50051", http="http://127.0.0.1:8080") as fs:
        fs.put_record("users", {"user_id": "u1", "ts": 1700000000.0, "clicks": 3})
        fs.get_record("users", "u1")

Against a secured server (README: Security): `api_key=` (default $TESSERA_API_KEY) and
`tls_ca=` (the CA bundle; `tls_cert=`/`tls_key=` for mutual TLS), e.g.
`FeatureStoreClient(grpc="tessera.internal:50051", tls_ca="ca.pem", api_key=key)`; a call without
valid credentials raises UnauthenticatedError, one without the permission PermissionDeniedError.
"""

from tessera.client._batch import BatchGetResult
from tessera.client._retry import RetryPolicy
from tessera.client.aio import AsyncFeatureStoreClient
from tessera.client.offline import Dataset, OfflineStore
from tessera.client.sync import FeatureStoreClient
from tessera.core.errors import (
    ConflictError,
    DeadlineExceededError,
    FeatureGroupNotFoundError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    SerializationError,
    StorageError,
    TesseraError,
    UnauthenticatedError,
)

__all__ = [
    "AsyncFeatureStoreClient",
    "BatchGetResult",
    "ConflictError",
    "Dataset",
    "DeadlineExceededError",
    "FeatureGroupNotFoundError",
    "FeatureStoreClient",
    "InvalidRequestError",
    "NotFoundError",
    "OfflineStore",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RetryPolicy",
    "SerializationError",
    "StorageError",
    "TesseraError",
    "UnauthenticatedError",
]
