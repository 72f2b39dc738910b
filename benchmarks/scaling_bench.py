"""The process-scaling benchmark, one command:

    .venv/bin/python -m benchmarks.scaling_bench [--quick] [--workers 1,2,4] [--skip kafka]

`tessera serve --workers 1` (one process) next to `--workers N` (a supervisor, a writer, N
serving processes on shared ports), on this machine's cores, the load generator included:

  reads   GetRecord (h2load, one prepared protobuf body per segment, a random key per round) at
          concurrency 1, 16, 64 against every layout, and the bare grpc.aio echo floor (a
          generic handler returning the request bytes; no Tessera code) in 1 process and in 2
          processes on one SO_REUSEPORT port, interleaved segment by segment (the order rotates
          each round); p50/p99, calls/s, the server's CPU per call (the supervisor and all its
          children, from psutil, before/after each segment)
  writes  PutRecords, 1,000 records per message, 2 client processes x 4 threads sending
          prepared bodies: into a group with history (offline store on), the same schema with
          the offline store off, and the same schema with 18 aggregations (as
          benchmarks/aggregation_bench.py), interleaved layout by layout; records/s durable,
          server CPU per record, the history backlog (acked rows not yet in Parquet, counted
          with DuckDB, and the outbox gauge where /metrics has it) after each load, and the
          time until Parquet holds every acked row
  kafka   the embedded consumer of `tessera serve` (TESSERA_INGEST), workers 1 and 2: a
          backlog drained (records/s from the consumer group's committed offsets: durable),
          then freshness at 10,000 events/s (benchmarks/ingest_bench.run_steady)

Checks: every GetRecord key read back through grpcio and compared with the record written;
every h2load segment's response bytes equal (OK calls) x (the OK response's size), so a gRPC
error (trailers only, no body) cannot pass as a call; every PutRecords ack's `written`; Parquet
history rows equal the acked writes; the Kafka backlog readable at its latest values.
Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import psutil

from benchmarks import aggregation_bench, data, h2load, ingest_bench, report, verify
from benchmarks.segments import Cell, Segment
from tessera.client import FeatureStoreClient
from tessera.core import offline_layout
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.kafka_fixtures import BOOTSTRAP_ENV, KafkaBroker, free_port
from tests.serverproc import ServerProcess

GET = "/tessera.v1.FeatureStore/GetRecord"
PUT_RECORDS = "/tessera.v1.FeatureStore/PutRecords"
ECHO = "/bench.Echo/Echo"
READ_GROUP = "scale_read"  # offline store off: no history flush during the read segments
PLAIN, ONLINE, AGG = "scale_plain", "scale_online", "scale_agg"
CONCURRENCIES = (1, 16, 64)
TARGETS = {"get_ratio_w2_w1_c16_c64": 1.6, "get_p99_ms_c1": 1.0, "bulk_records_per_s": 100_000,
           "agg_ratio": 0.8, "kafka_records_per_s": 50_000, "freshness_p99_ms": 500.0}
FULL = {"read_records": 100_000, "rounds": 3, "segment_s": 4.0, "warmup_s": 1.0,
        "write_records": 100_000, "write_rounds": 3, "kafka_events": 500_000, "kafka_rounds": 2,
        "steady_s": 20.0}
QUICK = {"read_records": 20_000, "rounds": 2, "segment_s": 2.0, "warmup_s": 0.5,
         "write_records": 50_000, "write_rounds": 2, "kafka_events": 100_000, "kafka_rounds": 1,
         "steady_s": 8.0}
_TICKS = os.sysconf("SC_CLK_TCK")

ECHO_SERVER = r"""
import asyncio, sys, grpc
async def main(port):
    async def echo(request, context):
        return request
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main(int(sys.argv[1])))
"""


# --- the things measured -------------------------------------------------------------------------


class Echo:
    """The floor: a bare grpc.aio echo server in `procs` processes sharing one port."""

    def __init__(self, procs: int, work: Path) -> None:
        self.name = f"echo_{procs}p"
        self.port = free_port()
        self.procs = [subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(self.port)],
                                       stdout=subprocess.PIPE, stderr=open(  # noqa: SIM115
                                           work / f"{self.name}.log", "ab"), text=True)
                      for _ in range(procs)]
        for p in self.procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{self.name} did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


class Tessera:
    """`tessera serve --workers N` on free ports."""

    def __init__(self, workers: int, work: Path, env: dict[str, str] | None = None,
                 tag: str = "") -> None:
        self.workers = workers
        self.name = f"workers_{workers}"
        self.server = ServerProcess(work / f"w{workers}{tag}", extra_env=env, workers=workers)
        self.server.start(timeout_s=120)

    @property
    def target(self) -> str:
        return self.server.grpc_target

    def pids(self) -> list[int]:
        assert self.server.proc is not None
        return [self.server.proc.pid]

    def busiest_child(self) -> int:
        """The pid of the child (or the process) that used the most CPU so far."""
        procs = _tree(self.pids())
        return max(procs, key=_cpu_one).pid

    def roles(self) -> dict[int, str]:
        """pid -> role (supervisor, writer, serving-i, consumer) of the processes now."""
        if self.workers == 1:
            return {self.pids()[0]: "single"}
        info = self.server.info()
        out = {info["pid"]: "supervisor", info["writer_pid"]: "writer"}
        out.update({pid: f"serving-{i}" for i, pid in enumerate(info["serving_pids"])})
        out.update({pid: "consumer" for pid in info.get("consumer_pids", [])})
        return out

    def cpu_by_role(self) -> dict[str, float]:
        roles = self.roles()
        out: dict[str, float] = {}
        for proc in _tree(self.pids()):
            name = roles.get(proc.pid, "other")
            out[name] = out.get(name, 0.0) + _cpu_one(proc)
        return out

    def stop(self) -> None:
        if self.server.proc is not None:
            self.server.stop(timeout_s=120)


def _tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def _cpu_one(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def tree_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants (all threads)."""
    return sum(_cpu_one(p) for p in _tree(pids))


def busy_s() -> float:
    """CPU seconds the whole machine spent busy (not idle, not iowait) since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / _TICKS


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _say(msg: str) -> None:
    print(f"[scaling] {time.strftime('%H:%M:%S')} {msg}", flush=True)


# --- h2load with a response-bytes check -----------------------------------------------------------

_DATA = re.compile(r"\((\d+)\) data")
_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded")


def h2load_segment(target: str, path: str, message: bytes, concurrency: int, seconds: float,
                   warmup_s: float, work: Path, response_frame_bytes: int,
                   headers: tuple[str, ...] = (), scheme: str = "http") -> Segment:
    """A warm-up h2load run, then a timed one (benchmarks/h2load.py's layout and per-request
    log). The timed run's response bytes must be its OK calls' whole responses (plus at most
    one per stream still in flight at the deadline): a gRPC error has no body. `headers`:
    more request headers ("name: value"), e.g. the call's authorization metadata; `scheme`
    "https": over TLS (h2load negotiates h2 by ALPN and does not verify the certificate)."""
    work.mkdir(parents=True, exist_ok=True)
    body, log = work / "body.bin", work / "requests.log"
    body.write_bytes(data.grpc_frame(message))
    conns, streams = h2load.layout(concurrency)
    base = ["h2load", "-c", str(conns), "-m", str(streams), "-t", "1", "-N", "30s",
            "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
            *(arg for h in headers for arg in ("-H", h))]
    url = f"{scheme}://{target}{path}"
    subprocess.run([*base, "-D", f"{round(warmup_s * 1000)}ms", url], capture_output=True,
                   timeout=300, check=True)
    log.unlink(missing_ok=True)
    cmd = [*base, "-D", f"{round(seconds * 1000)}ms", "--log-file", str(log), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    d, r = _DATA.search(proc.stdout), _REQUESTS.search(proc.stdout)
    if proc.returncode != 0 or d is None or r is None:
        raise RuntimeError(f"h2load failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}")
    rows = np.loadtxt(log, dtype=np.int64, delimiter="\t", ndmin=2) if log.stat().st_size else (
        np.empty((0, 3), dtype=np.int64))
    ok = rows[:, 1] == 200
    succeeded, data_bytes = int(r.group(2)), int(d.group(1))
    extra = data_bytes - succeeded * response_frame_bytes
    if extra < 0 or extra % response_frame_bytes or extra > concurrency * response_frame_bytes:
        raise verify.CheckFailed(
            f"{path} at {target}: {data_bytes} response bytes for {succeeded} OK calls of "
            f"{response_frame_bytes} bytes: some calls failed (gRPC error, no body)")
    return Segment(latencies_us=rows[ok, 2].astype(np.float64), seconds=seconds,
                   failed=int((~ok).sum()))


# --- reads ---------------------------------------------------------------------------------------


def bench_reads(subjects: list[Any], echoes: list[Echo], mode: dict[str, Any], work: Path,
                profile: dict[str, Any]) -> dict[str, Any]:
    n = mode["read_records"]
    rng = np.random.default_rng(20261129)
    keys = [int(k) for k in rng.integers(0, n, mode["rounds"])]
    bodies = [data.get_request(k, READ_GROUP) for k in keys]
    sizes = set()
    for s in subjects:  # every key reads back as the record written, on every layout
        with grpc.insecure_channel(s.target) as ch:
            call = ch.unary_unary(GET)
            for k, body in zip(keys, bodies, strict=True):
                raw = call(body, timeout=10)
                if not data.matches(k, pb.GetRecordResponse.FromString(raw).record):
                    raise verify.CheckFailed(f"{s.name}: GetRecord({k}) is not record {k}")
                sizes.add(len(raw))
    get_frame = {b: len(data.grpc_frame(_get_raw(subjects[0].target, b))) for b in bodies}
    echo_body = data.echo_request(max(sizes))
    for e in echoes:
        with grpc.insecure_channel(e.target) as ch:
            if ch.unary_unary(ECHO)(echo_body, timeout=10) != echo_body:
                raise verify.CheckFailed(f"{e.name} did not echo")
    everyone = [*echoes, *subjects]
    cells = {(x.name, c): Cell(x.name, c) for x in everyone for c in CONCURRENCIES}
    spy_at = (mode["rounds"] - 1, 64)
    for r in range(mode["rounds"]):
        for c in CONCURRENCIES:
            order = everyone[r % len(everyone):] + everyone[:r % len(everyone)]
            for x in order:
                is_echo = isinstance(x, Echo)
                path, body = (ECHO, echo_body) if is_echo else (GET, bodies[r])
                frame = len(data.grpc_frame(echo_body)) if is_echo else get_frame[body]
                spy = None
                if (r, c) == spy_at and isinstance(x, Tessera) and x.workers in (1, 2):
                    spy = _spy_start(x.busiest_child(), mode["segment_s"], work,
                                     f"get_c64_{x.name}")
                cpu0, busy0, gen0, t0 = tree_cpu_s(x.pids()), busy_s(), children_cpu_s(), \
                    time.monotonic()
                seg = h2load_segment(x.target, path, body, c, mode["segment_s"],
                                     mode["warmup_s"], work / "h2", frame)
                seg.wall_s = time.monotonic() - t0
                seg.server_cpu_s = tree_cpu_s(x.pids()) - cpu0
                seg.generator_cpu_s = children_cpu_s() - gen0
                seg.other_cpu_s = max(0.0, busy_s() - busy0 - seg.server_cpu_s
                                      - seg.generator_cpu_s)
                # CPU per call: over the whole segment (warm-up included), so divide by the
                # calls of the whole segment: the measured rate over the wall time.
                seg.server_calls = round(seg.latencies_us.size / seg.seconds * seg.wall_s)
                cells[(x.name, c)].add(seg)
                if spy is not None:
                    profile[f"GetRecord_c64_{x.name}"] = _spy_finish(*spy)
            _say(f"round {r + 1} c={c}: " + ", ".join(
                f"{x.name} {cells[(x.name, c)].rates()[-1]:,.0f}/s" for x in everyone))
    out: dict[str, Any] = {
        "records": n, "keys": keys, "response_bytes": sorted(sizes),
        "echo_request_bytes": len(echo_body),
        "cells": {x.name: {str(c): cells[(x.name, c)].summary() for c in CONCURRENCIES}
                  for x in everyone},
    }
    ratios: dict[str, Any] = {}
    w1 = out["cells"].get("workers_1")
    for x in subjects[1:]:
        wx = out["cells"][x.name]
        ratios[f"{x.name}_over_workers_1"] = {str(c): round(
            wx[str(c)]["calls_per_s"] / w1[str(c)]["calls_per_s"], 3) for c in CONCURRENCIES}
    e1, e2 = out["cells"]["echo_1p"], out["cells"]["echo_2p"]
    ratios["echo_2p_over_echo_1p"] = {str(c): round(
        e2[str(c)]["calls_per_s"] / e1[str(c)]["calls_per_s"], 3) for c in CONCURRENCIES}
    for x in subjects:
        floor = "echo_1p" if x.workers == 1 else "echo_2p"
        ratios[f"{x.name}_over_{floor}"] = {str(c): round(
            out["cells"][x.name][str(c)]["calls_per_s"] / out["cells"][floor][str(c)][
                "calls_per_s"], 3) for c in CONCURRENCIES}
    out["ratios"] = ratios
    return out


def _get_raw(target: str, body: bytes) -> bytes:
    with grpc.insecure_channel(target) as ch:
        raw: bytes = ch.unary_unary(GET)(body, timeout=10)
        return raw


# --- writes --------------------------------------------------------------------------------------


def _bodies(group: str, lo: int, hi: int, step: int, now: float | None, batch: int
            ) -> list[bytes]:
    """PutRecords bodies of records lo.. (every `step`-th chunk of `batch`), event time `now`
    plus a little per record (a new event of each record in every round); `now` None: the
    records exactly as benchmarks/data.py makes them."""
    out = []
    for start in range(lo, hi, step):
        req = pb.PutRecordsRequest(feature_group_name=group)
        for i in range(start, min(start + batch, hi)):
            values = data.record_values(i)
            if now is not None:
                values["ts"] = now + i * 1e-6
            req.records.append(to_record(values))
        out.append(req.SerializeToString())
    return out


def _client(target: str, group: str, n: int, batch: int, k: int, processes: int, threads: int,
            now: float | None, barrier: Any, results: Any) -> None:
    bodies = _bodies(group, k * batch, n, processes * batch, now, batch)
    todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for b in bodies:
        todo.put(b)
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=30)
    call = channel.unary_unary(PUT_RECORDS)
    written, lat, errors = [0] * threads, [[] for _ in range(threads)], []

    def send(t: int) -> None:
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                resp = pb.PutRecordsResponse.FromString(call(body, timeout=300))
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                return
            lat[t].append((time.perf_counter() - t0) * 1000)
            written[t] += resp.written

    barrier.wait(timeout=300)
    pool = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    channel.close()
    results.put({"written": sum(written), "errors": errors,
                 "latencies_ms": [x for xs in lat for x in xs]})


def bulk(x: Tessera, group: str, n: int, batch: int = 1000, processes: int = 2,
         threads: int = 4, spy: tuple[Path, str] | None = None, as_data: bool = False
         ) -> dict[str, Any]:
    """n records into `group`, prepared bodies from `processes` x `threads` clients; the clock
    and the server's CPU from the first call to the last durable ack. `as_data`: the records
    exactly as benchmarks/data.py makes them (else with a new event time)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    now = None if as_data else time.time()
    clients = [ctx.Process(target=_client, args=(x.target, group, n, batch, k, processes,
                                                  threads, now, barrier, results))
               for k in range(processes)]
    for c in clients:
        c.start()
    parts: list[dict[str, Any]] = []
    try:
        barrier.wait(timeout=300)
        spy_run = None
        if spy:  # the writer process: where every write commits (the single one at workers 1)
            pid = x.pids()[0] if x.workers == 1 else x.server.info()["writer_pid"]
            spy_run = _spy_start(pid, 4.0, spy[0], spy[1])
        roles0 = x.cpu_by_role()
        cpu0, busy0, t0 = tree_cpu_s(x.pids()), busy_s(), time.perf_counter()
        while len(parts) < processes:
            try:
                parts.append(results.get(timeout=0.5))
            except queue.Empty:
                if any(c.exitcode not in (None, 0) for c in clients):
                    raise RuntimeError("a PutRecords client failed") from None
        seconds = time.perf_counter() - t0
        cpu, busy = tree_cpu_s(x.pids()) - cpu0, busy_s() - busy0
        roles1 = x.cpu_by_role()
    finally:
        for c in clients:
            c.join(timeout=10)
            if c.is_alive():
                c.kill()
    errors = [e for p in parts for e in p["errors"]]
    written = sum(p["written"] for p in parts)
    if errors or written != n:
        raise verify.CheckFailed(f"{x.name} {group}: {written} of {n} written; {errors[:3]}")
    lat = np.array([v for p in parts for v in p["latencies_ms"]])
    out = {"records": n, "seconds": round(seconds, 3), "records_per_s": round(n / seconds, 1),
           "call_p50_ms": round(float(np.percentile(lat, 50)), 2),
           "call_p99_ms": round(float(np.percentile(lat, 99)), 2),
           "server_cpu_us_per_record": round(cpu * 1e6 / n, 2),
           "server_cores": round(cpu / seconds, 2), "machine_busy_cores": round(busy / seconds, 2),
           "server_cores_by_process": {k: round((v - roles0.get(k, 0.0)) / seconds, 2)
                                       for k, v in roles1.items()}}
    if spy_run is not None:
        out["profile"] = _spy_finish(*spy_run)
    return out


def parquet_rows(x: Tessera, group: str) -> int:
    glob = offline_layout.parquet_glob(x.server.data_dir / "offline", group)
    for _ in range(5):  # a file renamed or compacted away between the glob and the read
        try:
            rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}', "
                              "hive_partitioning=true)").fetchall()
            return int(rows[0][0])
        except duckdb.Error as exc:
            if "No files found" in str(exc):
                return 0
            time.sleep(0.2)
    raise RuntimeError(f"cannot count {group}'s Parquet rows")


def bench_writes(subjects: list[Tessera], mode: dict[str, Any], work: Path,
                 profile: dict[str, Any]) -> dict[str, Any]:
    n = mode["write_records"]
    for x in subjects:
        aggregation_bench._create(x.server.http_url, PLAIN, None)
        data.create_group(x.server.http_url, ONLINE, offline=False)
        aggregation_bench._create(x.server.http_url, AGG, aggregation_bench.ONLINE_AGGREGATIONS)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        x.name: {g: [] for g in (PLAIN, ONLINE, AGG)} for x in subjects}
    acked = {x.name: {PLAIN: 0, AGG: 0} for x in subjects}
    for r in range(mode["write_rounds"]):
        order = subjects[r % len(subjects):] + subjects[:r % len(subjects)]
        for x in order:
            for g in (PLAIN, ONLINE, AGG):
                spy = None
                if r == mode["write_rounds"] - 1 and g == PLAIN and x.workers in (1, 2):
                    spy = (work, f"put_records_{x.name}")
                res = bulk(x, g, n, spy=spy)
                if spy and "profile" in res:
                    profile[f"PutRecords_{x.name}"] = res.pop("profile")
                if g in acked[x.name]:
                    acked[x.name][g] += n
                    res["history_backlog_rows_after"] = acked[x.name][g] - parquet_rows(x, g)
                    res["outbox_pending_gauge_after"] = verify.unlabeled(
                        x.server.http_url, "tessera_offline_outbox_pending_rows")
                runs[x.name][g].append(res)
                _say(f"write round {r + 1} {x.name} {g}: {res['records_per_s']:,.0f} records/s"
                     f" ({res['server_cpu_us_per_record']} us/record server CPU)")
    drain: dict[str, Any] = {}
    t_end = time.monotonic()
    for x in subjects:  # every acked history row reaches Parquet (flush every 30 s by default)
        for g in (PLAIN, AGG):
            while (rows := parquet_rows(x, g)) < acked[x.name][g]:
                if time.monotonic() - t_end > 180:
                    raise verify.CheckFailed(f"{x.name} {g}: {rows} of {acked[x.name][g]} "
                                             "history rows in Parquet after 180 s")
                time.sleep(1)
            if rows != acked[x.name][g]:
                raise verify.CheckFailed(f"{x.name} {g}: {rows} Parquet rows for "
                                         f"{acked[x.name][g]} acked writes")
            drain[f"{x.name}.{g}"] = {"parquet_rows": rows,
                                      "seconds_after_last_load": round(
                                          time.monotonic() - t_end, 1)}
    out: dict[str, Any] = {"records_per_run": n, "records_per_message": 1000,
                           "clients": "2 processes x 4 threads, prepared bodies",
                           "runs": runs, "history_in_parquet": drain, "median": {}}
    for x in subjects:
        med = {g: statistics.median(v["records_per_s"] for v in runs[x.name][g])
               for g in (PLAIN, ONLINE, AGG)}
        cpu = {g: statistics.median(v["server_cpu_us_per_record"] for v in runs[x.name][g])
               for g in (PLAIN, ONLINE, AGG)}
        out["median"][x.name] = {
            "history_on_records_per_s": med[PLAIN], "online_only_records_per_s": med[ONLINE],
            "aggregations_18_records_per_s": med[AGG],
            "aggregation_over_plain": round(med[AGG] / med[PLAIN], 3),
            "server_cpu_us_per_record": cpu}
    return out


# --- Kafka ---------------------------------------------------------------------------------------


def bench_kafka(workers: list[int], mode: dict[str, Any], work: Path) -> dict[str, Any]:
    external = os.environ.get(BOOTSTRAP_ENV)
    kafka = KafkaBroker(external) if external else KafkaBroker.start_tansu(work / "tansu.log")
    out: dict[str, Any] = {"broker": "external " + external if external else "tansu (memory)",
                           "events": mode["kafka_events"], "runs": {}, "steady": {}}
    try:
        n, parts = mode["kafka_events"], ingest_bench.PARTITIONS
        backlog = kafka.create_topic(kafka.unique("scale-backlog"), parts)
        steady = {k: kafka.create_topic(kafka.unique(f"scale-steady-w{k}"), parts)
                  for k in workers}
        for t in [backlog, *steady.values()]:
            kafka.create_topic(f"{t}.dlq")

        def config(k: int, group_id: str) -> dict[str, str]:
            topics = [{"topic": backlog, "feature_group": ingest_bench.GROUP,
                       "dead_letter_topic": f"{backlog}.dlq"},
                      {"topic": steady[k], "feature_group": ingest_bench.GROUP,
                       "dead_letter_topic": f"{steady[k]}.dlq"}]
            return {"TESSERA_INGEST": json.dumps({"bootstrap_servers": kafka.bootstrap,
                                                  "group_id": group_id, "topics": topics})}

        # The group exists before the backlog does: each layout's data directory is made
        # once, its group created while both topics are empty.
        for k in workers:
            x = Tessera(k, work, config(k, kafka.unique("scale-init")), tag="-kafka")
            with FeatureStoreClient(grpc=x.target, http=x.server.http_url) as fs:
                fs.create_feature_group(ingest_bench.GROUP, "user_id", "ts",
                                        ingest_bench.FEATURES)
            x.stop()
        out["produce_events_per_s"] = round(ingest_bench.produce_backlog(kafka, backlog, n))
        _say(f"kafka: {n:,} events produced")
        for r in range(mode["kafka_rounds"]):
            for k in (workers if r % 2 == 0 else workers[::-1]):
                gid = kafka.unique(f"scale-w{k}")
                x = Tessera(k, work, config(k, gid), tag="-kafka")
                try:
                    res = _drain(kafka, x, gid, backlog, n)
                    res["check"] = ingest_bench.check_latest(x.server, n)
                    if res["check"]["wrong_or_missing"]:
                        raise verify.CheckFailed(f"kafka workers {k}: {res['check']}")
                    out["runs"].setdefault(x.name, []).append(res)
                    _say(f"kafka round {r + 1} {x.name}: {res['records_per_s']:,.0f} records/s")
                    if r == mode["kafka_rounds"] - 1:  # last: its events are the newest
                        st = ingest_bench.run_steady(kafka, x.server, 10_000, mode["steady_s"],
                                                     work, embedded_topic=steady[k])
                        out["steady"][x.name] = st
                        _say(f"kafka steady {x.name}: freshness {st['freshness_ms']}")
                finally:
                    x.stop()
        out["median_records_per_s"] = {name: round(statistics.median(
            v["records_per_s"] for v in runs)) for name, runs in out["runs"].items()}
    finally:
        kafka.stop()
    return out


def _drain(kafka: KafkaBroker, x: Tessera, gid: str, topic: str, n: int) -> dict[str, Any]:
    """Records/s durable: the consumer commits an offset once its batch is acked by the store."""
    first = None
    last_t, last_n = 0.0, 0
    cpu0 = None
    deadline = time.monotonic() + 600
    while last_n < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"backlog not drained: {last_n} of {n}\n{x.server.log()[-3000:]}")
        time.sleep(0.25)
        committed = sum(max(0, o) for o in kafka.committed(gid, topic,
                                                           ingest_bench.PARTITIONS).values())
        now = time.monotonic()
        if committed > 0 and first is None:
            first = (now, committed)
            cpu0 = tree_cpu_s(x.pids())
        if committed > last_n:
            last_t, last_n = now, committed
            cpu1 = tree_cpu_s(x.pids())
    assert first is not None and cpu0 is not None
    counted = last_n - first[1]
    seconds = last_t - first[0]
    return {"records": last_n, "seconds": round(seconds, 2),
            "records_per_s": round(counted / seconds, 1) if seconds else None,
            "server_cpu_us_per_record": round((cpu1 - cpu0) * 1e6 / counted, 1)
            if counted else None}


# --- py-spy --------------------------------------------------------------------------------------


def _spy_start(pid: int, seconds: float, work: Path, label: str) -> tuple | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return None
    out = work / f"spy-{label}.txt"
    proc = subprocess.Popen([pyspy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                             "-r", "100", "--gil", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out, pid


def _spy_finish(proc: subprocess.Popen, out: Path, pid: int) -> dict[str, Any]:
    from benchmarks.profile import summarize

    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    if not out.exists():
        return {"pid": pid, "error": "py-spy wrote nothing"}
    try:
        cmd = " ".join(psutil.Process(pid).cmdline()[1:4])
    except psutil.NoSuchProcess:
        cmd = "?"
    text = summarize(out.read_text(), top=12)
    return {"pid": pid, "process": cmd, "gil_samples_only": True,
            "summary": text.splitlines()}


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run (~4 min)")
    p.add_argument("--workers", default="1,2,4", help="layouts to compare (default 1,2,4)")
    p.add_argument("--skip", nargs="*", default=[], choices=("reads", "writes", "kafka"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    a = p.parse_args(argv)
    if not h2load.available():
        sys.exit("h2load is not installed: apt-get install -y nghttp2-client")
    mode = QUICK if a.quick else FULL
    workers = [int(w) for w in a.workers.split(",")]
    t0 = time.monotonic()
    result: dict[str, Any] = {"machine": report.machine(), "mode": "quick" if a.quick else "full",
                              "config": {**mode, "workers": workers,
                                         "concurrencies": list(CONCURRENCIES),
                                         "h2load_layout": {str(c): h2load.layout(c)
                                                           for c in CONCURRENCIES}},
                              "targets": TARGETS, "profile": {}}
    work = Path(tempfile.mkdtemp(prefix="tessera-scaling-"))
    subjects: list[Tessera] = []
    echoes: list[Echo] = []
    try:
        if not {"reads", "writes"} <= set(a.skip):
            subjects = [Tessera(k, work) for k in workers]
            _say("servers: " + ", ".join(f"{x.name} pid {x.pids()[0]}" for x in subjects))
        if "reads" not in a.skip:
            echoes = [Echo(1, work), Echo(2, work)]
            for x in subjects:
                data.create_group(x.server.http_url, READ_GROUP, offline=False)
                bulk_read = bulk_records(x, READ_GROUP, mode["read_records"])
                _say(f"{x.name}: {mode['read_records']:,} read records loaded ({bulk_read})")
            result["reads"] = bench_reads(subjects, echoes, mode, work, result["profile"])
            for e in echoes:
                e.stop()
            echoes = []
            _save(result, a.out)
        if "writes" not in a.skip:
            result["writes"] = bench_writes(subjects, mode, work, result["profile"])
            _save(result, a.out)
        for x in subjects:
            x.stop()
        subjects = []
        if "kafka" not in a.skip:
            result["kafka"] = bench_kafka([w for w in workers if w <= 2], mode, work)
    finally:
        for e in echoes:
            e.stop()
        for x in subjects:
            x.server.kill()
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["met"] = _met(result)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(_table(result), indent=1))
    print(f"report: {a.out} ({result['elapsed_s']} s)")
    return 0


def _save(result: dict[str, Any], out: Path) -> None:
    """The report so far (rewritten whole at the end)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def bulk_records(x: Tessera, group: str, n: int) -> float:
    return bulk(x, group, n, as_data=True)["records_per_s"]


def _met(r: dict[str, Any]) -> dict[str, Any]:
    met: dict[str, Any] = {}
    if "reads" in r:
        ratio = r["reads"]["ratios"].get("workers_2_over_workers_1", {})
        met["get_w2_over_w1_c16"] = ratio.get("16")
        met["get_w2_over_w1_c64"] = ratio.get("64")
        met["get_ratio_target_met"] = bool(ratio) and min(ratio["16"], ratio["64"]) >= 1.6
        met["get_p99_ms_c1"] = {k: v["1"]["p99_ms"] for k, v in r["reads"]["cells"].items()
                                if k.startswith("workers")}
        met["get_p99_c1_target_met"] = {k: v <= 1.0 for k, v in met["get_p99_ms_c1"].items()}
    if "writes" in r:
        m = r["writes"]["median"]
        met["bulk_history_on_target_met"] = {k: v["history_on_records_per_s"] >= 100_000
                                             for k, v in m.items()}
        best = max(m, key=lambda k: m[k]["history_on_records_per_s"])
        met["agg_over_plain_on_faster_layout"] = {"layout": best,
                                                  "ratio": m[best]["aggregation_over_plain"],
                                                  "met": m[best]["aggregation_over_plain"] >= 0.8}
    if "kafka" in r:
        k = r["kafka"]
        met["kafka_target_met"] = {n: v >= 50_000 for n, v in k["median_records_per_s"].items()}
        met["freshness_p99_target_met"] = {n: s["freshness_ms"]["p99"] <= 500
                                           for n, s in k["steady"].items()}
    return met


def _table(r: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {"load_average": [r["machine"].get("load_avg_1m_at_start"),
                                          r["machine"]["load_average_at_end"]]}
    if "reads" in r:
        t["GetRecord calls/s | p50 | p99 ms | server us/call"] = {
            name: {c: f"{v['calls_per_s']:,.0f} | {v['p50_ms']} | {v['p99_ms']} | "
                      f"{v.get('server_cpu_us_per_call')}" for c, v in cells.items()}
            for name, cells in r["reads"]["cells"].items()}
        t["ratios"] = r["reads"]["ratios"]
    if "writes" in r:
        t["writes (median records/s)"] = r["writes"]["median"]
    if "kafka" in r:
        t["kafka records/s"] = r["kafka"]["median_records_per_s"]
        t["freshness ms"] = {k: v["freshness_ms"] for k, v in r["kafka"]["steady"].items()}
    t["met"] = r["met"]
    return t


if __name__ == "__main__":
    sys.exit(main())
