"""PutRecords in bulk (server/put_batch.py, server/batch_kernels.py, core/record_scan.py's request
scanners) against the per-record path it stands in for: the same keys, payloads, history rows,
event times and expiries, or no batch at all (the per-record path decides); the writer's commit
of a PutBatch against the same puts one by one (results and every column family); a PutBatch
through every OnlineStore."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core import record_scan
from tessera.core.errors import InvalidRequestError
from tessera.core.records import load_compiled_validation, validate_record_reference
from tessera.core.schema import CompiledSchema
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import batch_kernels as bk
from tessera.server import online_store, put_batch
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.rocksdb import open_rocksdb
from tessera.server.store import (
    Committed,
    DeleteOp,
    OnlineStore,
    Op,
    OpResult,
    PutBatch,
    PutOp,
)
from tessera.server.writes import put_op
from tests.unit.core.test_records_compiled import SCHEMAS, _records, _schema
from tests.unit.server.test_online_store_contract import IMPLEMENTATIONS

API_US = 1_700_000_000_123_456


def _reference(schema: CompiledSchema, data: bytes) -> list[PutOp] | str:
    """The per-record path's ops (as the servicer builds them), or its error message."""
    try:
        req = pb.PutRecordsRequest.FromString(data)
        ttl_s = req.ttl_s if req.HasField("ttl_s") else None
        if req.sources and len(req.sources) != len(req.records):
            return "sources"
        return [put_op(schema, validate_record_reference(schema, r, ttl_s, f"records[{i}]"),
                       API_US, req.sources[i] if req.sources else "")
                for i, r in enumerate(req.records)]
    except InvalidRequestError as exc:
        return exc.message


def _bulk(schema: CompiledSchema, data: bytes) -> PutBatch | None:
    request = put_batch.scan(data)
    if request is None:
        return None
    return put_batch.encode(schema, data, request, API_US)


def _columns(batch: PutBatch) -> list[tuple[object, ...]]:
    keys = bk.split(batch.keys, batch.key_offsets.tolist())
    payloads = bk.split(batch.payloads, batch.payload_offsets.tolist())
    rows: list[bytes | None] = [None] * len(batch)
    if batch.history is not None and batch.history_offsets is not None:
        rows = list(bk.split(batch.history, batch.history_offsets.tolist()))
    expires = [None] * len(batch) if batch.expires_at_us is None else batch.expires_at_us.tolist()
    return list(zip(keys, batch.event_time_us.tolist(), expires, payloads, rows, strict=True))


def _assert_same(batch: PutBatch, ops: list[PutOp]) -> None:
    assert _columns(batch) == [
        (op.key, op.event_time_us, op.expires_at_us, op.payload, op.history) for op in ops]
    assert {(batch.group_id, batch.online)} == {(op.group_id, op.online) for op in ops}
    events = [op.aggregate for op in ops]
    if batch.aggregates is None:
        assert events == [None] * len(ops)
        return
    columns = batch.aggregates
    for sid, stream in enumerate(columns.plan.streams):
        assert list(columns.keys[sid]) == [e.inputs.keys[sid] for e in events if e]
        expected = np.array([e.inputs.values[sid] for e in events if e], np.float64)
        np.testing.assert_array_equal(columns.values[sid], expected.reshape(-1, stream.n_sources))


@st.composite
def _requests(draw: st.DrawFn) -> tuple[CompiledSchema, bytes]:
    drawn = draw(st.lists(_records(), min_size=1, max_size=4))
    schema = drawn[0][0]
    req = pb.PutRecordsRequest(feature_group_name="g")
    for s, record in drawn:
        if s is schema:
            req.records.add().CopyFrom(record)
    ttl = draw(st.sampled_from([None, None, 3600.0, 0.5, -1.0, math.nan, 1e12]))
    if ttl is not None:
        req.ttl_s = ttl
    if draw(st.booleans()):
        req.sources.extend(draw(st.lists(st.text(max_size=5), min_size=len(req.records),
                                         max_size=len(req.records) + draw(st.sampled_from(
                                             [0, 0, 0, 1])))))
    return schema, req.SerializeToString()


@settings(max_examples=250, deadline=None)
@given(_requests())
def test_a_bulk_batch_equals_the_per_record_paths_ops(drawn: tuple[CompiledSchema, bytes]) -> None:
    schema, data = drawn
    reference = _reference(schema, data)
    request = put_batch.scan(data)
    assert request is not None and request.group_name == "g"
    batch = _bulk(schema, data)
    if batch is not None:
        assert not isinstance(reference, str), f"bulk accepted what the reference refuses: {reference}"
        _assert_same(batch, reference)


def test_the_bulk_path_takes_the_common_case() -> None:
    assert load_compiled_validation()
    for schema in (s for s in SCHEMAS if s.aggregations is None):
        req = pb.PutRecordsRequest(feature_group_name="g", ttl_s=60.0)
        for i in (0, -7, 2**63 - 1, -(2**63), 12345):
            record = req.records.add()
            rid = record.features.add(feature_name="id")
            if schema.record_identifier.oneof == "int_value":
                rid.int_value = i
            else:
                rid.string_value = f"ü{i}"
            et = record.features.add(feature_name="ts")
            if schema.event_time.oneof == "float_value":
                et.float_value = 1.7e9 + 0.25
            else:
                et.string_value = "2026-01-02T03:04:05.5+02:00"
            record.features.add(feature_name="ss").string_list.values.extend(["é", "b"])
            record.features.add(feature_name="lf").float_list.values.extend([0.5, 0.5])
            record.features.add(feature_name="v").vector_value = np.ones(3, "<f4").tobytes()
            req.sources.append("kafka:t/0/" + "x" * (i % 70))
        data = req.SerializeToString()
        batch = _bulk(schema, data)
        assert batch is not None
        reference = _reference(schema, data)
        assert not isinstance(reference, str)
        _assert_same(batch, reference)


def test_a_long_source_is_cut_as_the_per_record_path_cuts_it() -> None:
    schema = SCHEMAS[0]
    req = pb.PutRecordsRequest(feature_group_name="g", sources=["é" * 40_000])
    record = req.records.add()
    record.features.add(feature_name="id", string_value="a")
    record.features.add(feature_name="ts", float_value=5.0)
    data = req.SerializeToString()
    batch = _bulk(schema, data)
    assert batch is not None
    reference = _reference(schema, data)
    assert not isinstance(reference, str)
    _assert_same(batch, reference)


def _feature(name: bytes, value: bytes) -> bytes:
    body = b"\x0a" + bytes((len(name),)) + name + value
    return b"\x0a" + bytes((len(body),)) + body


def _request(*records: bytes, tail: bytes = b"") -> bytes:
    out = b"\x0a\x01g"
    for r in records:
        out += b"\x12" + bytes((len(r),)) + r
    return out + tail


_ID_A = _feature(b"id", b"\x22\x01a")
_TS = _feature(b"ts", b"\x19" + np.float64(5.0).tobytes())


@pytest.mark.parametrize("data", [
    _request(_ID_A + _TS + _feature(b"s", b"\x22\x02\xc3\x28")),  # not UTF-8
    _request(_ID_A + _TS + _feature(b"s", b"\x22\x03\xed\xa0\x80")),  # a surrogate
    _request(_ID_A + _TS + _feature(b"ls", b"\x3a\x04\x0a\x02\xc0\xaf")),  # overlong, in a list
    _request(_ID_A + _TS, tail=b"\x22\x01\xff"),  # a source
    _request(_ID_A + _TS + _feature(b"li", b"\x2a\x03\x0a\x05\x01")),  # a truncated packed list
    _request(_ID_A + _TS, tail=b"\x0a\x01h"),  # the group name twice
    _request(_ID_A + _TS, tail=b"\x28\x01"),  # an unknown field
    _request(_ID_A + _TS)[:-3],  # cut short
])
def test_bytes_protobuf_would_refuse_or_read_otherwise_are_left_to_it(data: bytes) -> None:
    assert _bulk(SCHEMAS[0], data) is None


@pytest.mark.parametrize("data", [
    _request(_TS + _ID_A),  # the event time first
    _request(_ID_A + _TS + _feature(b"li", b"\x2a\x04\x08\x01\x08\x02")),  # not packed
])
def test_other_valid_encodings_are_stored_as_sent(data: bytes) -> None:
    """Any valid encoding of a record is stored as it was sent (what protobuf reads from it
    is the same record)."""
    batch = _bulk(SCHEMAS[0], data)
    assert batch is not None
    reference = _reference(SCHEMAS[0], data)
    assert not isinstance(reference, str)
    (key, et, _, payload, _), = _columns(batch)
    assert (key, et) == (reference[0].key, reference[0].event_time_us)
    assert pb.Record.FromString(payload) == pb.Record.FromString(reference[0].payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12) | st.text(max_size=6).map(lambda t: t.encode()))
def test_the_utf8_check_agrees_with_python(raw: bytes) -> None:
    try:
        raw.decode("utf-8")
        ok = True
    except UnicodeDecodeError:
        ok = False
    assert record_scan._utf8(raw, 0, len(raw)) is ok


def test_an_aggregation_groups_batch_carries_its_inputs() -> None:
    schema = _schema(aggregations=True)
    data = _request(_ID_A + _TS + _feature(b"s", b"\x22\x01k") + _feature(b"n", b"\x10\x07"))
    batch = _bulk(schema, data)
    assert batch is not None and batch.aggregates is not None
    reference = _reference(schema, data)
    assert not isinstance(reference, str)
    _assert_same(batch, reference)


# --- the writer's commit -------------------------------------------------------------------------


@contextlib.contextmanager
def _store(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RocksDBOnlineStore]:
    monkeypatch.setattr(online_store, "now_us", lambda: 10_000)  # one write time for both runs
    rocks = open_rocksdb(path, block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    try:
        yield store
    finally:
        store.close()
        rocks.close()


def _contents(store: RocksDBOnlineStore) -> dict[str, list[tuple[bytes, bytes]]]:
    rocks = store._rocks
    return {name: list(getattr(rocks, name).items()) for name in ("records", "expiry", "outbox")}


def _as_batch(ops: list[PutOp]) -> PutBatch:
    def blob(parts: list[bytes]) -> tuple[bytes, np.ndarray]:
        return b"".join(parts), np.cumsum([0] + [len(p) for p in parts], dtype=np.int64)

    keys, key_off = blob([op.key for op in ops])
    payloads, pay_off = blob([op.payload for op in ops])
    history = [op.history for op in ops]
    rows, row_off = blob([h for h in history if h is not None])
    expires = [op.expires_at_us for op in ops]
    with_history = history[0] is not None
    return PutBatch(ops[0].group_id, ops[0].online, keys, key_off, payloads, pay_off,
                    np.array([op.event_time_us for op in ops], np.int64),
                    None if expires[0] is None else np.array(expires, np.int64),
                    rows if with_history else None, row_off if with_history else None)


_OP = st.tuples(st.sampled_from(["put", "put", "put", "soft", "hard"]),
                st.sampled_from(["a", "b", "c"]), st.integers(1, 6))


@settings(max_examples=25, deadline=None)
@given(commits=st.lists(st.lists(_OP, min_size=1, max_size=8), min_size=1, max_size=4),
       ttl_us=st.sampled_from([None, 3_000, 20_000]), with_history=st.booleans(),
       online=st.booleans())
def test_a_batch_commits_as_its_puts_one_by_one(
    commits: list[list[tuple[str, str, int]]], ttl_us: int | None, with_history: bool,
    online: bool, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Stale puts, equal event times, a key twice in one batch, tombstones, expired records
    (now is 10,000 us; a ttl of 3,000 us makes expired records), the expiry index, outbox rows
    numbered in order; a batch beside deletes in one submission."""
    runs = []
    for as_batches in (False, True):
        path = tmp_path_factory.mktemp("db")
        with pytest.MonkeyPatch.context() as mp, _store(path, mp) as store:
            results = []
            for commit in commits:
                ops: list[Op] = []
                run: list[PutOp] = []
                for kind, rid, et in commit:
                    key = b"\0\0\0\1" + rid.encode()
                    if kind == "put":
                        payload = f"{rid}{et}".encode() * et
                        history = b"row:" + payload if with_history else None
                        run.append(PutOp(1, key, et * 1000, None if ttl_us is None
                                         else et * 1000 + ttl_us, payload, history, online))
                        continue
                    if run:
                        ops += [_as_batch(run)] if as_batches else run
                        run = []
                    ops.append(DeleteOp(1, key, et * 1000, kind == "hard",
                                        b"del" if with_history else None))
                if run:
                    ops += [_as_batch(run)] if as_batches else run
                results.append([r if isinstance(r, bool) else str(r)
                                for r in store.write(ops)])
            runs.append((results, _contents(store)))
    assert runs[0] == runs[1]


def test_a_batch_of_a_group_deleted_meanwhile_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _store(tmp_path / "db", monkeypatch) as store:
        batch = _as_batch([PutOp(1, b"\0\0\0\1a", 5, None, b"p", b"h")])
        store.drop_group(1).result()
        (result,) = store.write([batch])
        assert "deleted" in str(result) and not isinstance(result, bool)
        assert _contents(store)["outbox"] == []


def test_a_group_commit_is_bounded_by_records_not_by_batches(tmp_path: Path) -> None:
    rocks = open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks, max_commit_records=1500)
    release = threading.Event()
    groups: list[int] = []
    apply = store._apply

    def held_apply(batch: list[tuple[list[Op], Future[Committed]]]) -> list[list[OpResult]]:
        release.wait(30)
        groups.append(sum(len(op) if isinstance(op, PutBatch) else 1
                          for ops, _ in batch for op in ops))
        return apply(batch)

    store._apply = held_apply  # type: ignore[method-assign]
    try:
        first = store.submit([PutOp(1, b"\0\0\0\1first", 1, None, b"p")])
        time.sleep(0.2)  # the writer holds the first commit
        batches = [_as_batch([PutOp(1, b"\0\0\0\1" + f"{k}-{i}".encode(), 1, None, b"p")
                              for i in range(1000)]) for k in range(3)]
        futures = [store.submit([b]) for b in batches]
        release.set()
        first.result(30)
        assert all(len(f.result(30).results) == 1000 for f in futures)
    finally:
        release.set()
        store.close()
        rocks.close()
    assert groups == [1, 2000, 1000]


# --- every OnlineStore ---------------------------------------------------------------------------


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    with IMPLEMENTATIONS[request.param](tmp_path) as s:
        yield s


def test_every_store_commits_a_batch_with_one_result_per_record(any_store: OnlineStore) -> None:
    def key(rid: str) -> bytes:
        return b"\0\0\0\1" + rid.encode()

    first = any_store.submit([PutOp(1, key("a"), 5, None, b"a5", b"h")]).result(timeout=30)
    batch = _as_batch([PutOp(1, key("a"), 3, 10**16, b"a3", b"h"),
                       PutOp(1, key("b"), 4, 10**16 + 1, b"b4", b"h"),
                       PutOp(1, key("a"), 5, 10**16 + 2, b"a5b", b"h")])
    committed = any_store.submit([batch, DeleteOp(1, key("c"), 1, hard=False)]).result(timeout=30)
    assert committed.results == [False, True, True, True]
    assert committed.seq > first.seq
    assert any_store.wait_visible(committed.seq, 10)
    hits = any_store.multi_get([key("a"), key("b"), key("c")], 10**15)
    assert [None if h is None else (bytes(h[0]), h[1]) for h in hits] == [
        (b"a5b", 10**16 + 2), (b"b4", 10**16 + 1), None]
