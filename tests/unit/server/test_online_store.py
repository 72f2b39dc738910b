"""The RocksDB online store on a real DB in tmp_path: ordering rules, group commit, TTL purge."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core.errors import PreconditionFailedError, StorageError
from tessera.core.keys import record_key
from tessera.server.online_store import DeleteOp, PutOp, RocksDBOnlineStore
from tessera.server.rocksdb import RocksDB, open_rocksdb

G = 1
NOW = 10**15  # "now" for reads, in microseconds


@pytest.fixture
def rocks(tmp_path: Path) -> Iterator[RocksDB]:
    db = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    yield db
    db.close()


@pytest.fixture
def store(rocks: RocksDB) -> Iterator[RocksDBOnlineStore]:
    s = RocksDBOnlineStore(rocks)
    yield s
    s.close()


def put(rid: str, et: int, payload: bytes = b"p", expires: int | None = None) -> PutOp:
    return PutOp(G, record_key(G, rid), et, expires, payload)


def payload(store: RocksDBOnlineStore, rid: str, at: int = NOW) -> bytes | None:
    hit = store.get(record_key(G, rid), at)
    return None if hit is None else bytes(hit[0])


def test_ordering_rules_apply_within_one_batch(store: RocksDBOnlineStore) -> None:
    results = store.write([put("a", 5, b"v5"), put("a", 3, b"v3"), put("a", 5, b"v5b"),
                           put("b", 1, b"b1")])
    assert results == [True, False, True, True]
    assert payload(store, "a") == b"v5b" and payload(store, "b") == b"b1"


def test_tombstone_keeps_its_event_time(store: RocksDBOnlineStore) -> None:
    store.write([put("a", 5)])
    assert store.write([DeleteOp(G, record_key(G, "a"), 7, hard=False)]) == [True]
    assert payload(store, "a") is None
    assert store.write([put("a", 6)]) == [False]
    assert store.write([put("a", 8, b"back")]) == [True]
    assert payload(store, "a") == b"back"


def test_hard_delete_older_than_record_is_refused(store: RocksDBOnlineStore) -> None:
    store.write([put("a", 5)])
    (result,) = store.write([DeleteOp(G, record_key(G, "a"), 4, hard=True)])
    assert isinstance(result, PreconditionFailedError)
    assert store.write([DeleteOp(G, record_key(G, "a"), 5, hard=True)]) == [True]
    assert store.get(record_key(G, "a"), NOW) is None


def test_expired_record_reads_absent_and_does_not_block_older_puts(
    store: RocksDBOnlineStore,
) -> None:
    store.write([put("a", 100, b"x", expires=200)])
    assert payload(store, "a", at=199) == b"x"
    assert payload(store, "a", at=200) is None
    hit = store.get(record_key(G, "a"), 150)
    assert hit is not None and hit[1] == 200
    # At write time ("now" is far past 200) the expired record is as if absent.
    assert store.write([put("a", 50, b"older")]) == [True]


def test_purge_removes_only_expired_records(store: RocksDBOnlineStore, rocks: RocksDB) -> None:
    store.write([put("gone", 1, expires=10), put("kept", 1, expires=10**18), put("plain", 1)])
    store.write([put("rewritten", 1, expires=10), put("rewritten", 2, expires=10**18)])
    assert store.purge_expired(at_us=100, limit=1000) == 2  # gone, and rewritten's stale entry
    assert {bytes(k)[4:] for k in rocks.records.keys()} == {b"kept", b"plain", b"rewritten"}
    assert store.purge_expired(at_us=100, limit=1000) == 0


def test_drop_group_removes_its_range_and_refuses_late_writes(store: RocksDBOnlineStore) -> None:
    other = PutOp(2, record_key(2, "a"), 1, None, b"other")
    store.write([put("a", 1), put("b", 1), other])
    store.drop_group(G).result()
    assert payload(store, "a") is None and payload(store, "b") is None
    assert store.get(record_key(2, "a"), NOW) is not None
    (late,) = store.write([put("c", 1)])
    assert isinstance(late, StorageError)


def test_concurrent_writers_share_commits(store: RocksDBOnlineStore) -> None:
    def writer(n: int) -> None:
        for i in range(200):
            assert store.write([put(f"{n}-{i}", i)]) == [True]

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.committed_ops == 1600
    assert store.commits < 1600  # group commit: several writes per fsync
    assert payload(store, "7-199") == b"p"


def test_data_and_options_survive_reopen(tmp_path: Path) -> None:
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    store.write([put("a", 1, b"durable")])
    store.close()
    rocks.close()
    del store, rocks  # the lock is released with the last reference
    gc.collect()
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    try:
        assert bytes(rocks.records.get(record_key(G, "a")))[17:] == b"durable"
        assert "bloomfilter" in (tmp_path / "db" / _latest_options(tmp_path / "db")).read_text()
    finally:
        rocks.close()


def _latest_options(path: Path) -> str:
    return sorted(p.name for p in path.glob("OPTIONS-*"))[-1]


def test_a_cancelled_write_is_committed_and_the_writer_keeps_going(
    store: RocksDBOnlineStore,
) -> None:
    # A large batch keeps the writer busy while the next write's caller gives up on it.
    busy = store.submit([put(f"bulk{i}", 1) for i in range(20_000)])
    abandoned = store.submit([put("gave-up", 1, b"late")])
    abandoned.cancel()
    busy.result()
    assert store.submit([put("after", 1, b"ok")]).result(timeout=10).results == [True]
    assert payload(store, "after") == b"ok"
    assert payload(store, "gave-up") == b"late"  # committed all the same
