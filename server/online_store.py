"""The online store: one record per (group, record id) in RocksDB, written by one group-commit
writer thread.

Every mutation goes through the writer: it applies SageMaker's ordering rules (a put older than
the stored record leaves it alone; on equal event times the later write wins), packs everything
that queued up meanwhile into one WriteBatch and writes it with sync=True, so each batch costs one
fsync and an acknowledged write survives `kill -9`. One writer also means the read-modify-write of
the ordering check needs no locks. Reads go straight to RocksDB from the caller's thread.

Stored value: a 17-byte header (event_time_us, expires_at_us, flags) followed by the record's
wire bytes, which GetRecord sends back without decoding.

Storage failures: when a commit fails for a storage reason (disk full, I/O error), RocksDB
refuses every later write until it is resumed. The store is then *degraded*: reads are served as
before, writes fail fast with a StorageError (UNAVAILABLE), and the writer thread, which owns
every mutation, retries its recovery with backoff: once a probe write in the DB's directory
succeeds (space is back), it reopens the DB in-process (server/rocksdb.py) and writes resume.

Commit sequence: each commit is acknowledged with RocksDB's sequence number read right after its
WriteBatch (`Committed.seq`). Reads come from this same primary, so a commit is visible as soon as
it is acknowledged: `wait_visible` never waits, and a sequence number ahead of the DB's latest one
was never issued by it (PreconditionFailedError).
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
from concurrent.futures import Future, InvalidStateError

import numpy as np
import rocksdict

from tessera.core.errors import PreconditionFailedError, StorageError, TesseraError
from tessera.core.eventtime import to_iso
from tessera.core.keys import group_prefix
from tessera.server import batch_kernels as bk
from tessera.server import history, metrics
from tessera.server.aggregates import CommitAggregates, TileCache
from tessera.server.rocksdb import AGGREGATES, EXPIRY, OUTBOX, RECORDS, RocksDB
from tessera.server.storage_health import (
    STORAGE_DEGRADED,
    STORAGE_ERRORS,
    STORAGE_RESUMES,
    Backoff,
)

# The operations and results are the seam's (server/store.py); re-exported for this module's
# users, the two the store makes itself kept under their private names.
from tessera.server.store import (
    SCAN_MAX_EXAMINED,
    Committed,
    OnlineStore,
    ScanPage,
    StaleReadError,
    payload_digest,
)
from tessera.server.store import DeleteOp as DeleteOp
from tessera.server.store import DropGroupOp as _DropGroupOp
from tessera.server.store import Op as Op
from tessera.server.store import OpResult as OpResult
from tessera.server.store import PurgeOp as _PurgeOp
from tessera.server.store import PutBatch as PutBatch
from tessera.server.store import PutOp as PutOp
from tessera.server.store import now_us as now_us

log = logging.getLogger(__name__)

HEADER = struct.Struct("<qqB")
HEADER_SIZE = HEADER.size
TOMBSTONE = 1
HAS_EXPIRY = 2
_EXPIRY_KEY = struct.Struct(">q")
_SEQ = struct.Struct(">Q")
OUTBOX_ROW = b"r"  # outbox row keys: OUTBOX_ROW + big-endian seq, so seq order is key order
FLUSHED_MARK = b"m/flushed"  # the last seq written to Parquet and trimmed from the outbox


def outbox_key(seq: int) -> bytes:
    return OUTBOX_ROW + _SEQ.pack(seq)


def outbox_seq(key: bytes) -> int:
    return int(_SEQ.unpack_from(key, len(OUTBOX_ROW))[0])


def read_mark(rocks: RocksDB, mark: bytes) -> int:
    raw = rocks.outbox.get(mark)
    return int(_SEQ.unpack(raw)[0]) if isinstance(raw, bytes) else 0


def pack_mark(seq: int) -> bytes:
    return _SEQ.pack(seq)


_Stored = dict[bytes, bytes | None]  # a commit's view of the stored values of its keys
_HEADER_DTYPE = np.dtype({"names": ["event_time", "expires", "flags"],
                          "formats": ["<i8", "<i8", "u1"], "offsets": [0, 8, 16],
                          "itemsize": HEADER_SIZE})
_NO_EXPIRY = bk.readonly(np.zeros(0, np.int64))
_ALL = bk.readonly(np.arange(1 << 16, dtype=np.int64))


def _records(ops: list[Op]) -> int:
    """Records written by `ops` (a PutBatch writes many): what bounds a group commit."""
    return sum(len(op) if isinstance(op, PutBatch) else 1 for op in ops)


def _applied_flags(picked: list[int], count: int) -> list[OpResult]:
    flags: list[OpResult] = [False] * count
    for i in picked:
        flags[i] = True
    return flags


def _live(raw: bytes | None, at_us: int) -> tuple[memoryview, int | None] | None:
    """The payload and expiry of a stored value that reads as present at `at_us`, else None."""
    if raw is None:
        return None
    _, expires_at_us, flags = HEADER.unpack_from(raw)
    if flags & TOMBSTONE:
        return None
    if flags & HAS_EXPIRY:
        if expires_at_us <= at_us:
            return None
        return memoryview(raw)[HEADER_SIZE:], expires_at_us
    return memoryview(raw)[HEADER_SIZE:], None


def scan_records(
    it: rocksdict.RdictIter, group_id: int, start_after: str | None, limit: int, at_us: int,
    include_deleted: bool,
) -> ScanPage:
    """`OnlineStore.scan` over an iterator of the records column family (the primary's or a
    secondary's: both read stored values the same way)."""
    prefix = group_prefix(group_id)
    n = len(prefix)
    # The first key after `start_after` is its smallest extension.
    it.seek(prefix if start_after is None else prefix + start_after.encode() + b"\x00")
    ids: list[str] = []
    examined = 0
    last: str | None = None
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        if len(ids) >= limit or examined >= SCAN_MAX_EXAMINED:
            return ScanPage(ids, last)
        examined += 1
        last = key[n:].decode()
        _, expires_at_us, flags = HEADER.unpack_from(it.value())
        if flags & TOMBSTONE:
            if include_deleted:
                ids.append(last)
        elif not (flags & HAS_EXPIRY and expires_at_us <= at_us):
            ids.append(last)
        it.next()
    return ScanPage(ids, None)


def _settle(
    fut: Future[Committed],
    result: Committed | None = None,
    exception: BaseException | None = None,
) -> None:
    """Resolve a writer future, unless its caller gave up on it (a client deadline or a
    disconnect cancels it): the write itself is committed either way, as a retry would be."""
    try:
        if exception is not None:
            fut.set_exception(exception)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass  # cancelled


class _WriteFailed(Exception):
    """RocksDB refused a commit's write: a storage failure, not a bug in the commit."""


def _read_error(exc: Exception) -> StorageError:
    return StorageError(f"the online store could not read: {exc}")


class RocksDBOnlineStore:
    """The online store on RocksDB (see the module docstring)."""

    def __init__(
        self, rocks: RocksDB, max_commit_records: int = 20_000, recovery: Backoff | None = None,
        tile_cache_mb: int = 128,
    ) -> None:
        # Column families are looked up per use (never kept): the DB may be reopened.
        self._rocks = rocks
        self._recovery = recovery or Backoff()
        #: True while writes fail for a storage reason and the writer retries its recovery.
        self.degraded = False
        #: The last commit sequence number made durable: history rows up to it are in the outbox
        #: (or already flushed). Only the writer thread advances it.
        self.last_seq = self._recover_last_seq()
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._max_commit_records = max_commit_records
        self._queue: queue.SimpleQueue[tuple[list[Op], Future[Committed]] | None] = (
            queue.SimpleQueue()
        )
        #: RocksDB's sequence number after the last acknowledged commit (only the writer thread
        #: advances it; a commit is acknowledged after it is set, so readers never lag it).
        self._committed_seq = int(self._rocks.db.latest_sequence_number())
        self._dropped: set[int] = set()
        #: The tile values the writer wrote last (server/aggregates.py `TileCache`): a fold
        #: multi-gets only the keys not in it. Only the writer thread touches it.
        self.tiles = TileCache(tile_cache_mb << 20)
        self.commits = 0
        self.committed_ops = 0
        self._writer = threading.Thread(target=self._run_writer, name="tessera-writer")
        self._writer.start()

    def _recover_last_seq(self) -> int:
        it = self._rocks.outbox.iter()
        it.seek_for_prev(OUTBOX_ROW + b"\xff" * _SEQ.size)
        last = outbox_seq(it.key()) if it.valid() and it.key().startswith(OUTBOX_ROW) else 0
        del it
        return max(last, read_mark(self._rocks, FLUSHED_MARK))

    # --- reads ---------------------------------------------------------------------------------

    def get(self, key: bytes, at_us: int) -> tuple[memoryview, int | None] | None:
        try:
            raw = self._rocks.records.get(key)
        except Exception as exc:  # a reopen in progress (DbClosedError) or an I/O error
            raise _read_error(exc) from exc
        return _live(raw, at_us)

    def multi_get(
        self, keys: list[bytes], at_us: int
    ) -> list[tuple[memoryview, int | None] | None]:
        try:
            raws = self._rocks.records.get(keys)  # type: ignore[arg-type]
        except Exception as exc:
            raise _read_error(exc) from exc
        return [_live(raw, at_us) for raw in raws]  # type: ignore[union-attr]

    def get_aggregates(self, keys: list[bytes]) -> list[bytes | None]:
        """Stored tile states (None: no events for that key)."""
        try:
            if len(keys) == 1:
                return [self._rocks.aggregates.get(keys[0])]
            return self._rocks.aggregates.get(keys)  # type: ignore[return-value, arg-type]
        except Exception as exc:
            raise _read_error(exc) from exc

    def scan(
        self, group_id: int, start_after: str | None, limit: int, at_us: int,
        include_deleted: bool = False,
    ) -> ScanPage:
        try:
            with self._rocks.quiesce:  # no iterator may outlive a reopen
                it = self._rocks.records.iter()
                try:
                    return scan_records(it, group_id, start_after, limit, at_us, include_deleted)
                finally:
                    del it
        except TesseraError:
            raise
        except Exception as exc:
            raise _read_error(exc) from exc

    # --- writes --------------------------------------------------------------------------------

    def submit(self, ops: list[Op]) -> Future[Committed]:
        """Queue ops for the writer; the future resolves once they are durable."""
        fut: Future[Committed] = Future()
        self._queue.put((ops, fut))
        return fut

    def write(self, ops: list[Op]) -> list[OpResult]:
        """Submit and wait: for callers outside the event loop (CLI, tests)."""
        return self.submit(ops).result().results

    def drop_group(self, group_id: int) -> Future[Committed]:
        """Remove every record of a group (ordered after everything queued before it)."""
        return self.submit([_DropGroupOp(group_id)])

    # --- commit sequence -----------------------------------------------------------------------

    def visible_seq(self) -> int:
        """RocksDB's latest sequence number: reads come from the primary, which reflects it."""
        try:
            return int(self._rocks.db.latest_sequence_number())
        except Exception:  # a reopen in progress: the last acknowledged commit is still visible
            return self._committed_seq

    def wait_visible(self, seq: int, timeout_s: float) -> bool:
        """True at once for any `seq` this store acknowledged (reads come from the primary);
        PreconditionFailedError for one ahead of its latest commit: never issued by it."""
        if seq <= self._committed_seq:
            return True
        latest = self.visible_seq()  # writes outside the writer (the registry) advance it too
        if seq <= latest:
            return True
        raise PreconditionFailedError(
            f"consistent_after names commit {seq}, ahead of this store's latest commit "
            f"{latest}: it was not issued by this Tessera (another server or data directory), "
            "or this store lost the data it was issued for"
        )

    @property
    def writer_thread(self) -> threading.Thread:
        """The thread that owns every mutation (alive until `close`)."""
        return self._writer

    def close(self) -> None:
        """Finish queued writes, stop the writer (again: a no-op). The caller closes the DB."""
        self._queue.put(None)
        self._writer.join()

    def _run_writer(self) -> None:
        while True:
            if self.degraded:  # wake up to retry the recovery even when no write comes
                try:
                    item = self._queue.get(timeout=max(0.01, self._recovery.wait_s()))
                except queue.Empty:
                    self._try_recover()
                    continue
            else:
                item = self._queue.get()
            if item is None:
                return
            batch = [item]
            size = _records(item[0])
            stop = False
            while size < self._max_commit_records:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                size += _records(nxt[0])
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[list[Op], Future[Committed]]]) -> None:
        if self.degraded and not self._try_recover():
            err = StorageError(
                "the online store cannot write now (a storage failure: disk full or I/O error); "
                "it resumes by itself once the storage recovers, retry later"
            )
            for _, fut in batch:
                _settle(fut, exception=err)
            return
        try:
            results = self._apply(batch)
        except Exception as exc:  # a RocksDB failure fails the whole group, nothing acknowledged
            cause = exc.__cause__ if isinstance(exc, _WriteFailed) else exc
            err = StorageError(f"the online store could not write: {cause}")
            self.tiles.clear()  # a failed write may still have reached the WAL
            if isinstance(exc, _WriteFailed):
                self._degrade(cause)
            else:
                log.exception("group commit failed")
            for _, fut in batch:
                _settle(fut, exception=err)
            return
        seq = self._committed_seq
        for (_, fut), res in zip(batch, results, strict=True):
            _settle(fut, result=Committed(res, seq))

    def _degrade(self, cause: BaseException | None) -> None:
        STORAGE_ERRORS.labels("online").inc()
        if not self.degraded:
            log.error("the online store cannot write (%s): serving reads only and retrying "
                      "until the storage recovers", cause)
            self.degraded = True
            STORAGE_DEGRADED.labels("online").set(1)
        self._recovery.failed()

    def _try_recover(self) -> bool:
        """Writer thread: reopen the DB once space is back (at most once per backoff step)."""
        if not self._recovery.due():
            return False
        if not self._rocks.has_free_space():
            self._recovery.failed()
            return False
        self.tiles.clear()
        try:
            self._rocks.reopen()
        except StorageError as exc:
            log.warning("reopening the online store failed, retrying: %s", exc.message)
            self._recovery.failed()
            return False
        # A write reported failed may still have reached the WAL: never reuse its seq.
        self.last_seq = max(self.last_seq, self._recover_last_seq())
        self.degraded = False
        self._recovery.reset()
        STORAGE_DEGRADED.labels("online").set(0)
        STORAGE_RESUMES.labels("online").inc()
        log.warning("the online store recovered from a storage failure: writes resume")
        return True

    def _apply(
        self, batch: list[tuple[list[Op], Future[Committed]]]
    ) -> list[list[OpResult]]:
        at_us = now_us()
        keys: list[bytes] = []
        batch_keys: dict[int, list[bytes]] = {}  # id(PutBatch) -> its records' keys
        for ops, _ in batch:
            for op in ops:
                if isinstance(op, PutBatch):
                    batch_keys[id(op)] = op_keys = bk.split(op.keys, op.key_offsets.tolist())
                    keys += op_keys
                elif not isinstance(op, _DropGroupOp):
                    keys.append(op.key)
        stored: _Stored = {}
        if keys:
            stored.update(zip(keys, self._rocks.records.get(keys), strict=True))  # type: ignore[arg-type]
        wb = rocksdict.WriteBatch(raw_mode=True)
        aggregates = CommitAggregates()
        out: list[list[OpResult]] = []
        n = 0
        seq = self.last_seq
        for ops, _ in batch:
            results: list[OpResult] = []
            for op in ops:
                n += 1
                result: OpResult
                if isinstance(op, PutBatch):
                    seq = self._put_batch(wb, stored, op, batch_keys[id(op)], at_us, seq,
                                          results, aggregates)
                    n += len(op) - 1
                    continue
                if isinstance(op, PutOp | DeleteOp):
                    if op.group_id in self._dropped:
                        result = StorageError(
                            "the feature group was deleted while this write was queued"
                        )
                    elif not op.online:
                        result = True
                    elif isinstance(op, PutOp):
                        result = self._put(wb, stored, op, at_us)
                    else:
                        result = self._delete(wb, stored, op, at_us)
                    # History keeps every accepted write, applied online or not.
                    if op.history is not None and not isinstance(result, TesseraError):
                        seq += 1
                        row = history.with_write_time(at_us, op.history)
                        wb.put(outbox_key(seq), row, self._rocks.handle(OUTBOX))
                    # So do aggregates: every accepted put is an event (ordered by seq).
                    if (
                        isinstance(op, PutOp)
                        and op.aggregate is not None
                        and op.online
                        and not isinstance(result, TesseraError)
                    ):
                        aggregates.add(op.group_id, op.aggregate, op.event_time_us, seq)
                elif isinstance(op, _PurgeOp):
                    result = self._purge(wb, stored, op)
                else:
                    result = self._drop(wb, stored, op)
                results.append(result)
            out.append(results)
        tiles: dict[bytes, bytes | None] = {}
        if aggregates:
            tiles = self._fold(wb, aggregates, at_us)
        try:
            self._rocks.db.write(wb, self._sync)
        except Exception as exc:
            raise _WriteFailed() from exc
        if tiles:
            self.tiles.update(tiles)
        # Read right after the write, by the only writer of records: covers this commit.
        self._committed_seq = int(self._rocks.db.latest_sequence_number())
        self.last_seq = seq
        self.commits += 1
        self.committed_ops += n
        return out

    def _fold(
        self, wb: rocksdict.WriteBatch, aggregates: CommitAggregates, at_us: int
    ) -> dict[bytes, bytes | None]:
        """Fold the commit's events into `wb`; the tile values written (None: deleted), for
        the tile cache once the commit is durable."""
        cf = self._rocks.handle(AGGREGATES)
        aggregates.discard_groups(self._dropped)  # a drop in this commit range-deleted them
        written: dict[bytes, bytes | None] = {}
        put = wb.put

        def put_tile(key: bytes, value: bytes) -> None:
            put(key, value, cf)
            written[key] = value

        def delete_tile(key: bytes) -> None:
            wb.delete(key, cf)
            written[key] = None

        dropped = aggregates.fold(
            lambda keys: self.tiles.read(keys, self.get_aggregates), put_tile, delete_tile,
            at_us,
        )
        for group_name, count in dropped.items():
            metrics.AGGREGATE_EVENTS_TOO_LATE.labels(group_name).inc(count)
        return written

    def _newer_stored(self, stored: _Stored, key: bytes, et: int, at: int) -> int:
        """The stored event time if a live-or-tombstoned record newer than `et` exists, else -1."""
        raw = stored.get(key)
        if raw is None:
            return -1
        stored_et, expires_at_us, flags = HEADER.unpack_from(raw)
        if flags & HAS_EXPIRY and expires_at_us <= at:
            return -1  # expired: as if absent
        return stored_et if stored_et > et else -1

    def _put(self, wb: rocksdict.WriteBatch, stored: _Stored, op: PutOp, at_us: int) -> OpResult:
        if op.if_match is not None:
            hit = _live(stored.get(op.key), at_us)
            if hit is None or payload_digest(hit[0]) != op.if_match:
                return StaleReadError(
                    "the record changed or was deleted since it was read (a concurrent write); "
                    "read it again"
                )
        if self._newer_stored(stored, op.key, op.event_time_us, at_us) >= 0:
            return False
        if op.expires_at_us is None:
            value = HEADER.pack(op.event_time_us, 0, 0) + op.payload
        else:
            value = HEADER.pack(op.event_time_us, op.expires_at_us, HAS_EXPIRY) + op.payload
            wb.put(_EXPIRY_KEY.pack(op.expires_at_us) + op.key, b"", self._rocks.handle(EXPIRY))
        wb.put(op.key, value, self._rocks.handle(RECORDS))
        stored[op.key] = value
        return True

    def _put_batch(
        self, wb: rocksdict.WriteBatch, stored: _Stored, op: PutBatch, keys: list[bytes],
        at_us: int, seq: int, results: list[OpResult], aggregates: CommitAggregates,
    ) -> int:
        """`_put` of every record of `op`, in order, in columns: one result per record appended
        to `results`; the outbox rows numbered after `seq`; its aggregation events added to
        `aggregates`; returns the last seq used."""
        count = len(keys)
        if op.group_id in self._dropped:
            results += [StorageError("the feature group was deleted while this write was queued")
                        ] * count
            return seq
        if op.aggregates is not None and op.online:
            # Every record is accepted (applied, or older than the stored one: both are events,
            # as `_apply` decides for a PutOp), with the seq a PutOp in its place would have:
            # its outbox row's, or the last one before it when the group keeps no history.
            if op.history is not None and op.history_offsets is not None:
                event_seqs = np.arange(seq + 1, seq + count + 1, dtype=np.int64)
            else:
                event_seqs = np.full(count, seq, np.int64)
            aggregates.add_columns(op.group_id, op.aggregates, op.event_time_us, event_seqs)
        if op.online:
            picked = self._batch_applied(stored, op, keys, at_us)
            n_picked = count if picked is None else len(picked)
            results += [True] * count if picked is None else _applied_flags(picked, count)
            if n_picked:
                index = _ALL[:count] if picked is None and count <= len(_ALL) else (
                    np.arange(count, dtype=np.int64) if picked is None
                    else np.asarray(picked, np.int64))
                expires = op.expires_at_us
                values_blob, offsets = bk.stored_values(
                    np.frombuffer(op.payloads, np.uint8), op.payload_offsets,
                    bk.readonly(index), op.event_time_us,
                    expires if expires is not None else _NO_EXPIRY, expires is not None,
                    HAS_EXPIRY)
                values = bk.split(values_blob.tobytes(), offsets.tolist())
                put_keys = keys if picked is None else [keys[i] for i in picked]
                put = wb.put
                cf = self._rocks.handle(RECORDS)
                for key, value in zip(put_keys, values, strict=True):
                    put(key, value, cf)
                stored.update(zip(put_keys, values, strict=True))
                if expires is not None:
                    cf = self._rocks.handle(EXPIRY)
                    at = expires[index].astype(">i8").tobytes()
                    for j, key in enumerate(put_keys):
                        put(at[8 * j : 8 * j + 8] + key, b"", cf)
        else:
            results += [True] * count
        # History keeps every accepted write, applied online or not.
        if op.history is not None and op.history_offsets is not None:
            rows_blob, offsets = bk.outbox_rows(
                np.frombuffer(op.history, np.uint8), op.history_offsets, at_us)
            rows = bk.split(rows_blob.tobytes(), offsets.tolist())
            seqs = np.empty((count, 1 + _SEQ.size), np.uint8)
            seqs[:, 0] = OUTBOX_ROW[0]
            seqs[:, 1:] = np.arange(seq + 1, seq + count + 1, dtype=">u8").view(
                np.uint8).reshape(count, _SEQ.size)
            outbox_keys = bk.split(seqs.tobytes(), list(range(0, seqs.size + 1, seqs.shape[1])))
            put = wb.put
            cf = self._rocks.handle(OUTBOX)
            for key, row in zip(outbox_keys, rows, strict=True):
                put(key, row, cf)
            seq += count
        return seq

    def _batch_applied(
        self, stored: _Stored, op: PutBatch, keys: list[bytes], at_us: int
    ) -> list[int] | None:
        """The indexes of the records of `op` that apply (None: all of them), by `_put`'s rule
        against `stored`; a key given twice in `op` is decided record by record, in order."""
        raws = list(map(stored.get, keys))
        present = [i for i, raw in enumerate(raws) if raw is not None]
        if len(set(keys)) != len(keys):  # rare: a later record sees an earlier one's write
            return self._batch_applied_in_order(stored, op, keys, at_us)
        if not present:
            return None
        headers = np.frombuffer(
            b"".join([raws[i][:HEADER_SIZE] for i in present]),  # type: ignore[index]
            _HEADER_DTYPE)
        et = op.event_time_us[present]
        live = ~(((headers["flags"] & HAS_EXPIRY) != 0) & (headers["expires"] <= at_us))
        stale = live & (headers["event_time"] > et)
        if not stale.any():
            return None
        keep = np.ones(len(keys), bool)
        keep[np.asarray(present, np.int64)[stale]] = False
        picked: list[int] = np.flatnonzero(keep).tolist()
        return picked

    def _batch_applied_in_order(
        self, stored: _Stored, op: PutBatch, keys: list[bytes], at_us: int
    ) -> list[int] | None:
        view = dict(stored)
        picked: list[int] = []
        expires = op.expires_at_us
        for i, key in enumerate(keys):
            et = int(op.event_time_us[i])
            if self._newer_stored(view, key, et, at_us) < 0:
                picked.append(i)
                # The header later records of `op` compare with (`_put`'s stored value).
                view[key] = (HEADER.pack(et, 0, 0) if expires is None
                             else HEADER.pack(et, int(expires[i]), HAS_EXPIRY))
        return None if len(picked) == len(keys) else picked

    def _delete(
        self, wb: rocksdict.WriteBatch, stored: _Stored, op: DeleteOp, at_us: int
    ) -> OpResult:
        newer = self._newer_stored(stored, op.key, op.event_time_us, at_us)
        if newer >= 0:
            if op.hard:
                return PreconditionFailedError(
                    f"hard delete at event time {to_iso(op.event_time_us)} is older than the "
                    f"stored record's event time {to_iso(newer)}; refused"
                )
            return False
        if op.hard:
            wb.delete(op.key, self._rocks.handle(RECORDS))
            stored[op.key] = None
        else:
            # A tombstone keeps its event time so that older puts arriving late stay hidden.
            value = HEADER.pack(op.event_time_us, 0, TOMBSTONE)
            wb.put(op.key, value, self._rocks.handle(RECORDS))
            stored[op.key] = value
        return True

    def _purge(self, wb: rocksdict.WriteBatch, stored: _Stored, op: _PurgeOp) -> OpResult:
        wb.delete(op.index_key, self._rocks.handle(EXPIRY))
        raw = stored.get(op.key)
        if raw is None:
            return False
        _, expires_at_us, flags = HEADER.unpack_from(raw)
        if flags & HAS_EXPIRY and expires_at_us == op.expires_at_us:
            wb.delete(op.key, self._rocks.handle(RECORDS))
            stored[op.key] = None
            return True
        return False  # rewritten since the index entry was made

    def _drop(self, wb: rocksdict.WriteBatch, stored: _Stored, op: _DropGroupOp) -> OpResult:
        self._dropped.add(op.group_id)
        self.tiles.clear()  # the range delete below removes the group's tiles
        start, end = group_prefix(op.group_id), group_prefix(op.group_id + 1)
        wb.delete_range(start, end, self._rocks.handle(RECORDS))
        wb.delete_range(start, end, self._rocks.handle(AGGREGATES))
        for key in stored:
            if key.startswith(group_prefix(op.group_id)):
                stored[key] = None
        return True

    # --- TTL purge -----------------------------------------------------------------------------

    def purge_expired(self, at_us: int, limit: int) -> int:
        """Delete up to `limit` records expired at `at_us`; returns how many index entries were
        processed. Reads already hide expired records; this reclaims their space."""
        ops: list[Op] = []
        with self._rocks.quiesce:  # no iterator may outlive a reopen
            it = self._rocks.expiry.iter()
            try:
                it.seek_to_first()
                while it.valid() and len(ops) < limit:
                    index_key = it.key()
                    (expires_at_us,) = _EXPIRY_KEY.unpack_from(index_key)
                    if expires_at_us > at_us:
                        break
                    ops.append(_PurgeOp(index_key[_EXPIRY_KEY.size :], expires_at_us, index_key))
                    it.next()
            finally:
                del it
        if ops:
            self.write(ops)
        return len(ops)


class TtlPurger:
    """A background thread that purges expired records every `interval_s`."""

    def __init__(self, store: OnlineStore, interval_s: float, batch: int) -> None:
        self._store = store
        self._interval_s = interval_s
        self._batch = batch
        self._stop = threading.Event()
        self.purged = 0
        self._thread = threading.Thread(target=self._run, name="tessera-ttl-purge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                while not self._stop.is_set():
                    n = self._store.purge_expired(now_us(), self._batch)
                    self.purged += n
                    if n < self._batch:
                        break
            except Exception:
                log.exception("TTL purge failed; retrying next interval")
