"""`tessera serve --workers 2`: a supervisor, a writer process and two serving processes on shared
ports (server/supervisor.py). Each test runs its own server; every process is reaped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import httpx
import psutil
import pytest

from tessera.core import offline_layout as layout
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tessera.server.front import PID_HEADER
from tests.integration.wire_helpers import Wire, metric_total, pid_of
from tests.integration.wire_helpers import channels_on_each as on_each
from tests.kafka_fixtures import session_broker
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[ServerProcess]:
    """Two serving processes (started by the test: `start`)."""
    proc = ServerProcess(tmp_path / "data", workers=2, keep_ports=True,
                         extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.5"})
    yield proc
    proc.kill()


def start(proc: ServerProcess) -> ServerProcess:
    """Start and create the group `g` (through whichever serving process answers)."""
    proc.start()
    w = Wire(proc.grpc_target, proc.http_url)
    w.create_group("g")
    w.close()
    return proc


def channels_on_each(proc: ServerProcess) -> dict[int, grpc.Channel]:
    """One channel per serving process, by pid."""
    return on_each(proc.grpc_target, proc.workers)


def wait_until(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids)


class Writers:
    """Threads putting records through their own channels, retrying UNAVAILABLE; `acked` maps
    each record id to the last clicks value acknowledged."""

    def __init__(self, proc: ServerProcess, n: int = 4) -> None:
        self.proc = proc
        self.acked: dict[str, int] = {}
        self.every_ack: list[tuple[str, int]] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(n)]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def count(self) -> int:
        """Puts acknowledged so far."""
        with self._lock:
            return len(self.every_ack)

    def _run(self, k: int) -> None:
        w = Wire(self.proc.grpc_target, self.proc.http_url)
        i = 0
        while not self._stop.is_set():
            rid = f"w{k}-{i % 20}"
            try:
                w.stub.PutRecord(pb.PutRecordRequest(feature_group_name="g", record=to_record(
                    {"user_id": rid, "ts": T0 + i, "clicks": i})), timeout=5)
            except grpc.RpcError:
                with self._lock:
                    self.failures += 1
                i += 1  # not acknowledged, maybe stored: never sent again (one history row each)
                time.sleep(0.02)
                continue
            with self._lock:
                self.acked[rid] = i
                self.every_ack.append((rid, i))
            i += 1
        w.close()

    def check_readable(self) -> None:
        w = Wire(self.proc.grpc_target, self.proc.http_url)
        try:
            for rid, clicks in self.acked.items():
                got = w.get("g", rid)
                assert got is not None and got["clicks"] >= clicks, (rid, clicks, got)
        finally:
            w.close()


def check_history(proc: ServerProcess, writers: Writers) -> None:
    """Every acknowledged put of `writers` is in history exactly once (each put is sent once:
    a failed one is never retried, so a second row would be a duplicate)."""
    glob = layout.parquet_glob(proc.data_dir / "offline", "g")
    rows = duckdb.sql(f"SELECT user_id, clicks, tessera_seq FROM read_parquet('{glob}', "
                      "hive_partitioning=true, union_by_name=true)").fetchall()
    assert len({r[2] for r in rows}) == len(rows), "duplicated history rows"
    assert len({(r[0], r[1]) for r in rows}) == len(rows), "duplicated history rows"
    have = {(r[0], r[1]) for r in rows}
    missing = [ack for ack in writers.every_ack if ack not in have]
    assert len(writers.every_ack) > 200
    assert not missing, f"{len(missing)} acknowledged writes missing from history"


def test_two_serving_processes_answer_on_the_same_ports(mp: ServerProcess) -> None:
    start(mp)
    info = mp.info()
    serving = set(info["serving_pids"])
    assert len(serving) == 2 and info["pid"] == mp.proc.pid and info["writer_pid"] not in serving
    channels = channels_on_each(mp)
    assert set(channels) == serving
    for pid, ch in channels.items():  # each serves the whole API
        assert pid_of(ch) == pid
        ch.close()
    http_pids = set()
    for _ in range(64):
        with httpx.Client(base_url=mp.http_url) as c:  # a new connection each time
            r = c.get("/healthz")
            assert r.status_code == 200
            http_pids.add(int(r.headers[PID_HEADER]))
        if http_pids == serving:
            break
    assert http_pids == serving


def scrape_answered_by(proc: ServerProcess, pid: int, tries: int = 64) -> str:
    """A /metrics exposition answered by the serving process `pid` (x-tessera-pid)."""
    for _ in range(tries):
        with httpx.Client(base_url=proc.http_url) as c:  # a new connection each time
            r = c.get("/metrics")
            assert r.status_code == 200, r.text
            if int(r.headers[PID_HEADER]) == pid:
                return r.text
    raise AssertionError(f"no scrape landed on serving process {pid} in {tries} connections")


def per_process(text: str, sample: str, **labels: str) -> dict[str, float]:
    """Each process's value of one series in a --workers N exposition."""
    out: dict[str, float] = {}
    for process in ("writer", "serving-1", "serving-2"):
        value = metric_total(text, sample, **labels, process=process)
        if value is not None:
            out[process] = value
    return out


def test_a_call_served_by_one_process_is_counted_in_a_scrape_answered_by_the_other(
    mp: ServerProcess,
) -> None:
    start(mp)
    (a, ch_a), (b, ch_b) = channels_on_each(mp).items()
    stub_a = pb_grpc.FeatureStoreStub(ch_a)
    stub_b = pb_grpc.FeatureStoreStub(ch_b)
    stub_a.PutRecord(pb.PutRecordRequest(feature_group_name="g", record=to_record(
        {"user_id": "u1", "ts": T0, "clicks": 1})), timeout=10)
    get = pb.GetRecordRequest(feature_group_name="g", record_identifier="u1")
    ok_gets = {"sample": "tessera_grpc_requests_total", "code": "OK", "method": "GetRecord"}
    before_b = per_process(scrape_answered_by(mp, b), **ok_gets)
    for _ in range(3):
        stub_a.GetRecord(get, timeout=10)  # served by A only
    after_b = per_process(scrape_answered_by(mp, b), **ok_gets)
    # B's answer counts A's three calls, under A's process label and nowhere else
    grown = {p: v - before_b.get(p, 0.0) for p, v in after_b.items() if v != before_b.get(p)}
    assert list(grown.values()) == [3.0], (before_b, after_b)
    label_a = next(iter(grown))
    for _ in range(5):
        stub_b.GetRecord(get, timeout=10)  # served by B
    after_a = per_process(scrape_answered_by(mp, a), **ok_gets)
    assert after_a[label_a] == after_b[label_a]  # A's own series: unchanged by B's calls
    assert sum(after_a.values()) == sum(after_b.values()) + 5  # B's calls, seen from A
    # the writer's metrics are in every scrape: it committed the put
    text = scrape_answered_by(mp, a)
    commits = metric_total(text, "tessera_online_group_commits", process="writer")
    assert commits is not None and commits >= 1
    assert metric_total(text, "tessera_records_written_total", feature_group="g",
                        outcome="applied") == 1.0
    for process in ("writer", "serving-1", "serving-2"):
        assert metric_total(text, "tessera_metrics_process_up", process=process) == 1.0
    assert metric_total(text, "tessera_metrics_processes_unreachable") == 0.0
    ch_a.close()
    ch_b.close()


def test_a_process_that_does_not_answer_is_skipped_and_counted_in_the_scrape(
    mp: ServerProcess,
) -> None:
    start(mp)
    # every process gathered once: each serving process learned the writer's quarantined
    # groups for the registry's version (its gauge asks the writer when the version moves)
    text = httpx.get(f"{mp.http_url}/metrics", timeout=10).text
    assert metric_total(text, "tessera_metrics_processes_unreachable") == 0.0
    writer = mp.info()["writer_pid"]
    os.kill(writer, signal.SIGSTOP)  # alive (not restarted) but silent
    try:
        with httpx.Client(base_url=mp.http_url, timeout=10) as c:
            started = time.monotonic()
            r = c.get("/metrics")
            took_s = time.monotonic() - started
    finally:
        os.kill(writer, signal.SIGCONT)
    assert r.status_code == 200, r.text
    assert took_s < 5, f"the scrape waited {took_s:.1f} s for a silent process"
    assert metric_total(r.text, "tessera_metrics_process_up", process="writer") == 0.0
    assert metric_total(r.text, "tessera_metrics_processes_unreachable") == 1.0
    assert metric_total(r.text, "tessera_online_group_commits", process="writer") is None
    assert metric_total(r.text, "tessera_http_requests_total", method="POST",
                        route="/v1/feature-groups", status="201") == 1.0  # start()'s create
    # back: gathered again
    text = httpx.get(f"{mp.http_url}/metrics", timeout=10).text
    assert metric_total(text, "tessera_metrics_process_up", process="writer") == 1.0


def test_kill_9_of_a_serving_process_loses_no_write_and_it_is_restarted(
    mp: ServerProcess,
) -> None:
    start(mp)
    victim, survivor = mp.info()["serving_pids"]
    with Writers(mp) as writers:
        wait_until(lambda: writers.count() > 200, what="writes before the kill")
        os.kill(victim, signal.SIGKILL)
        info = wait_until(lambda: victim not in (i := mp.info())["serving_pids"] and i,
                          what="the supervisor to restart the serving process")
        restarted = set(info["serving_pids"]) - {survivor}
        assert len(restarted) == 1 and survivor in info["serving_pids"]
        before = writers.count()
        wait_until(lambda: writers.count() > before + 200, what="writes after the restart")
    writers.check_readable()
    assert "the serving process 1 (pid" in mp.log() and "restarting it in" in mp.log()
    # The restarted process serves too.
    assert set(channels_on_each(mp)) == set(info["serving_pids"])


def test_kill_9_of_the_writer_keeps_acknowledged_writes_and_writes_resume(
    mp: ServerProcess,
) -> None:
    start(mp)
    writer = mp.info()["writer_pid"]
    with Writers(mp) as writers:
        wait_until(lambda: writers.count() > 200, what="writes before the kill")
        os.kill(writer, signal.SIGKILL)
        wait_until(lambda: mp.info()["writer_pid"] != writer, what="the writer's restart")
        before = writers.count()
        wait_until(lambda: writers.count() > before + 200, what="writes after the restart")
    writers.check_readable()  # served by the secondaries, across the writer's restart
    assert mp.stop() == 0
    check_history(mp, writers)
    # And durable: a fresh start on the data dir finds them.
    mp.start()
    writers.check_readable()


def test_kill_9_of_the_whole_group_keeps_every_acknowledged_write_once(
    mp: ServerProcess,
) -> None:
    start(mp)
    pids = [mp.proc.pid, mp.info()["writer_pid"], mp.info()["history_pid"],
            *mp.info()["serving_pids"]]
    with Writers(mp, n=6) as writers:
        wait_until(lambda: writers.count() > 500, what="writes before the kill")
        mp.kill()  # SIGKILL to the supervisor's process group
    wait_until(lambda: gone(pids), timeout_s=10, what="every process of the group to die")
    mp.start()
    writers.check_readable()
    assert mp.stop() == 0  # the history process flushes every committed row at stop
    check_history(mp, writers)


def test_a_write_token_gives_read_your_writes_across_serving_processes(tmp_path: Path) -> None:
    # A slow catch-up timer: without the token, the other process reads stale state.
    proc = ServerProcess(tmp_path / "data", workers=2,
                         extra_env={"TESSERA_ONLINE_STORE__CATCH_UP_INTERVAL_S": "30"})
    try:
        start(proc)
        (a, ch_a), (b, ch_b) = channels_on_each(proc).items()
        assert a != b
        put = ch_a.unary_unary("/tessera.v1.FeatureStore/PutRecord",
                               request_serializer=pb.PutRecordRequest.SerializeToString,
                               response_deserializer=pb.PutRecordResponse.FromString)
        get = ch_b.unary_unary("/tessera.v1.FeatureStore/GetRecord",
                               request_serializer=pb.GetRecordRequest.SerializeToString,
                               response_deserializer=pb.GetRecordResponse.FromString)
        # B learns of the group first (its registry's catch-up would also show the write).
        assert not get(pb.GetRecordRequest(feature_group_name="g", record_identifier="nobody"),
                       timeout=10).HasField("record")
        stale = 0
        for i in range(5):
            token = put(pb.PutRecordRequest(feature_group_name="g", record=to_record(
                {"user_id": "u1", "ts": T0 + i, "clicks": i})), timeout=10).write_token
            plain = get(pb.GetRecordRequest(feature_group_name="g", record_identifier="u1"),
                        timeout=10)
            if not plain.HasField("record") or from_record(plain.record)["clicks"] != i:
                stale += 1
            fresh = get(pb.GetRecordRequest(feature_group_name="g", record_identifier="u1",
                                            consistent_after=token), timeout=10)
            assert from_record(fresh.record)["clicks"] == i
        assert stale == 5  # the token, not luck, made the reads fresh
        ch_a.close()
        ch_b.close()
    finally:
        proc.kill()


def test_sigterm_stops_every_process_and_exits_0(mp: ServerProcess) -> None:
    start(mp)
    info = mp.info()
    pids = [info["pid"], info["writer_pid"], info["history_pid"], *info["serving_pids"]]
    w = Wire(mp.grpc_target, mp.http_url)
    records = [to_record({"user_id": f"u{i}", "ts": T0, "clicks": i}) for i in range(20_000)]
    future = w.stub.PutRecords.future(
        pb.PutRecordsRequest(feature_group_name="g", records=records), timeout=30)
    time.sleep(0.05)
    assert mp.stop() == 0
    assert future.result().written == 20_000  # the in-flight call completed
    w.close()
    wait_until(lambda: gone(pids), timeout_s=5, what="every child to exit")
    assert "stopped cleanly" in mp.log()
    mp.start()
    w = Wire(mp.grpc_target, mp.http_url)
    assert w.get("g", "u19999")["clicks"] == 19_999
    w.close()


def test_a_crash_looping_serving_process_stops_the_server(mp: ServerProcess) -> None:
    start(mp)
    supervisor = mp.proc
    killed: list[int] = []
    pids = [mp.info()["writer_pid"], *mp.info()["serving_pids"]]

    def kill_slot_1() -> bool:
        if supervisor.poll() is not None:
            return True
        for child in psutil.Process(supervisor.pid).children():
            try:
                argv = child.cmdline()
            except psutil.Error:  # gone or a zombie: one we killed
                continue
            if argv[-4:-2] == ["--index", "1"] and child.pid not in killed:
                killed.append(child.pid)
                os.kill(child.pid, signal.SIGKILL)
        return False

    wait_until(kill_slot_1, timeout_s=60, what="the supervisor to give up")
    assert supervisor.returncode == 1
    assert len(killed) == 5
    assert "the serving process 1 crashed 5 times within 60 s" in mp.log()
    wait_until(lambda: gone(pids + killed), timeout_s=5, what="every child to exit")


def test_a_port_in_use_fails_the_start_within_seconds_leaving_no_child(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "tessera.server", "serve", "--data-dir",
             str(tmp_path / "data"), "--workers", "2", "--grpc-port", str(port),
             "--http-port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert time.monotonic() - started < 15
    assert "cannot reserve the ports" in out.stderr and str(port) in out.stderr
    assert "started the writer" not in out.stderr


def test_the_consumer_process_ingests_and_resumes_after_kill_9(tmp_path: Path) -> None:
    kafka = session_broker()
    topic = kafka.create_topic(kafka.unique("mp"), partitions=2)
    config = {"bootstrap_servers": kafka.bootstrap, "group_id": kafka.unique("mp"),
              "batch_max_ms": 50, "topics": [{"topic": topic, "feature_group": "g"}]}
    proc = ServerProcess(tmp_path / "data", workers=2, extra_env={
        "TESSERA_INGEST": json.dumps(config), "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.2"})
    try:
        start(proc)
        consumer = proc.info()["consumer_pids"]
        assert len(consumer) == 1 and consumer[0] not in proc.info()["serving_pids"]
        w = Wire(proc.grpc_target, proc.http_url)

        def produce(first: int, n: int) -> None:
            kafka.produce(topic, [(None, json.dumps(
                {"user_id": f"u{i}", "ts": T0 + i, "clicks": i}).encode())
                for i in range(first, first + n)])

        produce(0, 100)
        wait_until(lambda: w.get("g", "u99") is not None, what="the first messages")
        # the consumer process's metrics are in /metrics, whichever serving process answers
        wait_until(lambda: metric_total(
            w.http.get("/metrics").text, "tessera_ingest_records_total", topic=topic,
            feature_group="g", process="consumer") == 100, what="the consumer's metrics")
        os.kill(consumer[0], signal.SIGKILL)
        produce(100, 100)
        wait_until(lambda: proc.info()["consumer_pids"] != consumer, what="the restart")
        wait_until(lambda: w.get("g", "u199") is not None, timeout_s=60,
                   what="messages after the restart")
        assert all(w.get("g", f"u{i}")["clicks"] == i for i in range(200))
        w.close()
        assert proc.stop() == 0
        glob = layout.parquet_glob(proc.data_dir / "offline", "g")
        sources = duckdb.sql(f"SELECT DISTINCT user_id, tessera_source FROM read_parquet("
                             f"'{glob}', hive_partitioning=true)").fetchall()
        assert {u for u, _ in sources} == {f"u{i}" for i in range(200)}
        assert all(src.startswith(f"kafka:{topic}/") for _, src in sources)
    finally:
        proc.kill()


def test_a_child_failing_at_start_up_stops_the_server_within_seconds(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "offline").write_text("not a directory")  # no catalog, no history
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "tessera.server", "serve", "--data-dir", str(tmp_path / "data"),
         "--workers", "2", "--grpc-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr[-3000:]
    assert time.monotonic() - started < 30
    assert "during start-up" in out.stderr
    left = [p for p in psutil.process_iter(["cmdline"])
            if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    assert not left, left
