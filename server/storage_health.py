"""Storage health: the metrics of storage failures and recoveries, and the backoff between
recovery attempts, shared by the online store's writer and the outbox flusher.

A store is *degraded* while its writes fail for a storage reason (disk full, I/O error): reads
keep being served, writes answer UNAVAILABLE, and the store retries its recovery with backoff
until space is back, without a restart.
"""

from __future__ import annotations

import errno
import time

from prometheus_client import Counter, Gauge

from tessera.server.metrics import REGISTRY

STORAGE_ERRORS = Counter(
    "tessera_storage_errors_total",
    "Storage failures (disk full, I/O error) by store: online (RocksDB) or offline (Parquet).",
    ["store"],
    registry=REGISTRY,
)
STORAGE_RESUMES = Counter(
    "tessera_storage_resumes_total",
    "Recoveries after a storage failure, by store (online: the RocksDB reopened in-process).",
    ["store"],
    registry=REGISTRY,
)
STORAGE_DEGRADED = Gauge(
    "tessera_storage_degraded",
    "1 while a store's writes fail for a storage reason and it retries its recovery, else 0.",
    ["store"],
    registry=REGISTRY,
)
for _store in ("online", "offline"):
    STORAGE_DEGRADED.labels(_store).set(0)
    STORAGE_ERRORS.labels(_store)
    STORAGE_RESUMES.labels(_store)


class Backoff:
    """Exponential backoff between recovery attempts: `initial_s`, doubling, at most `max_s`."""

    def __init__(self, initial_s: float = 0.25, max_s: float = 5.0) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._delay_s = initial_s
        self.next_at = 0.0  # time.monotonic() of the next attempt

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def wait_s(self) -> float:
        return max(0.0, self.next_at - time.monotonic())

    def failed(self) -> None:
        self.next_at = time.monotonic() + self._delay_s
        self._delay_s = min(self._max_s, self._delay_s * 2)

    def reset(self) -> None:
        self._delay_s = self._initial_s
        self.next_at = 0.0


_STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE}
)
#: How RocksDB, DuckDB and Arrow word a storage failure (they raise without an errno).
_STORAGE_MESSAGES = ("No space left on device", "IO error", "Disk quota exceeded")


def storage_failure(exc: BaseException) -> bool:
    """Whether an unexpected error is the storage failing (disk full, I/O error), anywhere in
    its chain of causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            return True
        if any(m in str(seen) for m in _STORAGE_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
