"""Every write lands in the offline store's Parquet history, exactly once, even across kill -9."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import pytest

from tessera.core import offline_layout as layout
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.integration.wire_helpers import Wire, rpc_error
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
FAST_FLUSH = {"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.2"}
pytestmark = pytest.mark.integration


@pytest.fixture
def proc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """One process, or `--workers N` when a test parametrizes it (indirect) with N."""
    workers = getattr(request, "param", 1)
    p = ServerProcess(tmp_path / "data", extra_env=FAST_FLUSH, workers=workers).start()
    yield p
    p.kill()


def history(proc: ServerProcess, group: str, where: str = "true") -> list[dict]:
    glob = layout.parquet_glob(proc.data_dir / "offline", group)
    if not list((proc.data_dir / "offline" / group).glob("event_date=*/*.parquet")):
        return []
    rel = duckdb.sql(
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true, union_by_name=true) "
        f"WHERE {where} ORDER BY tessera_seq"
    )
    return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]


def wait_for_rows(proc: ServerProcess, group: str, n: int, timeout_s: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = history(proc, group)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_every_write_lands_in_history_with_system_columns(proc: ServerProcess) -> None:
    w = Wire(proc.grpc_target, proc.http_url)
    w.create_group("users")
    before = time.time()
    assert w.put("users", {"user_id": "u1", "ts": T0, "clicks": 1, "tags": ["a"],
                           "emb": [1, 2, 3, 4]}) is True
    assert w.put("users", {"user_id": "u1", "ts": T0 - 60, "clicks": 0}) is False  # stale
    assert w.delete("users", "u1", str(T0 + 1)) is True  # soft
    assert w.delete("users", "u1", str(T0 - 120)) is False  # older soft delete: history only
    rpc_error(lambda: w.delete("users", "u1", str(T0 - 1), hard=True))  # refused: no history
    w.stub.PutRecords(pb.PutRecordsRequest(
        feature_group_name="users",
        records=[to_record({"user_id": f"b{i}", "ts": T0 + 86_400, "clicks": i}) for i in range(3)],
        sources=["kafka:t/0/1", "kafka:t/0/2", "kafka:t/0/3"],
    ))
    assert w.delete("users", "u1", "2023-11-14T22:13:30Z", hard=True) is True
    rows = wait_for_rows(proc, "users", 8)
    assert len(rows) == 8
    assert [r["is_deleted"] for r in rows] == [False, False, True, True, False, False, False, True]
    assert [r["clicks"] for r in rows[:2]] == [1, 0]
    assert rows[0]["tags"] == ["a"] and list(rows[0]["emb"]) == [1.0, 2.0, 3.0, 4.0]
    assert rows[2]["user_id"] == "u1" and rows[2]["ts"] == T0 + 1 and rows[2]["clicks"] is None
    assert [r["tessera_source"] for r in rows[4:7]] == ["kafka:t/0/1", "kafka:t/0/2", "kafka:t/0/3"]
    seqs = [r["tessera_seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 8
    for r in rows:
        assert before - 1 < r["api_invocation_time"].timestamp() <= r["write_time"].timestamp()
        assert r["write_time"].timestamp() < time.time() + 1
    assert rows[0]["tessera_event_time"].timestamp() == T0
    # Hive partitions by the event time's UTC date.
    assert {str(r["event_date"]) for r in rows} == {"2023-11-14", "2023-11-15"}
    w.close()


def test_offline_only_group_keeps_history_and_refuses_online_reads(proc: ServerProcess) -> None:
    w = Wire(proc.grpc_target, proc.http_url)
    resp = w.http.post("/v1/feature-groups", json={
        "feature_group_name": "clicks_log",
        "record_identifier_feature_name": "user_id",
        "event_time_feature_name": "ts",
        "feature_definitions": [{"feature_name": "user_id", "feature_type": "String"},
                                {"feature_name": "ts", "feature_type": "Fractional"}],
        "online_store_config": {"enable_online_store": False},
    })
    assert resp.status_code == 201, resp.text
    assert w.put("clicks_log", {"user_id": "u1", "ts": T0}) is True
    err = rpc_error(lambda: w.get("clicks_log", "u1"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no online store" in err.details()
    assert len(wait_for_rows(proc, "clicks_log", 1)) == 1
    w.close()


def test_group_file_describes_the_schema_and_deleted_groups_are_set_aside(
    proc: ServerProcess,
) -> None:
    w = Wire(proc.grpc_target, proc.http_url)
    w.create_group("temp")
    group_file = proc.data_dir / "offline" / "temp" / layout.GROUP_FILE
    assert '"record_identifier_feature_name": "user_id"' in group_file.read_text()
    w.put("temp", {"user_id": "u1", "ts": T0})
    assert w.http.delete("/v1/feature-groups/temp").status_code == 204
    retired = list((proc.data_dir / "offline" / ".retired").glob("temp.*/event_date=*/*.parquet"))
    assert len(retired) == 1  # flushed before being set aside
    w.create_group("temp")
    assert history(proc, "temp") == []
    w.close()


def test_kill_9_mid_stream_loses_and_duplicates_nothing_in_history(tmp_path: Path) -> None:
    # A slow flush interval: most rows are still in the outbox when the server dies.
    proc = ServerProcess(tmp_path / "data",
                         extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.5"}).start()
    w = Wire(proc.grpc_target, proc.http_url)
    w.create_group("crash")
    acked: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"w{worker}"
            try:
                if i % 7 == 3:
                    w.stub.PutRecords(pb.PutRecordsRequest(feature_group_name="crash", records=[
                        to_record({"user_id": rid, "ts": T0 + i, "clicks": i * 1000 + k})
                        for k in range(50)]), timeout=10)
                    done = [(rid, i * 1000 + k) for k in range(50)]
                else:
                    w.put("crash", {"user_id": rid, "ts": T0 + i, "clicks": i * 1000})
                    done = [(rid, i * 1000)]
            except grpc.RpcError:
                return
            with lock:
                acked.extend(done)
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    proc.kill()
    stop.set()
    for t in threads:
        t.join()
    w.close()
    assert len(acked) > 200

    proc.start()  # replays any interrupted flush, then flushes what the outbox holds
    try:
        rows = wait_for_rows(proc, "crash", len(acked))
        got = [(r["user_id"], r["clicks"]) for r in rows]
        assert len(got) == len(set(got)), "duplicated history rows"
        missing = set(acked) - set(got)
        assert not missing, f"{len(missing)} acknowledged writes missing from history"
        assert len({r["tessera_seq"] for r in rows}) == len(rows)
    finally:
        proc.stop()


@pytest.mark.parametrize("proc", [pytest.param(1, id="workers1"), pytest.param(2, id="workers2")],
                         indirect=True)  # with --workers 2: in the writer process, over IPC
def test_compaction_merges_files_without_changing_results(proc: ServerProcess) -> None:
    w = Wire(proc.grpc_target, proc.http_url)
    w.create_group("compact")
    n = 0
    for burst in range(4):  # four flushes: several files per partition
        for i in range(30):
            w.put("compact", {"user_id": f"u{i % 7}", "ts": T0 + (i % 3) * 86_400 + burst,
                              "clicks": n, "emb": [burst, i, 0, 1]})
            n += 1
        w.delete("compact", f"u{burst}", str(T0 + burst + 0.5))
        n += 1
        wait_for_rows(proc, "compact", n)
    before = history(proc, "compact")
    files_before = list((proc.data_dir / "offline" / "compact").glob("event_date=*/*.parquet"))
    assert len(before) == n and len(files_before) > 3

    resp = w.http.post("/v1/feature-groups/compact/compact")
    assert resp.status_code == 200, resp.text
    stats = resp.json()
    assert stats["files_before"] == len(files_before) and stats["rows"] == n
    files_after = list((proc.data_dir / "offline" / "compact").glob("event_date=*/*.parquet"))
    assert len(files_after) == stats["files_after"] == 3  # one per event date
    after = history(proc, "compact")

    def canon(rows: list[dict]) -> list[tuple]:
        return [tuple(str(v) for v in r.values()) for r in rows]

    assert canon(after) == canon(before)  # same rows, same values (ordered by tessera_seq)
    # Clustered by record id, then event time, within each file.
    import pyarrow.parquet as pq

    for f in files_after:
        t = pq.read_table(f).to_pylist()
        keys = [(r["user_id"], r["tessera_event_time"], r["tessera_seq"]) for r in t]
        assert keys == sorted(keys)
    # New writes land next to the compacted file.
    w.put("compact", {"user_id": "late", "ts": T0, "clicks": -1})
    assert len(wait_for_rows(proc, "compact", n + 1)) == n + 1
    w.close()
