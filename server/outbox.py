"""The outbox flusher: moves history rows from RocksDB's outbox to the offline store's Parquet.

A flush takes the commit range (flushed, last committed], first records that range as its
intent (durably), writes the range's Parquet files, then trims the range from the outbox, moves
the flushed mark and clears the intent in one synced batch. After a crash anywhere in between,
the intent is replayed with the same range, hence the same file names and contents: every
acknowledged write reaches Parquet exactly once.

A failed flush (disk full while writing Parquet, the online store's RocksDB refusing writes)
loses nothing: the rows stay in the outbox and the flusher retries with backoff (a second, then
doubling up to the flush interval) until a flush succeeds.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable
from itertools import islice
from typing import cast

import numpy as np
import rocksdict

from tessera.core.errors import StorageError
from tessera.core.schema import FeatureGroup
from tessera.server import history
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import (
    FLUSHED_MARK,
    OUTBOX_ROW,
    RocksDBOnlineStore,
    outbox_key,
    pack_mark,
    read_mark,
)
from tessera.server.rocksdb import OUTBOX, RocksDB
from tessera.server.storage_health import (
    STORAGE_DEGRADED,
    STORAGE_ERRORS,
    STORAGE_RESUMES,
    Backoff,
)

log = logging.getLogger(__name__)

INTENT_MARK = b"m/intent"
_RANGE = struct.Struct(">QQ")

#: group id -> (group, retired); None for an id the registry never had.
GroupLookup = Callable[[int], tuple[FeatureGroup, bool] | None]


class OutboxFlusher:
    """Flushes the outbox every `interval_s`, early when `max_rows` are pending, and at stop."""

    def __init__(
        self,
        rocks: RocksDB,
        store: RocksDBOnlineStore,
        writer: ParquetOfflineWriter,
        groups: GroupLookup,
        interval_s: float,
        max_rows: int,
    ) -> None:
        self._rocks = rocks
        self._store = store
        self._writer = writer
        self._groups = groups
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self.flushes = 0
        #: True while flushes fail; the thread then retries with backoff.
        self.failing = False
        self._retry = Backoff(initial_s=min(1.0, interval_s), max_s=interval_s)
        self._thread = threading.Thread(target=self._run, name="tessera-outbox", daemon=True)

    @property
    def flushed_seq(self) -> int:
        return read_mark(self._rocks, FLUSHED_MARK)

    def pending(self) -> int:
        """History rows committed but not yet in Parquet."""
        return max(0, self._store.last_seq - self.flushed_seq)

    def start(self) -> None:
        self.flush_all()  # an interrupted flush, and whatever the last run left
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and flush everything committed (call after the writer drained).

        A flush that fails now leaves its rows in the outbox, durable: the next start flushes
        them. Raises StorageError then, so the shutdown reports it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.flush_all()
        except Exception as exc:
            STORAGE_ERRORS.labels("offline").inc()
            raise StorageError(
                f"the outbox could not be flushed at shutdown ({exc}); its rows stay in the "
                "outbox and are flushed at the next start"
            ) from exc

    def flush_all(self) -> int:
        """Flush everything committed so far; returns rows flushed."""
        target = self._store.last_seq
        total = 0
        while self._read_intent() is not None or self.flushed_seq < target:
            total += self.flush_once()
        return total

    def flush_once(self) -> int:
        # `quiesce`: the online store does not reopen the DB under an outbox iteration.
        with self._lock, self._rocks.quiesce:
            intent = self._read_intent()
            if intent is None:
                first = self.flushed_seq + 1
                last = min(self._store.last_seq, first + self._max_rows - 1)
                if last < first:
                    return 0
                self._rocks.outbox.put(INTENT_MARK, _RANGE.pack(first, last), self._sync)
            else:
                first, last = intent
            rows = self._rows(first, last)
            groups: dict[int, tuple[FeatureGroup, bool]] = {}
            for gid in dict.fromkeys(rows.group_ids.tolist()):
                found = self._groups(gid)
                if found is not None:
                    groups[gid] = found
            self._writer.write(rows, first, last, groups)
            wb = rocksdict.WriteBatch(raw_mode=True)
            handle = self._rocks.handle(OUTBOX)
            wb.delete_range(outbox_key(first), outbox_key(last + 1), handle)
            wb.put(FLUSHED_MARK, pack_mark(last), handle)
            wb.delete(INTENT_MARK, handle)
            self._rocks.db.write(wb, self._sync)
            self.flushes += 1
            return len(rows)

    def _read_intent(self) -> tuple[int, int] | None:
        raw = self._rocks.outbox.get(INTENT_MARK)
        if not isinstance(raw, bytes):
            return None
        first, last = _RANGE.unpack(raw)
        return int(first), int(last)

    def _rows(self, first: int, last: int) -> history.HistoryBatch:
        # One iteration collected on RocksDB's side of the binding (no Python per row): the range
        # holds at most last - first + 1 rows, keyed OUTBOX_ROW + big-endian seq.
        rows = cast(Iterable[tuple[bytes, bytes]],
                    self._rocks.outbox.items(from_key=outbox_key(first)))
        items = list(islice(rows, last - first + 1))
        width = len(outbox_key(0))
        keys = np.frombuffer(b"".join(k for k, _ in items), np.uint8)
        if keys.shape[0] != width * len(items):
            raise StorageError("the outbox holds a key of an unexpected length")
        keys = keys.reshape(-1, width)
        seqs = keys[:, len(OUTBOX_ROW):].copy().view(">u8")[:, 0].astype(np.int64)
        inside = (keys[:, 0] == OUTBOX_ROW[0]) & (seqs <= last)
        n = len(items) if inside.all() else int(np.argmin(inside))
        return history.decode_batch(seqs[:n], [v for _, v in items[:n]])

    def _run(self) -> None:
        # Wake every second to flush early when many rows are pending (bounding the outbox);
        # otherwise flush once per interval (bounding the delay to Parquet). After a failure,
        # retry with backoff instead.
        waited = 0.0
        tick = min(1.0, self._interval_s)
        while not self._stop.wait(tick):
            waited += tick
            if self.failing:
                if not self._retry.due():
                    continue
            elif waited < self._interval_s and self.pending() < self._max_rows:
                continue
            waited = 0.0
            try:
                self.flush_all()
            except Exception as exc:
                self._failed(exc)
            else:
                self._recovered()

    def _failed(self, exc: Exception) -> None:
        STORAGE_ERRORS.labels("offline").inc()
        self._retry.failed()
        if not self.failing:
            self.failing = True
            STORAGE_DEGRADED.labels("offline").set(1)
            log.error("flushing the outbox to Parquet failed (%s); the rows stay in the outbox, "
                      "retrying with backoff", exc, exc_info=not isinstance(exc, OSError))
        else:
            log.warning("flushing the outbox to Parquet failed again: %s", exc)

    def _recovered(self) -> None:
        if self.failing:
            self.failing = False
            self._retry.reset()
            STORAGE_DEGRADED.labels("offline").set(0)
            STORAGE_RESUMES.labels("offline").inc()
            log.warning("the outbox flushes to Parquet again")
