"""The `OnlineStore` contract (server/store.py), run against every implementation.

Each implementation is a context manager factory in IMPLEMENTATIONS taking a tmp_path and
yielding a store; adding one (e.g. the multi-process writer client) is one line there. The
implementation-specific tests (group commit, reopen, cancellation) stay in test_online_store.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest

from tessera.core.aggregation.spec import AggregationDefinition
from tessera.core.errors import PreconditionFailedError, StorageError
from tessera.core.keys import aggregate_key, record_key
from tessera.core.records import validate_record
from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import online_store
from tessera.server.aggregates import read_features
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.process_store import ProcessOnlineStore
from tessera.server.rocksdb import open_rocksdb
from tessera.server.store import (
    Committed,
    DeleteOp,
    OnlineStore,
    OpResult,
    PutOp,
    StaleReadError,
    now_us,
    payload_digest,
)
from tessera.server.writes import put_op
from tests.writerproc import WriterProcess


@contextlib.contextmanager
def rocksdb_store(tmp_path: Path) -> Iterator[OnlineStore]:
    rocks = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    try:
        yield store
    finally:
        store.close()
        rocks.close()


@contextlib.contextmanager
def process_store(tmp_path: Path) -> Iterator[OnlineStore]:
    """The two-process store: a real writer process, reads from a secondary."""
    with WriterProcess(tmp_path / "data"):
        store = ProcessOnlineStore(tmp_path / "data", tmp_path / "secondary", block_cache_mb=8)
        try:
            yield store
        finally:
            store.close()


IMPLEMENTATIONS: dict[str, Callable[[Path], AbstractContextManager[OnlineStore]]] = {
    "rocksdb": rocksdb_store,
    "process": process_store,
}

G = 1
NOW = 10**15  # "now" for reads, in microseconds (far past every event time below)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    with IMPLEMENTATIONS[request.param](tmp_path) as s:
        yield s


def commit(store: OnlineStore, *ops: PutOp | DeleteOp) -> Committed:
    fut: Future[Committed] = store.submit(list(ops))
    return fut.result(timeout=30)


def write(store: OnlineStore, *ops: PutOp | DeleteOp) -> list[OpResult]:
    return commit(store, *ops).results


def put(rid: str, et: int, payload: bytes = b"p", expires: int | None = None,
        group: int = G) -> PutOp:
    return PutOp(group, record_key(group, rid), et, expires, payload)


def delete(rid: str, et: int, hard: bool) -> DeleteOp:
    return DeleteOp(G, record_key(G, rid), et, hard)


def read(store: OnlineStore, rid: str, at: int = NOW, group: int = G) -> bytes | None:
    hit = store.get(record_key(group, rid), at)
    return None if hit is None else bytes(hit[0])


# --- ordering ------------------------------------------------------------------------------------


def test_put_with_older_event_time_keeps_online_record(store: OnlineStore) -> None:
    assert write(store, put("a", 5, b"v5")) == [True]
    assert write(store, put("a", 3, b"v3")) == [False]
    assert read(store, "a") == b"v5"


def test_equal_event_time_the_later_write_wins(store: OnlineStore) -> None:
    assert write(store, put("a", 5, b"first")) == [True]
    assert write(store, put("a", 5, b"second")) == [True]
    assert read(store, "a") == b"second"


def test_ordering_rules_apply_within_one_submission(store: OnlineStore) -> None:
    results = write(store, put("a", 5, b"v5"), put("a", 3, b"v3"), put("a", 5, b"v5b"),
                    put("b", 1, b"b1"))
    assert results == [True, False, True, True]
    assert read(store, "a") == b"v5b" and read(store, "b") == b"b1"


def test_a_newer_put_overwrites(store: OnlineStore) -> None:
    write(store, put("a", 5, b"v5"))
    assert write(store, put("a", 6, b"v6")) == [True]
    assert read(store, "a") == b"v6"


# --- deletes -------------------------------------------------------------------------------------


def test_soft_delete_leaves_a_tombstone_that_hides_older_puts(store: OnlineStore) -> None:
    write(store, put("a", 5))
    assert write(store, delete("a", 7, hard=False)) == [True]
    assert read(store, "a") is None
    assert write(store, put("a", 6, b"late")) == [False], "older than the tombstone"
    assert read(store, "a") is None
    assert write(store, put("a", 8, b"back")) == [True]
    assert read(store, "a") == b"back"


def test_soft_delete_older_than_the_record_is_not_applied(store: OnlineStore) -> None:
    write(store, put("a", 5, b"kept"))
    assert write(store, delete("a", 4, hard=False)) == [False]
    assert read(store, "a") == b"kept"


def test_hard_delete_older_than_the_record_is_refused(store: OnlineStore) -> None:
    write(store, put("a", 5, b"kept"))
    (result,) = write(store, delete("a", 4, hard=True))
    assert isinstance(result, PreconditionFailedError)
    assert read(store, "a") == b"kept"


def test_hard_delete_removes_the_record_without_a_tombstone(store: OnlineStore) -> None:
    write(store, put("a", 5))
    assert write(store, delete("a", 5, hard=True)) == [True]
    assert read(store, "a") is None
    assert write(store, put("a", 1, b"older")) == [True], "nothing left to be older than"
    assert read(store, "a") == b"older"


# --- TTL -----------------------------------------------------------------------------------------


def test_an_expired_record_reads_as_absent(store: OnlineStore) -> None:
    write(store, put("a", 100, b"x", expires=200))
    hit = store.get(record_key(G, "a"), 150)
    assert hit is not None and bytes(hit[0]) == b"x" and hit[1] == 200
    assert read(store, "a", at=199) == b"x"
    assert read(store, "a", at=200) is None
    assert store.multi_get([record_key(G, "a")], 200) == [None]


def test_an_expired_record_does_not_block_older_puts(store: OnlineStore) -> None:
    write(store, put("a", 100, b"x", expires=200))  # expired at write time (now is far later)
    assert write(store, put("a", 50, b"older")) == [True]
    assert read(store, "a") == b"older"


def test_purge_expired_reclaims_only_expired_records(store: OnlineStore) -> None:
    write(store, put("gone", 1, expires=10), put("kept", 1, b"k", expires=10**18),
          put("plain", 1, b"p"))
    assert store.purge_expired(at_us=100, limit=1000) == 1
    assert read(store, "gone", at=5) is None, "purged: gone even at a time it was live"
    assert read(store, "kept", at=100) == b"k" and read(store, "plain") == b"p"
    assert store.purge_expired(at_us=100, limit=1000) == 0


def test_purge_expired_keeps_a_record_rewritten_with_a_later_expiry(store: OnlineStore) -> None:
    write(store, put("a", 1, expires=10))
    write(store, put("a", 2, b"new", expires=10**18))
    store.purge_expired(at_us=100, limit=1000)
    assert read(store, "a", at=100) == b"new"


# --- multi_get, drop_group -----------------------------------------------------------------------


def test_multi_get_answers_each_key_in_order(store: OnlineStore) -> None:
    write(store, put("a", 1, b"A"), put("b", 1, b"B", expires=50), put("c", 1, b"C"),
          delete("c", 2, hard=False))
    keys = [record_key(G, k) for k in ["b", "missing", "a", "c", "a"]]
    hits = store.multi_get(keys, 40)
    assert [None if h is None else (bytes(h[0]), h[1]) for h in hits] == [
        (b"B", 50), None, (b"A", None), None, (b"A", None)
    ]
    assert store.multi_get([], NOW) == []


def test_drop_group_removes_its_records_only_and_refuses_later_writes(
    store: OnlineStore,
) -> None:
    write(store, put("a", 1), put("b", 1), put("a", 1, b"other", group=2))
    assert store.drop_group(G).result(timeout=30).results == [True]
    assert read(store, "a") is None and read(store, "b") is None
    assert read(store, "a", group=2) == b"other"
    (late,) = write(store, put("c", 1))
    assert isinstance(late, StorageError)


def test_a_group_without_an_online_store_writes_nothing_online(store: OnlineStore) -> None:
    op = PutOp(G, record_key(G, "a"), 1, None, b"p", online=False)
    assert write(store, op) == [True]
    assert read(store, "a") is None


# --- aggregates ----------------------------------------------------------------------------------


def _counting_schema() -> CompiledSchema:
    definition = FeatureGroupDefinition(
        feature_group_name="clicks", record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of("user_id", "String"),
                             FeatureDefinition.of("ts", "Fractional")],
        aggregations=[AggregationDefinition(name="n_1h", function="count", window="1h")],
    )
    return CompiledSchema.of(FeatureGroup(definition=definition, feature_group_id=G,
                                          creation_time=0.0, last_modified_time=0.0))


def _count(schema: CompiledSchema, state: bytes | None) -> int | None:
    plan = schema.aggregations
    assert plan is not None
    (encoded,) = read_features(plan, [[state]], [[True]], now_us())
    (fv,) = pb.Record.FromString(encoded).features
    assert fv.feature_name == "n_1h"
    return fv.int_value if fv.HasField("int_value") else None


def test_every_accepted_put_is_an_aggregate_event(store: OnlineStore) -> None:
    schema = _counting_schema()
    now_s = time.time()

    def event(rid: str, age_s: float) -> PutOp:
        record = to_record({"user_id": rid, "ts": now_s - age_s})
        return put_op(schema, validate_record(schema, record), now_us(), "")

    # The second put of u1 is older than the stored record: not applied online, still counted.
    assert write(store, event("u1", 1.0), event("u1", 2.0), event("u2", 1.0)) == [
        True, False, True
    ]
    write(store, event("u1", 0.5))
    key = [aggregate_key(G, 0, rid) for rid in ("u1", "u2", "nobody")]
    u1, u2, nobody = store.get_aggregates(key)
    assert nobody is None
    assert _count(schema, u1) == 3 and _count(schema, u2) == 1
    assert store.get_aggregates([]) == []


def test_drop_group_removes_its_aggregates(store: OnlineStore) -> None:
    schema = _counting_schema()
    record = to_record({"user_id": "u1", "ts": time.time()})
    write(store, put_op(schema, validate_record(schema, record), now_us(), ""))
    assert store.get_aggregates([aggregate_key(G, 0, "u1")]) != [None]
    store.drop_group(G).result(timeout=30)
    assert store.get_aggregates([aggregate_key(G, 0, "u1")]) == [None]


# --- commit sequence (read-your-writes tokens) ---------------------------------------------------


def test_a_commits_seq_is_visible_once_acknowledged(store: OnlineStore) -> None:
    committed = commit(store, put("a", 1, b"A"))
    assert committed.results == [True]
    assert store.visible_seq() >= committed.seq > 0
    assert store.wait_visible(committed.seq, timeout_s=5.0)
    assert read(store, "a") == b"A"


def test_later_commits_have_larger_seqs(store: OnlineStore) -> None:
    seqs = [commit(store, put(f"r{i}", 1)).seq for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    later = store.drop_group(G).result(timeout=30).seq
    assert later > seqs[-1]
    assert store.visible_seq() >= later


def test_ops_committed_together_share_a_seq_covering_all_of_them(store: OnlineStore) -> None:
    futures = [store.submit([put(f"c{i}", 1, b"%d" % i)]) for i in range(20)]
    done = [f.result(timeout=30) for f in futures]
    assert all(c.results == [True] for c in done)
    top = max(c.seq for c in done)
    assert store.wait_visible(top, timeout_s=5.0)
    assert [read(store, f"c{i}") for i in range(20)] == [b"%d" % i for i in range(20)]


def test_a_stale_write_is_still_acknowledged_with_a_seq(store: OnlineStore) -> None:
    first = commit(store, put("a", 5))
    stale = commit(store, put("a", 3))
    assert stale.results == [False] and stale.seq >= first.seq
    assert store.wait_visible(stale.seq, timeout_s=5.0)


def test_the_rocksdb_store_refuses_a_seq_it_never_issued_without_waiting(
    tmp_path: Path,
) -> None:
    # The single-process store reads its own primary: a seq ahead of it can never be visible.
    with rocksdb_store(tmp_path) as store:
        seq = commit(store, put("a", 1)).seq
        start = time.monotonic()
        with pytest.raises(PreconditionFailedError, match="not issued by this Tessera"):
            store.wait_visible(seq + 1000, timeout_s=5.0)
        assert time.monotonic() - start < 1.0
        assert store.wait_visible(0, timeout_s=0.0)


# --- scan (ListRecords) --------------------------------------------------------------------------


def scan_all(store: OnlineStore, limit: int, at: int = NOW, include_deleted: bool = False,
             group: int = G) -> list[list[str]]:
    """Every page of a group's scan, following `resume_after`."""
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = store.scan(group, after, limit, at, include_deleted)
        pages.append(page.record_ids)
        if page.resume_after is None:
            return pages
        assert len(pages) < 100, "the scan does not end"
        after = page.resume_after


def test_scan_lists_a_groups_live_records_in_key_order_a_page_at_a_time(
    store: OnlineStore,
) -> None:
    committed = commit(store, *[put(f"r{i}", 1) for i in (3, 1, 4, 0, 2)], put("r9", 1, group=2),
                       put("other", 1, group=0))
    assert store.wait_visible(committed.seq, timeout_s=5.0)
    assert scan_all(store, limit=2) == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert scan_all(store, limit=5) == [["r0", "r1", "r2", "r3", "r4"]]
    assert scan_all(store, limit=100, group=2) == [["r9"]]
    assert scan_all(store, limit=10, group=7) == [[]]
    # A page resumes after an id that is a prefix of others.
    write(store, put("a", 1, group=3), put("a\x00", 1, group=3), put("ab", 1, group=3),
          put("b", 1, group=3))
    page = store.scan(3, "a", 10, NOW)
    assert page.record_ids == ["a\x00", "ab", "b"] and page.resume_after is None
    assert store.scan(3, "zzz", 10, NOW).record_ids == []


def test_scan_skips_deleted_and_expired_records_unless_soft_deleted_are_asked_for(
    store: OnlineStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(store, put("a", 1), put("b", 1), put("c", 1, expires=50), put("d", 1), put("e", 1))
    write(store, delete("b", 2, hard=False), delete("d", 2, hard=True))
    assert scan_all(store, limit=10, at=40) == [["a", "c", "e"]]
    assert scan_all(store, limit=10, at=60) == [["a", "e"]]
    assert scan_all(store, limit=10, at=60, include_deleted=True) == [["a", "b", "e"]]
    # Skipped entries still move the page on: a page may be short.
    assert scan_all(store, limit=1, at=60) == [["a"], ["e"]]
    # A page examines a bounded number of entries, so a run of tombstones ends it early.
    monkeypatch.setattr(online_store, "SCAN_MAX_EXAMINED", 2)
    write(store, delete("a", 2, hard=False))
    page = store.scan(G, None, 10, 60)
    assert page.record_ids == [] and page.resume_after == "b"
    assert scan_all(store, limit=10, at=60) == [[], ["e"]]


# --- conditional puts (UpdateRecord) -------------------------------------------------------------


def test_a_conditional_put_applies_only_over_the_record_it_was_computed_from(
    store: OnlineStore,
) -> None:
    write(store, put("a", 5, b"v5"), put("gone", 5, b"v5"), delete("gone", 6, hard=False))
    seen = payload_digest(b"v5")
    assert write(store, replace(put("a", 6, b"v6"), if_match=seen)) == [True]
    assert read(store, "a") == b"v6"
    (stale,) = write(store, replace(put("a", 7, b"v7"), if_match=seen))
    assert isinstance(stale, StaleReadError) and "read it again" in stale.message
    assert read(store, "a") == b"v6"
    # Of two computed from one read, in one commit, only the first applies.
    seen = payload_digest(b"v6")
    first, second = write(store, replace(put("a", 6, b"x"), if_match=seen),
                          replace(put("a", 6, b"y"), if_match=seen))
    assert first is True and isinstance(second, StaleReadError)
    assert read(store, "a") == b"x"
    # Over a deleted or a missing record: refused, nothing written.
    for rid in ("gone", "nobody"):
        (result,) = write(store, replace(put(rid, 7, b"v7"), if_match=payload_digest(b"v5")))
        assert isinstance(result, StaleReadError)
        assert read(store, rid) is None
