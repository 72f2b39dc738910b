"""The outbox flusher: moves history rows from RocksDB's outbox to the offline store's Parquet.

A flush takes the commit range (flushed, last committed], first records that range as its
intent (durably), writes the range's Parquet files, then trims the range from the outbox, moves
the flushed mark and clears the intent in one synced batch. After a crash anywhere in between,
the intent is replayed with the same range, hence the same file names and contents: every
acknowledged write reaches Parquet exactly once.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable

import rocksdict

from tessera.core.schema import FeatureGroup
from tessera.server import history
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import (
    FLUSHED_MARK,
    OUTBOX_ROW,
    RocksDBOnlineStore,
    outbox_key,
    outbox_seq,
    pack_mark,
    read_mark,
)
from tessera.server.rocksdb import OUTBOX, RocksDB

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
        self._handle = rocks.handle(OUTBOX)
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self.flushes = 0
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
        """Stop the thread and flush everything committed (call after the writer drained)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush_all()

    def flush_all(self) -> int:
        """Flush everything committed so far; returns rows flushed."""
        target = self._store.last_seq
        total = 0
        while self._read_intent() is not None or self.flushed_seq < target:
            total += self.flush_once()
        return total

    def flush_once(self) -> int:
        with self._lock:
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
            for row in rows:
                if row.group_id not in groups:
                    found = self._groups(row.group_id)
                    if found is not None:
                        groups[row.group_id] = found
            self._writer.write(rows, first, last, groups)
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.delete_range(outbox_key(first), outbox_key(last + 1), self._handle)
            wb.put(FLUSHED_MARK, pack_mark(last), self._handle)
            wb.delete(INTENT_MARK, self._handle)
            self._rocks.db.write(wb, self._sync)
            self.flushes += 1
            return len(rows)

    def _read_intent(self) -> tuple[int, int] | None:
        raw = self._rocks.outbox.get(INTENT_MARK)
        if not isinstance(raw, bytes):
            return None
        first, last = _RANGE.unpack(raw)
        return int(first), int(last)

    def _rows(self, first: int, last: int) -> list[history.HistoryRow]:
        rows = []
        it = self._rocks.outbox.iter()
        it.seek(outbox_key(first))
        while it.valid():
            key = it.key()
            if not key.startswith(OUTBOX_ROW):
                break
            seq = outbox_seq(key)
            if seq > last:
                break
            rows.append(history.decode(seq, it.value()))
            it.next()
        del it
        return rows

    def _run(self) -> None:
        # Wake every second to flush early when many rows are pending (bounding the outbox);
        # otherwise flush once per interval (bounding the delay to Parquet).
        waited = 0.0
        tick = min(1.0, self._interval_s)
        while not self._stop.wait(tick):
            waited += tick
            if waited < self._interval_s and self.pending() < self._max_rows:
                continue
            waited = 0.0
            try:
                self.flush_all()
            except Exception:
                log.exception("flushing the outbox to Parquet failed; retrying next interval")
