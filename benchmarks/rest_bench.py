"""The REST runtime benchmark, one command:

    .venv/bin/python -m benchmarks.rest_bench [--quick] [--out benchmarks/results/rest.json]

One `tessera serve --workers 1` (one serving process) holding the benchmark's group
(benchmarks/data.py: 10 features, a String id, Integrals, Fractionals, a List and a Vector[8]),
and, in the same run, a bare granian ASGI app (no Tessera code: one fixed response of the size of
a REST GetRecord answer) started with the settings Tessera's HTTP server uses (one worker, one
Rust runtime thread, ASGI without lifespan, the asyncio loop). h2load drives every cell, one
segment per round with a random key each, interleaved (the order rotates each round):

  grpc_get          gRPC GetRecord (HTTP/2, the body as benchmarks/h2load.py frames it)
  rest_json_h1      GET /v1/feature-groups/{g}/records/{id}, JSON, HTTP/1.1
  rest_json_h2      the same over HTTP/2 (prior knowledge)
  rest_proto_h1     the same with Accept: application/x-protobuf, HTTP/1.1
  floor_h1 / _h2    the bare granian app over HTTP/1.1 / HTTP/2
  rest_batch_h1     POST .../records:batchGet with 100 random ids, JSON, HTTP/1.1 (c=1 only)

at concurrency 1, 16 and 64 (HTTP/1.1: one connection per request in flight; HTTP/2: up to 8
connections, the rest as streams).

p99 at c=1 on a shared 2-core machine: one long segment pools every latency, and a few bursts of
other work (a test suite starting, a compile) fill its top 1% with the scheduler's waits, for the
bare granian app as much as for Tessera. So the c=1 tails are also measured as `tail`: many short
runs (TAIL: 0.5 s each after 0.2 s of warm-up) of REST GetRecord, the bare app, batchGet(100)
and gRPC GetRecord, interleaved run by run, each with its own p99 and the cores other processes
used during it; the report gives the median of the runs' p99s, the p99 pooled over the quiet
runs (others under 0.3 cores) and the same for the floor. The targets at c=1 are judged on the
median of the runs' p99s (the pooled p99 of the long segments is reported next to it).
`--tail-nice -10` (root) measures the tails once more with both servers (every thread) and
h2load at nice -10, ahead of the rest of the machine's work: `tail_prioritized`, what the route
and the floor give when they are not queued behind other processes.

`encode` (in this process, no HTTP): the CPU microseconds of the JSON answers written from the
stored bytes by the compiled kernels (server/record_json.py) and by the reference path (decode,
dict, msgspec), GetRecord and batchGet(100), on the benchmark's records, alternately.

Figures per cell: calls/s, p50/p99 (h2load's per-request log, warm-up excluded), the
server's CPU microseconds per call (its process CPU times over the segment) and the cores the
rest of the machine used meanwhile (the noise). Ratios, same run:
REST / gRPC (target >= 2 at c16 and c64), REST / bare granian over the same protocol (target
>= 0.6), REST p99 at c=1 (target <= 1 ms), batchGet(100) p99 at c=1 (target <= 5 ms).

Checks: before timing, every round's key reads back through REST JSON, REST protobuf and gRPC as
the record written (the protobuf answer is the gRPC answer's bytes), and the batch finds its 100
records; during timing, any answer but HTTP 200 fails the run; after it, the server's
tessera_http_requests_total shows no status but 200 for the REST routes.

Another route (e.g. the SageMaker-shaped GetRecord) is one more `Route` in `routes()`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil

from benchmarks import data, h2load, report, verify
from benchmarks.segments import Cell, Segment
from tessera.client import FeatureStoreClient
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import record_json as rj
from tessera.server.record_json import record_json
from tests.integration.wire_helpers import metric_total
from tests.kafka_fixtures import free_port
from tests.serverproc import ServerProcess

GROUP = "rest_bench"
GET = "/tessera.v1.FeatureStore/GetRecord"
CONCURRENCIES = (1, 16, 64)
BATCH = 100
FULL = {"records": 100_000, "rounds": 3, "segment_s": 3.0, "warmup_s": 1.0}
QUICK = {"records": 10_000, "rounds": 1, "segment_s": 2.0, "warmup_s": 0.5}
TARGETS = {"rest_over_grpc_c16_c64": 2.0, "rest_over_granian_floor": 0.6,
           "rest_get_p99_ms_c1": 1.0, "rest_batch_get_100_p99_ms_c1": 5.0}
PROTO = "application/x-protobuf"
#: The short c=1 runs of the tail measurement: routes, runs (full / quick), seconds, warm-up.
TAIL = {"routes": ("rest_json_h1", "floor_h1", "rest_batch_h1", "grpc_get"),
        "runs": 24, "runs_quick": 6, "segment_s": 0.5, "warmup_s": 0.2, "quiet_cores": 0.3}

FLOOR_APP = r"""
import os
BODY = b"x" * int(os.environ["FLOOR_BODY_BYTES"])
START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json"),
                     (b"content-length", str(len(BODY)).encode())]}
END = {"type": "http.response.body", "body": BODY}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send(START)
    await send(END)
"""


@dataclass
class Route:
    """One thing measured: where (the Tessera `server` or the bare granian `floor`), how (`h1`,
    `h2` or `grpc`), and the request for round key `k` (path, body, headers)."""

    name: str
    target: str  # "server" | "floor"
    protocol: str  # "h1" | "h2" | "grpc"
    path: Callable[[int], str]
    body: Callable[[int], bytes | None] = lambda _: None
    headers: list[str] = field(default_factory=list)
    concurrencies: tuple[int, ...] = CONCURRENCIES
    #: the metrics route label on the server (checked: only HTTP 200 answers)
    metric_route: str | None = None


def _record_path(k: int) -> str:
    return f"/v1/feature-groups/{GROUP}/records/{data.record_id(k)}"


def routes(batches: dict[int, list[int]]) -> list[Route]:
    record_template = "/v1/feature-groups/{group}/records/{record_id}"
    return [
        Route("grpc_get", "server", "grpc", lambda _: GET,
              lambda k: data.get_request(k, GROUP)),
        Route("rest_json_h1", "server", "h1", _record_path, metric_route=record_template),
        Route("rest_json_h2", "server", "h2", _record_path, metric_route=record_template),
        Route("rest_proto_h1", "server", "h1", _record_path, headers=[f"accept: {PROTO}"],
              metric_route=record_template),
        Route("floor_h1", "floor", "h1", lambda _: "/"),
        Route("floor_h2", "floor", "h2", lambda _: "/"),
        Route("rest_batch_h1", "server", "h1",
              lambda _: f"/v1/feature-groups/{GROUP}/records:batchGet",
              lambda k: json.dumps({"record_ids": [data.record_id(i) for i in batches[k]]}
                                   ).encode(),
              headers=["content-type: application/json"], concurrencies=(1,),
              metric_route="/v1/feature-groups/{group}/records:batchGet"),
    ]


# --- the processes -------------------------------------------------------------------------------


class Floor:
    """The bare granian ASGI app, one worker, on a free port."""

    def __init__(self, body_bytes: int, work: Path) -> None:
        (work / "floor_app.py").write_text(FLOOR_APP)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "asginl", "--workers", "1",
             "--runtime-threads", "1", "--loop", "asyncio", "--no-ws", "--http", "auto",
             "--backlog", "2048", "--log-level", "warning", "--host", "127.0.0.1",
             "--port", str(self.port), "--working-dir", str(work), "floor_app:app"],
            env={**os.environ, "FLOOR_BODY_BYTES": str(body_bytes)},
            stdout=subprocess.DEVNULL, stderr=open(work / "floor.log", "ab"),  # noqa: SIM115
            start_new_session=True)  # its worker is a child process: stopped with its group
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the bare granian app did not start") from None
                time.sleep(0.1)

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _tree_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _say(msg: str) -> None:
    print(f"[rest] {time.strftime('%H:%M:%S')} {msg}", flush=True)


# --- h2load over HTTP ----------------------------------------------------------------------------

_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def h2load_http(url: str, protocol: str, concurrency: int, headers: list[str],
                body: bytes | None, seconds: float, warmup_s: float, work: Path,
                nice: int = 0) -> Segment:
    """One timed h2load run (after `warmup_s`) of one request; HTTP/1.1 uses one connection per
    request in flight, HTTP/2 benchmarks/h2load.py's layout. Any answer but 200 fails it."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "requests.log"
    log.unlink(missing_ok=True)
    if protocol == "h1":
        conns, streams, proto = concurrency, 1, ["--h1"]
    else:
        (conns, streams), proto = h2load.layout(concurrency), []
    cmd = ["h2load", *proto, "-c", str(conns), "-m", str(streams), "-t", "1", "-N", "30s",
           "-D", f"{round(seconds * 1000)}ms", "--warm-up-time", f"{round(warmup_s * 1000)}ms",
           "--log-file", str(log)]
    if protocol == "grpc":
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        assert body is not None
        body = data.grpc_frame(body)
    for h in headers:
        cmd += ["-H", h]
    if body is not None:
        (work / "body.bin").write_bytes(body)
        cmd += ["-d", str(work / "body.bin")]
    prefix = ["nice", "-n", str(nice)] if nice else []
    proc = subprocess.run([*prefix, *cmd, url], capture_output=True, text=True, timeout=300,
                          check=False)
    r = _REQUESTS.search(proc.stdout)
    if proc.returncode != 0 or r is None:
        raise RuntimeError(f"h2load failed: {' '.join(cmd)} {url}\n{proc.stdout[-2000:]}")
    rows = np.loadtxt(log, dtype=np.int64, delimiter="\t", ndmin=2) if log.stat().st_size else (
        np.empty((0, 3), dtype=np.int64))
    ok = rows[:, 1] == 200
    bad = int((~ok & (rows[:, 1] != -1)).sum())  # -1: cut at the deadline
    if bad:
        raise verify.CheckFailed(f"{url}: {bad} answers were not HTTP 200\n{proc.stdout[-800:]}")
    return Segment(latencies_us=rows[ok, 2].astype(np.float64), seconds=seconds,
                   failed=int((~ok).sum()))


# --- the run -------------------------------------------------------------------------------------


def check_reads(http_url: str, grpc_target: str, keys: list[int],
                batches: dict[int, list[int]]) -> int:
    """Every key reads back as its record through REST JSON, REST protobuf and gRPC; each batch
    finds its records. Returns the REST JSON GetRecord answer's size (the floor's body)."""
    sizes = set()
    with httpx.Client(base_url=http_url, timeout=10) as http, \
            grpc.insecure_channel(grpc_target) as channel:
        get = channel.unary_unary(GET)
        for k in keys:
            raw = get(data.get_request(k, GROUP), timeout=10)
            record = pb.GetRecordResponse.FromString(raw).record
            if not data.matches(k, record):
                raise verify.CheckFailed(f"gRPC GetRecord({k}) is not record {k}")
            js = http.get(_record_path(k))
            if js.status_code != 200 or js.json()["record"] != record_json(record):
                raise verify.CheckFailed(f"REST GetRecord({k}): {js.status_code} {js.text}")
            sizes.add(len(js.content))
            proto = http.get(_record_path(k), headers={"accept": PROTO})
            if proto.content != raw:
                raise verify.CheckFailed(f"REST protobuf GetRecord({k}) is not gRPC's answer")
            batch = http.post(f"/v1/feature-groups/{GROUP}/records:batchGet",
                              json={"record_ids": [data.record_id(i) for i in batches[k]]})
            found = batch.json()["records"] if batch.status_code == 200 else []
            if [data.index_of(r["record_id"]) for r in found] != batches[k]:
                raise verify.CheckFailed(f"REST batchGet of round key {k}: {batch.text[:300]}")
    return max(sizes)


def run(mode: dict[str, Any], work: Path) -> dict[str, Any]:
    n = mode["records"]
    rng = random.Random(20261129)
    keys = [rng.randrange(n) for _ in range(mode["rounds"])]
    batches = {k: rng.sample(range(n), BATCH) for k in keys}
    server = ServerProcess(work / "data", workers=1).start(timeout_s=120)
    floor: Floor | None = None
    try:
        data.create_group(server.http_url, GROUP, offline=False)
        t0 = time.monotonic()
        with FeatureStoreClient(server.grpc_target, server.http_url, timeout_s=60) as client:
            for lo in range(0, n, 1000):
                client.put_records_encoded(
                    GROUP, [data.record(i).SerializeToString()
                            for i in range(lo, min(n, lo + 1000))])
        _say(f"{n:,} records loaded in {time.monotonic() - t0:.1f} s")
        body_bytes = check_reads(server.http_url, server.grpc_target, keys, batches)
        floor = Floor(body_bytes, work)
        targets = {"server": (server.http_url, server.grpc_target, [server.proc.pid]),  # type: ignore[union-attr]
                   "floor": (f"http://127.0.0.1:{floor.port}", "", floor.pids())}
        measured = routes(batches)
        cells = {(r.name, c): Cell(r.name, c, BATCH if "batch" in r.name else 1)
                 for r in measured for c in r.concurrencies}
        for rnd, k in enumerate(keys):
            for c in CONCURRENCIES:
                todo = [r for r in measured if c in r.concurrencies]
                shift = rnd % len(todo)
                for route in todo[shift:] + todo[:shift]:
                    cells[(route.name, c)].add(timed_segment(
                        route, targets, k, c, mode["segment_s"], mode["warmup_s"], work))
                _say(f"round {rnd + 1} c={c}: " + ", ".join(
                    f"{r.name} {cells[(r.name, c)].rates()[-1]:,.0f}/s" for r in todo))
        tail = tail_runs(measured, targets, keys, mode["tail_runs"], work)
        if mode["tail_nice"]:
            tail_nice = _reniced(targets, mode["tail_nice"], lambda: tail_runs(
                measured, targets, keys, mode["tail_runs"], work, nice=mode["tail_nice"]))
        metrics_text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
        for route in measured:
            if route.metric_route is None:
                continue
            method = "POST" if route.body(keys[0]) is not None else "GET"
            for status in ("404", "413", "422", "500", "503"):
                if metric_total(metrics_text, "tessera_http_requests_total", method=method,
                                route=route.metric_route, status=status):
                    raise verify.CheckFailed(f"{route.metric_route} answered {status}")
    finally:
        if floor is not None:
            floor.stop()
        server.stop(timeout_s=60)
    out: dict[str, Any] = {
        "records": n, "keys": keys, "rest_get_response_bytes": body_bytes,
        "cells": {r.name: {str(c): cells[(r.name, c)].summary() for c in r.concurrencies}
                  for r in measured},
        "tail": tail,
        **({"tail_prioritized": {**tail_nice, "nice": mode["tail_nice"]}}
           if mode["tail_nice"] else {}),
    }
    out["ratios"] = ratios(out["cells"])
    return out


def timed_segment(route: Route, targets: dict[str, tuple[str, str, list[int]]], k: int, c: int,
                  seconds: float, warmup_s: float, work: Path, nice: int = 0) -> Segment:
    """One h2load run of `route` for round key `k` at concurrency `c`, with the CPU the target,
    the generator and every other process used during it."""
    http_url, grpc_target, pids = targets[route.target]
    url = (f"http://{grpc_target}" if route.protocol == "grpc" else http_url) + route.path(k)
    cpu0, busy0, gen0, w0 = _tree_cpu_s(pids), _busy_s(), _children_cpu_s(), time.monotonic()
    seg = h2load_http(url, route.protocol, c, route.headers, route.body(k), seconds, warmup_s,
                      work / "h2", nice)
    seg.wall_s = time.monotonic() - w0
    seg.server_cpu_s = _tree_cpu_s(pids) - cpu0
    seg.generator_cpu_s = _children_cpu_s() - gen0
    seg.other_cpu_s = max(0.0, _busy_s() - busy0 - seg.server_cpu_s - seg.generator_cpu_s)
    seg.server_calls = round(seg.latencies_us.size / seg.seconds * seg.wall_s)
    return seg


def _reniced(targets: dict[str, tuple[str, str, list[int]]], nice: int,
             fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """fn() with every process of the servers measured (Tessera's and the bare app's, all
    threads) at `nice` (negative: ahead of the machine's other work), then back at 0."""
    procs = []
    for _, _, pids in targets.values():
        for pid in pids:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
    threads = [(p, t.id) for p in procs for t in p.threads()]
    for _, tid in threads:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    try:
        return fn()
    finally:
        for _, tid in threads:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, 0)


def tail_runs(measured: list[Route], targets: dict[str, tuple[str, str, list[int]]],
              keys: list[int], runs: int, work: Path, nice: int = 0) -> dict[str, Any]:
    """The c=1 tails from many short runs, interleaved route by route (see the module's
    docstring): per route, each run's p99 and noise, their median, the quiet runs pooled."""
    chosen = [r for r in measured if r.name in TAIL["routes"]]
    segs: dict[str, list[Segment]] = {r.name: [] for r in chosen}
    for i in range(runs):
        order = chosen[i % len(chosen):] + chosen[:i % len(chosen)]
        for route in order:
            segs[route.name].append(timed_segment(
                route, targets, keys[i % len(keys)], 1, TAIL["segment_s"], TAIL["warmup_s"],
                work, nice))
    _say(f"tail: {runs} short runs of {', '.join(segs)} at c=1")
    out: dict[str, Any] = {"runs": runs, "segment_s": TAIL["segment_s"],
                           "warmup_s": TAIL["warmup_s"], "quiet_cores": TAIL["quiet_cores"]}
    for name, ss in segs.items():
        p99s = [float(np.percentile(s.latencies_us, 99)) / 1000 for s in ss
                if s.latencies_us.size]
        noise = [s.other_cpu_s / s.wall_s for s in ss]
        quiet = [s for s, n in zip(ss, noise, strict=True) if n <= TAIL["quiet_cores"]]
        pooled = np.concatenate([s.latencies_us for s in quiet]) / 1000 if quiet else None
        out[name] = {
            "p99_ms_median_of_runs": round(float(np.median(p99s)), 4) if p99s else None,
            "p50_ms_median_of_runs": round(float(np.median(
                [np.percentile(s.latencies_us, 50) / 1000 for s in ss
                 if s.latencies_us.size])), 4) if p99s else None,
            "p99_ms_quiet_runs_pooled": round(float(np.percentile(pooled, 99)), 4)
            if pooled is not None and pooled.size else None,
            "quiet_runs": len(quiet),
            "p99_ms_by_run": [round(p, 3) for p in p99s],
            "other_cores_by_run": [round(n, 2) for n in noise],
            "server_cpu_us_per_call": round(
                sum(s.server_cpu_s for s in ss) * 1e6 / max(1, sum(s.server_calls for s in ss)),
                1),
        }
    return out


def encode_costs(n: int, rounds: int = 7) -> dict[str, Any]:
    """CPU microseconds of the REST JSON answers, compiled kernels vs the reference path, on the
    benchmark's records (process CPU time; the two alternate, the median of `rounds`)."""
    payloads = [data.record(i).SerializeToString() for i in range(BATCH)]
    found = [(data.record_id(i), (memoryview(p), None)) for i, p in enumerate(payloads)]
    if (rj.batch_get_body(found, []) != rj.reference_batch_get_body(found, [])
            or rj.get_record_body(payloads[0], None)
            != rj.reference_get_record_body(payloads[0], None)):
        raise verify.CheckFailed("the compiled JSON answers differ from the reference path's")

    def cpu_us(fn: Callable[[], object], calls: int) -> float:
        t = time.process_time()
        for _ in range(calls):
            fn()
        return (time.process_time() - t) * 1e6 / calls

    cases = {
        "get_record": (lambda: rj.get_record_body(payloads[0], None),
                       lambda: rj.reference_get_record_body(payloads[0], None), 2000),
        "batch_get_100": (lambda: rj.batch_get_body(found, []),
                          lambda: rj.reference_batch_get_body(found, []), 100),
    }
    out: dict[str, Any] = {}
    for name, (fast, ref, calls) in cases.items():
        f, r = [], []
        for _ in range(rounds):
            f.append(cpu_us(fast, calls))
            r.append(cpu_us(ref, calls))
        out[name] = {"compiled_cpu_us": round(float(np.median(f)), 2),
                     "reference_cpu_us": round(float(np.median(r)), 2),
                     "speedup": round(float(np.median(r) / np.median(f)), 2)}
    out["batch_get_100"]["compiled_cpu_us_per_record"] = round(
        out["batch_get_100"]["compiled_cpu_us"] / BATCH, 3)
    return out


def ratios(cells: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    def rate(name: str, c: int) -> float:
        return float(cells[name][str(c)]["calls_per_s"])

    out: dict[str, Any] = {}
    for rest, floor in (("rest_json_h1", "floor_h1"), ("rest_json_h2", "floor_h2"),
                        ("rest_proto_h1", "floor_h1")):
        out[f"{rest}_over_grpc_get"] = {str(c): round(rate(rest, c) / rate("grpc_get", c), 3)
                                        for c in CONCURRENCIES}
        out[f"{rest}_over_{floor}"] = {str(c): round(rate(rest, c) / rate(floor, c), 3)
                                       for c in CONCURRENCIES}
        # Server CPU per call: the figure that survives a noisy machine best.
        for base in ("grpc_get", floor):
            out[f"{rest}_cpu_us_per_call_over_{base}"] = {str(c): round(
                cells[rest][str(c)]["server_cpu_us_per_call"]
                / cells[base][str(c)]["server_cpu_us_per_call"], 3) for c in CONCURRENCIES}
    return out


def met(result: dict[str, Any]) -> dict[str, Any]:
    cells, r, tail = result["cells"], result["ratios"], result["tail"]
    get_p99 = tail["rest_json_h1"]["p99_ms_median_of_runs"]
    batch_p99 = tail["rest_batch_h1"]["p99_ms_median_of_runs"]
    best = max(("rest_json_h1", "rest_json_h2"),
               key=lambda n: min(r[f"{n}_over_grpc_get"]["16"], r[f"{n}_over_grpc_get"]["64"]))
    return {
        "rest_over_grpc_c16_c64": {n: [r[f"{n}_over_grpc_get"]["16"],
                                       r[f"{n}_over_grpc_get"]["64"]]
                                   for n in ("rest_json_h1", "rest_json_h2", "rest_proto_h1")},
        "rest_over_grpc_met": min(r[f"{best}_over_grpc_get"]["16"],
                                  r[f"{best}_over_grpc_get"]["64"])
        >= TARGETS["rest_over_grpc_c16_c64"],
        "rest_over_granian_floor": {n: r[f"{n}_over_{f}"] for n, f in (
            ("rest_json_h1", "floor_h1"), ("rest_json_h2", "floor_h2"))},
        "rest_get_p99_ms_c1_median_of_runs": get_p99,
        "rest_get_p99_ms_c1_pooled_long_segments": cells["rest_json_h1"]["1"]["p99_ms"],
        "floor_p99_ms_c1_median_of_runs": tail["floor_h1"]["p99_ms_median_of_runs"],
        "rest_get_p99_met": get_p99 is not None and get_p99 <= TARGETS["rest_get_p99_ms_c1"],
        "rest_batch_get_100_p99_ms_c1_median_of_runs": batch_p99,
        "rest_batch_get_100_p99_ms_c1_pooled_long_segments": cells["rest_batch_h1"]["1"][
            "p99_ms"],
        "rest_batch_get_100_p99_met": batch_p99 is not None
        and batch_p99 <= TARGETS["rest_batch_get_100_p99_ms_c1"],
        **({"prioritized_median_of_runs_p99_ms_c1": {
            name: result["tail_prioritized"][name]["p99_ms_median_of_runs"]
            for name in TAIL["routes"]}} if "tail_prioritized" in result else {}),
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"{'cell':<16}{'c':>4}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'cpu us/call':>12}{'noise cores':>12}"]
    for name, by_c in result["cells"].items():
        for c, s in by_c.items():
            lines.append(f"{name:<16}{c:>4}{s['calls_per_s']:>10,.0f}{s['p50_ms']:>9.3f}"
                         f"{s['p99_ms']:>9.3f}{s.get('server_cpu_us_per_call', 0):>12.1f}"
                         f"{s.get('other_processes_cores', 0):>12.2f}")
    for key in ("tail", "tail_prioritized"):
        tail = result.get(key)
        if tail is None:
            continue
        lines.append(f"c=1 tails ({key}), {tail['runs']} short runs each: median of the runs' "
                     "p99 and p50 (quiet runs pooled, quiet runs)")
        for name in TAIL["routes"]:
            t = tail[name]
            lines.append(f"  {name:<16}{t['p99_ms_median_of_runs']:>9.3f} ms "
                         f"{t['p50_ms_median_of_runs']:>7.3f} ms "
                         f"({t['p99_ms_quiet_runs_pooled']} ms, {t['quiet_runs']})")
    for name, e in result["encode"].items():
        lines.append(f"encode {name}: compiled {e['compiled_cpu_us']} us, reference "
                     f"{e['reference_cpu_us']} us ({e['speedup']}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rest_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run (~1 min)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rest.json"))
    p.add_argument("--tail-nice", type=int, default=0, metavar="N",
                   help="measure the c=1 tails a second time with the measured servers (all "
                        "threads) and h2load at nice N (e.g. -10, as root: ahead of other work "
                        "on a shared machine; both servers alike)")
    a = p.parse_args(argv)
    if not h2load.available():
        sys.exit("h2load is not installed: apt-get install -y nghttp2-client")
    mode = {**(QUICK if a.quick else FULL),
            "tail_runs": TAIL["runs_quick"] if a.quick else TAIL["runs"], "tail_nice": a.tail_nice}
    t0 = time.monotonic()
    result: dict[str, Any] = {"machine": report.machine(), "mode": "quick" if a.quick else "full",
                              "config": {**mode, "concurrencies": list(CONCURRENCIES),
                                         "workers": 1, "h2_layout": {
                                             str(c): h2load.layout(c) for c in CONCURRENCIES}},
                              "targets": TARGETS}
    work = Path(tempfile.mkdtemp(prefix="tessera-rest-"))
    try:
        result["encode"] = encode_costs(mode["records"])
        _say(f"encode: {result['encode']}")
        result.update(run(mode, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["met"] = met(result)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(json.dumps(result["met"], indent=1))
    print(f"report: {a.out} ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
