"""The history process's side of the outbox (server/history_process.py `SecondaryOutbox`) and
the writer's checks of its requests (server/outbox.py `OutboxMarks`), on a real RocksDB primary
and secondary. The writer's socket is replaced by a client applying the marks in this process;
tests/integration/test_history_process.py runs the real processes."""

from __future__ import annotations

import gc
from concurrent.futures import Future
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tessera.core.errors import ConflictError, InvalidRequestError
from tessera.server.history_process import SecondaryOutbox
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.outbox import HistoryFlusher, OutboxMarks, PrimaryOutbox
from tessera.server.rocksdb import open_rocksdb
from tests.unit.server.test_outbox import GROUP, CrashAfterFiles, put, read_all


class MarksClient:
    """What the writer process does for OutboxIntent / TrimOutbox, in this process."""

    def __init__(self, marks: OutboxMarks, store: RocksDBOnlineStore) -> None:
        self.marks, self.store = marks, store
        self.requests = 0

    def _done(self, fn: object, *args: int) -> Future[int]:
        self.requests += 1
        fut: Future[int] = Future()
        try:
            fn(*args)  # type: ignore[operator]
            fut.set_result(self.store.visible_seq())
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def record_outbox_intent(self, first: int, last: int) -> Future[int]:
        return self._done(self.marks.record_intent, first, last, self.store.last_seq)

    def trim_outbox(self, first: int, last: int) -> Future[int]:
        return self._done(self.marks.trim, first, last)


def test_the_writer_refuses_a_stale_intent_and_a_foreign_trim_and_repeats_harmlessly(
    tmp_path: Path,
) -> None:
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    store.write([put(i) for i in range(10)])
    marks = OutboxMarks(rocks)
    with pytest.raises(InvalidRequestError, match="does not follow the flushed mark 0"):
        marks.record_intent(2, 5, store.last_seq)  # a gap
    with pytest.raises(InvalidRequestError, match="last: 10"):
        marks.record_intent(1, 11, store.last_seq)  # past the last commit
    marks.record_intent(1, 5, store.last_seq)
    marks.record_intent(1, 5, store.last_seq)  # a retried request: nothing to do
    with pytest.raises(ConflictError, match="has the flush intent 1..5"):
        marks.record_intent(1, 6, store.last_seq)
    with pytest.raises(ConflictError, match="cannot trim 1..4"):
        marks.trim(1, 4)
    marks.trim(1, 5)
    assert marks.intent() is None and marks.flushed_seq() == 5
    assert rocks.outbox.get(b"r" + (5).to_bytes(8, "big")) is None
    marks.trim(1, 5)  # again (its reply was lost): already made
    assert marks.flushed_seq() == 5
    assert isinstance(rocks.outbox.get(b"r" + (6).to_bytes(8, "big")), bytes)
    store.close()
    rocks.close()


def test_a_flush_from_a_secondary_replays_an_interrupted_range_exactly_once(
    tmp_path: Path,
) -> None:
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    store.write([put(i, day=i % 3) for i in range(100)])
    client = MarksClient(OutboxMarks(rocks), store)
    outbox = SecondaryOutbox(tmp_path / "db", tmp_path / "sec", client)  # type: ignore[arg-type]
    assert outbox.last_seq() == 100 and outbox.flushed_seq() == 0
    lookup = {1: (GROUP, False)}.get
    crashing = HistoryFlusher(outbox, CrashAfterFiles(tmp_path / "off"), lookup, 60, 1000)
    with pytest.raises(RuntimeError):
        crashing.flush_once()  # the history process dies after the files, before the trim
    assert len(read_all(tmp_path / "off")) == 100
    store.write([put(i) for i in range(100, 120)])  # the writer goes on meanwhile
    outbox.close()
    del outbox, crashing
    gc.collect()

    outbox = SecondaryOutbox(tmp_path / "db", tmp_path / "sec", client)  # type: ignore[arg-type]
    assert outbox.intent() == (1, 100)  # read from the secondary: the writer's mark
    flusher = HistoryFlusher(outbox, ParquetOfflineWriter(tmp_path / "off"), lookup, 60, 1000)
    assert flusher.flush_all() == 120  # the interrupted range again, then [101, 120]
    rows = read_all(tmp_path / "off")
    assert sorted(r["tessera_seq"] for r in rows) == list(range(1, 121))
    assert flusher.pending() == 0 and outbox.flushed_seq() == 120 and outbox.intent() is None
    assert sorted(f.name for f in (tmp_path / "off").glob("g/event_date=1970-01-01/*")) == [
        "part-00000000000000000001-00000000000000000100.parquet",
        "part-00000000000000000101-00000000000000000120.parquet"]
    assert flusher.flush_all() == 0
    outbox.close()
    store.close()
    rocks.close()


def test_retiring_a_group_merges_history_flushed_after_its_delete(tmp_path: Path) -> None:
    # Rows flushed once the group is known deleted go to .retired/<name>.<id> already; the
    # folder moved aside after them joins them instead of nesting under them.
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    offline = ParquetOfflineWriter(tmp_path / "off")
    live = HistoryFlusher(PrimaryOutbox(rocks, store), offline, {1: (GROUP, False)}.get, 60, 1000)
    store.write([put(i) for i in range(10)])
    live.flush_all()
    store.write([put(i) for i in range(10, 15)])
    retired = HistoryFlusher(PrimaryOutbox(rocks, store), offline, {1: (GROUP, True)}.get, 60, 1000)
    retired.flush_all()
    offline.retire_group(GROUP)
    offline.retire_group(GROUP)  # again: nothing to do
    assert not (tmp_path / "off" / "g").exists()
    files = sorted(p.relative_to(tmp_path / "off" / ".retired" / "g.1").as_posix()
                   for p in (tmp_path / "off" / ".retired" / "g.1").rglob("*.parquet"))
    assert files == ["event_date=1970-01-01/part-00000000000000000001-00000000000000000010.parquet",
                     "event_date=1970-01-01/part-00000000000000000011-00000000000000000015.parquet"]
    seqs = sorted(s for f in files for s in pq.read_table(
        tmp_path / "off" / ".retired" / "g.1" / f).column("tessera_seq").to_pylist())
    assert seqs == list(range(1, 16))
    store.close()
    rocks.close()
