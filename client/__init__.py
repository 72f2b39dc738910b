"""tessera.client: the Python SDK of Tessera.

`FeatureStoreClient` (blocking) and `AsyncFeatureStoreClient` (asyncio) write and read records
over gRPC and manage feature groups over HTTP; failures raise the TesseraError classes below.

    from tessera.client import FeatureStoreClient
    with FeatureStoreClient(grpc="127.0.0.1:50051", http="http://127.0.0.1:8080") as fs:
        fs.put_record("users", {"user_id": "u1", "ts": 1700000000.0, "clicks": 3})
        fs.get_record("users", "u1")
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
    PreconditionFailedError,
    SerializationError,
    StorageError,
    TesseraError,
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
    "PreconditionFailedError",
    "RetryPolicy",
    "SerializationError",
    "StorageError",
    "TesseraError",
]
