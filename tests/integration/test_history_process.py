"""`tessera serve --workers 2`: history in its own process (server/history_process.py), under
the supervisor: it reaches Parquet, is queryable, survives a kill -9 of the history process
exactly once, and a group's delete retires its history there."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.integration.test_multiprocess import Writers, check_history, start, wait_until
from tests.integration.test_offline_history import history
from tests.integration.wire_helpers import Wire, metric_total
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", workers=2, keep_ports=True,
                         extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.3"})
    yield proc
    proc.kill()


def test_history_written_under_two_workers_reaches_parquet_and_is_queryable(
    mp: ServerProcess,
) -> None:
    start(mp)
    info = mp.info()
    hist = info["history_pid"]
    assert hist not in (info["writer_pid"], *info["serving_pids"])
    assert "tessera.server.history_process" in psutil.Process(hist).cmdline()
    w = Wire(mp.grpc_target, mp.http_url)
    records = [to_record({"user_id": f"u{i}", "ts": T0 + i, "clicks": i}) for i in range(500)]
    assert w.stub.PutRecords(pb.PutRecordsRequest(feature_group_name="g", records=records),
                             timeout=30).written == 500
    wait_until(lambda: len(history(mp, "g")) == 500, timeout_s=20, what="history in Parquet")
    rows = history(mp, "g")
    assert [r["clicks"] for r in rows] == list(range(500))
    assert len({r["tessera_seq"] for r in rows}) == 500
    # SQL over the offline store's views (a serving process's catalog) sees it
    got = httpx.post(f"{mp.http_url}/v1/sql", timeout=30, json={
        "query": "SELECT count(*) AS n, max(clicks) AS m FROM g"}).json()
    assert got["rows"] == [[500, 499]], got
    # /metrics: the history process's counters, the writer's backlog gauge back to 0
    def drained() -> str | None:
        text = httpx.get(f"{mp.http_url}/metrics", timeout=10).text
        pending = metric_total(text, "tessera_offline_outbox_pending_rows", process="writer")
        return text if pending == 0 else None

    text = wait_until(drained, what="the writer's backlog gauge at 0")
    assert metric_total(text, "tessera_offline_rows_written", process="history") == 500
    assert metric_total(text, "tessera_offline_flushes", process="history") >= 1
    assert metric_total(text, "tessera_metrics_process_up", process="history") == 1
    w.close()


def test_kill_9_of_the_history_process_is_restarted_and_history_stays_exactly_once(
    mp: ServerProcess,
) -> None:
    start(mp)
    with Writers(mp) as writers:
        for _ in range(2):  # twice: one kill likely lands mid-flush (every 0.3 s)
            victim = mp.info()["history_pid"]
            before = writers.count()
            wait_until(lambda b=before: writers.count() > b + 200, what="writes before the kill")
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda v=victim: mp.info()["history_pid"] not in (0, v),
                       what="the supervisor to restart the history process")
        before = writers.count()
        wait_until(lambda: writers.count() > before + 200, what="writes after the restart")
    assert writers.failures == 0  # writes never waited for history
    assert "the history process (pid" in mp.log() and "restarting it in" in mp.log()
    # and it flushes again while serving, not only at stop
    wait_until(lambda: len(history(mp, "g")) >= len(writers.every_ack), timeout_s=20,
               what="history after the restart")
    assert mp.stop() == 0
    check_history(mp, writers)


def test_sigterm_flushes_the_last_range_before_the_service_stops(tmp_path: Path) -> None:
    # A flush interval longer than the test: only the stop can bring the rows to Parquet.
    proc = ServerProcess(tmp_path / "data", workers=2,
                         extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "3600"})
    try:
        start(proc)
        w = Wire(proc.grpc_target, proc.http_url)
        for i in range(50):
            w.put("g", {"user_id": f"u{i}", "ts": T0 + i, "clicks": i})
        w.close()
        assert history(proc, "g") == []
        assert proc.stop() == 0
        assert [r["clicks"] for r in history(proc, "g")] == list(range(50))
        assert "history process stopped cleanly" in proc.log()
    finally:
        proc.kill()


def test_deleting_a_group_flushes_and_retires_its_history_in_the_history_process(
    tmp_path: Path,
) -> None:
    proc = ServerProcess(tmp_path / "data", workers=2,
                         extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "3600"})
    try:
        start(proc)
        w = Wire(proc.grpc_target, proc.http_url)
        for i in range(20):
            w.put("g", {"user_id": f"u{i}", "ts": T0 + i, "clicks": i})
        assert w.http.delete("/v1/feature-groups/g").status_code == 204
        offline = proc.data_dir / "offline"
        assert not (offline / "g").exists()
        (retired,) = (offline / ".retired").glob("g.*")  # g.<its id>
        assert len(history(proc, f".retired/{retired.name}")) == 20  # flushed, set aside
        w.create_group("g")
        w.put("g", {"user_id": "new", "ts": T0, "clicks": 1})
        w.close()
        assert proc.stop() == 0
        assert [r["user_id"] for r in history(proc, "g")] == ["new"]
        assert len(history(proc, f".retired/{retired.name}")) == 20
    finally:
        proc.kill()
