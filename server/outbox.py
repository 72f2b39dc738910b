"""The outbox flusher: moves history rows from RocksDB's outbox to the offline store's Parquet.

A flush takes the commit range (flushed, last committed], first records that range as its
intent (durably), writes the range's Parquet files, then trims the range from the outbox, moves
the flushed mark and clears the intent in one synced batch. After a crash anywhere in between,
the intent is replayed with the same range, hence the same file names and contents: every
acknowledged write reaches Parquet exactly once.

Where the flusher runs, it reads the outbox through an `Outbox`:
- `PrimaryOutbox`: the process owning the RocksDB primary (the single process, server/app.py;
  a writer process run on its own) reads it and writes the marks itself (`OutboxFlusher`).
- The history process of `tessera serve --workers N` (server/history_process.py) reads a
  secondary instance and asks the writer process, the only writer of RocksDB, to record the
  intent and to trim; the writer checks each request against the marks (`OutboxMarks`), so a
  stale or repeated request changes nothing.

A failed flush (disk full while writing Parquet, the online store's RocksDB refusing writes, the
writer process unreachable) loses nothing: the rows stay in the outbox and the flusher retries
with backoff (a second, then doubling up to the flush interval) until a flush succeeds.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from itertools import islice
from typing import Protocol, cast

import numpy as np
import rocksdict

from tessera.core.errors import ConflictError, InvalidRequestError, StorageError
from tessera.core.schema import FeatureGroup
from tessera.server import history
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import (
    FLUSHED_MARK,
    OUTBOX_ROW,
    RocksDBOnlineStore,
    outbox_key,
    pack_mark,
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
_SEQ = struct.Struct(">Q")

#: group id -> (group, retired); None for an id the registry never had.
GroupLookup = Callable[[int], tuple[FeatureGroup, bool] | None]


def read_intent(outbox: rocksdict.Rdict) -> tuple[int, int] | None:
    """The recorded flush intent (first, last) in an outbox column family, or None."""
    raw = outbox.get(INTENT_MARK)
    if not isinstance(raw, bytes):
        return None
    first, last = _RANGE.unpack(raw)
    return int(first), int(last)


def read_flushed(outbox: rocksdict.Rdict) -> int:
    """The flushed mark (the last seq in Parquet and trimmed) of an outbox column family."""
    raw = outbox.get(FLUSHED_MARK)
    return int(_SEQ.unpack(raw)[0]) if isinstance(raw, bytes) else 0


def last_row_seq(outbox: rocksdict.Rdict) -> int:
    """The seq of the last row in an outbox column family (0: none)."""
    it = outbox.iter()
    try:
        it.seek_for_prev(OUTBOX_ROW + b"\xff" * _SEQ.size)
        if it.valid() and it.key().startswith(OUTBOX_ROW):
            return int(_SEQ.unpack_from(it.key(), len(OUTBOX_ROW))[0])
        return 0
    finally:
        del it


def read_rows(outbox: rocksdict.Rdict, first: int, last: int) -> history.HistoryBatch:
    """The rows of [first, last] in an outbox column family, as one HistoryBatch."""
    # One iteration collected on RocksDB's side of the binding (no Python per row): the range
    # holds at most last - first + 1 rows, keyed OUTBOX_ROW + big-endian seq.
    rows = cast(Iterable[tuple[bytes, bytes]], outbox.items(from_key=outbox_key(first)))
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


class OutboxMarks:
    """The flush marks on the RocksDB primary: the intent and the trim, each one synced write,
    each checked against the marks as they are (a stale or repeated request of a history
    process changes nothing: ConflictError, or nothing to do for a trim already made)."""

    def __init__(self, rocks: RocksDB) -> None:
        self._rocks = rocks
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        # Check and write as one step, the DB not reopened meanwhile (after a storage error).
        self._lock = threading.Lock()

    def flushed_seq(self) -> int:
        return read_flushed(self._rocks.outbox)

    def intent(self) -> tuple[int, int] | None:
        return read_intent(self._rocks.outbox)

    def record_intent(self, first: int, last: int, last_committed: int) -> None:
        """Record the range the next files are written for: (flushed, ..] only, up to the last
        committed seq; again for the recorded range: nothing to do."""
        with self._lock, self._rocks.quiesce:
            recorded = self.intent()
            if recorded == (first, last):
                return
            if recorded is not None:
                raise ConflictError(f"the outbox has the flush intent {recorded[0]}..{recorded[1]}"
                                    f"; {first}..{last} was asked for")
            flushed = self.flushed_seq()
            if first != flushed + 1 or not first <= last <= last_committed:
                raise InvalidRequestError(
                    f"flush range {first}..{last} does not follow the flushed mark {flushed} "
                    f"within the committed rows (last: {last_committed})")
            self._rocks.outbox.put(INTENT_MARK, _RANGE.pack(first, last), self._sync)

    def trim(self, first: int, last: int) -> None:
        """Delete the intent's range from the outbox, move the flushed mark to `last` and clear
        the intent, in one synced batch; a trim already made is not made again."""
        with self._lock, self._rocks.quiesce:
            recorded = self.intent()
            if recorded is None and self.flushed_seq() >= last:
                return
            if recorded != (first, last):
                raise ConflictError(f"cannot trim {first}..{last}: the outbox's flush intent is "
                                    f"{recorded}")
            wb = rocksdict.WriteBatch(raw_mode=True)
            handle = self._rocks.handle(OUTBOX)
            wb.delete_range(outbox_key(first), outbox_key(last + 1), handle)
            wb.put(FLUSHED_MARK, pack_mark(last), handle)
            wb.delete(INTENT_MARK, handle)
            self._rocks.db.write(wb, self._sync)


class Outbox(Protocol):
    """The outbox as a flusher sees it (the module docstring)."""

    @property
    def quiesce(self) -> AbstractContextManager[object]:
        """Held while a flush reads rows: no reopen (primary) or catch-up (secondary)."""

    def refresh(self) -> None:
        """Make the view current (a secondary catches up; a primary is current)."""

    def last_seq(self) -> int:
        """The last committed row's seq, as of the view."""

    def flushed_seq(self) -> int: ...

    def intent(self) -> tuple[int, int] | None: ...

    def record_intent(self, first: int, last: int) -> None:
        """Durably record the range about to be written (see `OutboxMarks`)."""

    def rows(self, first: int, last: int) -> history.HistoryBatch: ...

    def trim(self, first: int, last: int) -> None:
        """The range is in Parquet: drop it, move the flushed mark, clear the intent."""


class PrimaryOutbox:
    """The outbox of the process owning the primary and its online store."""

    def __init__(self, rocks: RocksDB, store: RocksDBOnlineStore) -> None:
        self._rocks = rocks
        self._store = store
        self.marks = OutboxMarks(rocks)
        self.quiesce = rocks.quiesce  # the online store does not reopen the DB under a read

    def refresh(self) -> None:
        pass

    def last_seq(self) -> int:
        return self._store.last_seq

    def flushed_seq(self) -> int:
        return self.marks.flushed_seq()

    def intent(self) -> tuple[int, int] | None:
        return self.marks.intent()

    def record_intent(self, first: int, last: int) -> None:
        self.marks.record_intent(first, last, self._store.last_seq)

    def rows(self, first: int, last: int) -> history.HistoryBatch:
        return read_rows(self._rocks.outbox, first, last)

    def trim(self, first: int, last: int) -> None:
        self.marks.trim(first, last)


class HistoryFlusher:
    """Flushes an `Outbox` every `interval_s`, early when `max_rows` are pending, and at stop."""

    def __init__(
        self,
        outbox: Outbox,
        writer: ParquetOfflineWriter,
        groups: GroupLookup,
        interval_s: float,
        max_rows: int,
    ) -> None:
        self._outbox = outbox
        self._writer = writer
        self._groups = groups
        self._interval_s = interval_s
        self._max_rows = max_rows
        #: One flush at a time; held by whoever must keep flushes out (a group's retirement).
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self.flushes = 0
        #: True while flushes fail; the thread then retries with backoff.
        self.failing = False
        self._retry = Backoff(initial_s=min(1.0, interval_s), max_s=interval_s)
        self._thread = threading.Thread(target=self._run, name="tessera-outbox", daemon=True)

    @property
    def flushed_seq(self) -> int:
        return self._outbox.flushed_seq()

    def pending(self) -> int:
        """History rows committed but not yet in Parquet (as of the outbox's view)."""
        return max(0, self._outbox.last_seq() - self.flushed_seq)

    @property
    def running(self) -> bool:
        """The flushing thread runs (started, not stopped)."""
        return self._thread.is_alive()

    def start(self, retry_in_background: bool = False) -> None:
        """Flush what the last run left (an interrupted flush first), then flush on a timer.
        A failing first flush raises, or with `retry_in_background` is retried by the thread
        (a process that must not fail its start for it: the history process, whose writer
        may be restarting)."""
        try:
            self.flush_all()
        except Exception as exc:
            if not retry_in_background:
                raise
            self._failed(exc)
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
        """Flush everything committed so far (as of a refreshed view); returns rows flushed."""
        with self.lock:
            self._outbox.refresh()
            target = self._outbox.last_seq()
            total = 0
            while self._outbox.intent() is not None or self.flushed_seq < target:
                total += self.flush_once()
            return total

    def flush_once(self) -> int:
        with self.lock, self._outbox.quiesce:
            outbox = self._outbox
            intent = outbox.intent()
            if intent is None:
                first = self.flushed_seq + 1
                last = min(outbox.last_seq(), first + self._max_rows - 1)
                if last < first:
                    return 0
                outbox.record_intent(first, last)
            else:
                first, last = intent
            rows = outbox.rows(first, last)
            groups: dict[int, tuple[FeatureGroup, bool]] = {}
            for gid in dict.fromkeys(rows.group_ids.tolist()):
                found = self._groups(gid)
                if found is not None:
                    groups[gid] = found
            self._writer.write(rows, first, last, groups)
            outbox.trim(first, last)
            self.flushes += 1
            return len(rows)

    def _run(self) -> None:
        # Wake every second to flush early when many rows are pending (bounding the outbox);
        # otherwise flush once per interval (bounding the delay to Parquet). After a failure,
        # retry with backoff instead.
        waited = 0.0
        tick = min(1.0, self._interval_s)
        while not self._stop.wait(tick):
            waited += tick
            try:
                self._outbox.refresh()
            except Exception as exc:  # a secondary that cannot catch up: the flush reports it
                log.debug("refreshing the outbox view failed: %s", exc)
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
                      "retrying with backoff", exc,
                      exc_info=not isinstance(exc, OSError | StorageError))  # else: a bug
        else:
            log.warning("flushing the outbox to Parquet failed again: %s", exc)

    def _recovered(self) -> None:
        if self.failing:
            self.failing = False
            self._retry.reset()
            STORAGE_DEGRADED.labels("offline").set(0)
            STORAGE_RESUMES.labels("offline").inc()
            log.warning("the outbox flushes to Parquet again")


class OutboxFlusher(HistoryFlusher):
    """The flusher of the process owning the primary (a `PrimaryOutbox`)."""

    def __init__(
        self,
        rocks: RocksDB,
        store: RocksDBOnlineStore,
        writer: ParquetOfflineWriter,
        groups: GroupLookup,
        interval_s: float,
        max_rows: int,
    ) -> None:
        super().__init__(PrimaryOutbox(rocks, store), writer, groups, interval_s, max_rows)
