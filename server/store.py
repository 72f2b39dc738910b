"""The online store seam: the `OnlineStore` interface and the operations and results it speaks.

Everything above the store (the servicer, the read path in server/reads.py, the write
operations in server/writes.py, the embedded ingest sink, the TTL purger) depends on this
module, never on an implementation. Implementations: `RocksDBOnlineStore` (server/online_store.py,
the group-commit writer over RocksDB). One contract suite runs against each of them
(tests/unit/server/test_online_store_contract.py).

The semantics every implementation keeps (SageMaker Feature Store's):
- one record per key; a put older (by event time) than the stored record does not overwrite it
  (result False); on equal event times the later write wins;
- a soft delete leaves a tombstone with its event time (older puts stay hidden); a hard delete
  older than the stored record is refused (PreconditionFailedError in its result);
- a record past its expiry reads as absent; `purge_expired` reclaims it;
- every accepted put of a group with aggregations is an event folded into its aggregates,
  durably with the commit that acknowledges it;
- a put with `if_match` applies only if the stored record is still the live one whose payload
  has that digest (`payload_digest`); otherwise its result is StaleReadError and it writes
  nothing (UpdateRecord's read-merge-write: concurrent updates never lose each other's
  features, the loser reads again);
- `scan` lists a group's records in key order, a page at a time (ListRecords);
- every commit is acknowledged with its sequence number (`Committed.seq`, RocksDB's own sequence
  number of the primary right after the commit's WriteBatch): later commits have larger ones, and
  a read from a store whose `visible_seq()` is at least `seq` sees the commit's writes. This is
  what read-your-writes tokens carry (core/tokens.py); a RocksDB secondary instance compares its
  own `latest_sequence_number()` with it directly.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tessera.core.errors import ConflictError, TesseraError
from tessera.server.aggregates import AggregateColumns, AggregateEvent


def now_us() -> int:
    """Wall-clock microseconds since the epoch: the store's notion of "now"."""
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class PutOp:
    group_id: int
    key: bytes
    event_time_us: int
    expires_at_us: int | None
    payload: bytes
    #: The history row for the offline store (server/history.py), or None when it has none.
    history: bytes | None = None
    #: False for a group without an online store: only the history row is written.
    online: bool = True
    #: The put's inputs to its group's aggregation features (None: the group has none).
    aggregate: AggregateEvent | None = None
    #: Apply only if the stored record is live and its payload has this digest
    #: (`payload_digest`), else StaleReadError; None: unconditional.
    if_match: bytes | None = None


@dataclass(frozen=True, slots=True)
class PutBatch:
    """Many puts of one group in columns (a PutRecords request's, server/put_batch.py): what
    `PutOp`s say one by one, with the same rules, without an object per record. Record i's key
    is keys[key_offsets[i]:key_offsets[i + 1]], its payload and its history row (when the group
    keeps history) likewise; its event time event_time_us[i], its expiry expires_at_us[i] (None:
    none of them expires). Its results in a commit are one per record, in order.

    A group with aggregations: `aggregates` holds the records' inputs to them in columns
    (server/put_batch.py `batch_aggregates`), each accepted record one event, as a `PutOp`'s
    `aggregate` is; a batch of such a group without them folds no events."""

    group_id: int
    online: bool
    keys: bytes
    key_offsets: np.ndarray  # int64, one more than records, like every offsets array here
    payloads: bytes
    payload_offsets: np.ndarray
    event_time_us: np.ndarray  # int64
    expires_at_us: np.ndarray | None
    history: bytes | None = None
    history_offsets: np.ndarray | None = None
    #: The records' inputs to the group's aggregation features (None: the group has none).
    aggregates: AggregateColumns | None = None

    def __len__(self) -> int:
        return int(self.event_time_us.shape[0])


@dataclass(frozen=True, slots=True)
class DeleteOp:
    group_id: int
    key: bytes
    event_time_us: int
    hard: bool
    history: bytes | None = None
    online: bool = True


@dataclass(frozen=True, slots=True)
class PurgeOp:
    """Delete the record at `key` if it still expires at `expires_at_us`, and the expiry index
    entry `index_key` either way. Made by the store's own `purge_expired`."""

    key: bytes
    expires_at_us: int
    index_key: bytes


@dataclass(frozen=True, slots=True)
class DropGroupOp:
    """Remove every record and aggregate of a group. Made by the store's own `drop_group`."""

    group_id: int


def payload_digest(payload: bytes | memoryview) -> bytes:
    """The digest a conditional put (`PutOp.if_match`) names the record it was computed from by."""
    return hashlib.blake2b(payload, digest_size=16).digest()


class StaleReadError(ConflictError):
    """A conditional put's record changed (or went) since it was read: read it again."""


#: The most stored entries one `scan` page examines (deleted and expired ones are skipped but
#: count): a page's cost is bounded even over a range of tombstones.
SCAN_MAX_EXAMINED = 10_000


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of a group's records, in key order."""

    record_ids: list[str]
    #: The last record id examined: the next page starts after it (None: the group's range is
    #: done). A page may be short, or empty, and still have a next one.
    resume_after: str | None


#: Every operation the writer applies. Callers submit PutOp, PutBatch and DeleteOp; the store
#: makes the others itself (`purge_expired`, `drop_group`).
Op = PutOp | PutBatch | DeleteOp | PurgeOp | DropGroupOp
#: Per op (per record of a PutBatch): True when it changed the online record, False when it was
#: older than the stored one, or the error that refused it.
OpResult = bool | TesseraError


@dataclass(frozen=True, slots=True)
class Committed:
    """What a commit acknowledges: one result per op, and the store's commit sequence number
    after it (reads that reflect `seq` see these writes)."""

    results: list[OpResult]
    seq: int


#: A live record: its stored wire bytes (a `tessera.v1.Record`, sent back without decoding) and
#: its expiry (None: it does not expire).
Hit = tuple[memoryview, int | None]


class OnlineStore(Protocol):
    """One record per (group, record id) key, with SageMaker's ordering rules (module docstring).

    Reads are from the caller's thread and never block on writes; writes are submitted and
    acknowledged through a future once durable.
    """

    def get(self, key: bytes, at_us: int) -> Hit | None:
        """The record at `key` as it reads at `at_us` (None: absent, deleted or expired)."""
        ...

    def multi_get(self, keys: list[bytes], at_us: int) -> list[Hit | None]:
        """`get` of each key, in order."""
        ...

    def get_aggregates(self, keys: list[bytes]) -> list[bytes | None]:
        """Stored aggregate tile states (None: no events for that key), in order."""
        ...

    def submit(self, ops: list[Op]) -> Future[Committed]:
        """Queue ops; the future resolves with one result per op and the commit's sequence
        number once they are durable (or with StorageError when none of them could be
        written)."""
        ...

    def drop_group(self, group_id: int) -> Future[Committed]:
        """Remove every record of a group, ordered after everything submitted before it."""
        ...

    def visible_seq(self) -> int:
        """The highest commit sequence this store's reads reflect now."""
        ...

    def wait_visible(self, seq: int, timeout_s: float) -> bool:
        """Block the calling thread until reads reflect `seq`; False if `timeout_s` passed first.
        Callers on an event loop run it in a worker thread when it would block.

        Raises PreconditionFailedError, without waiting, when the store knows `seq` can never
        become visible (ahead of every commit its writer made: a token of another data
        directory); a store that cannot know that waits and returns False."""
        ...

    def purge_expired(self, at_us: int, limit: int) -> int:
        """Delete up to `limit` records expired at `at_us`; how many index entries were done."""
        ...

    def scan(
        self, group_id: int, start_after: str | None, limit: int, at_us: int,
        include_deleted: bool = False,
    ) -> ScanPage:
        """Up to `limit` record ids of a group, in key order, after `start_after` (None: from
        the first), that read as present at `at_us` (and soft-deleted ones when
        `include_deleted`; expired ones never); at most SCAN_MAX_EXAMINED entries examined."""
        ...
