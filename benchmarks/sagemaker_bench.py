"""The SageMaker-shape GetRecord route (GET /FeatureGroup/{name}?RecordIdentifierValueAsString=,
what boto3's `sagemaker-featurestore-runtime` get_record sends) next to Tessera's gRPC GetRecord
of the same records, on one server, in the same run; and BatchGetRecord of 100 ids (POST
/BatchGetRecord) next to gRPC BatchGetRecord of the same ids, at c=1 and 16.

    .venv/bin/python -m benchmarks.sagemaker_bench [--quick] [--workers 1] [--records 20000]

A real server (`tessera serve --workers N`), the group `bench_users` of benchmarks/data.py (10
features: String id, event time, 3 Integrals, 2 Fractionals, a String, a List[String], a
Vector[8]; offline store off), N records loaded with PutRecords. For each concurrency 1, 16 and
64, rounds of segments alternate between the two routes (the machine's drifts fall on both
alike), each segment asking for one record chosen at random per segment: REST over HTTP/1.1 with
one connection per request in flight (h2load --h1), gRPC over HTTP/2 in benchmarks/h2load.py's
layout. Reported per route and concurrency: requests/s, p50/p99 (h2load's per-request log), the
server's CPU microseconds per request (the server's process tree, from /proc: the figure that
survives a noisy machine), and the ratios REST/gRPC. The noise: the CPU other processes used
during each segment, in cores.

Checked: each record a REST segment asks for is read once with the same URL beforehand and its
values compared with the record loaded (benchmarks/data.py derives record i from i alone); every
measured request must be an HTTP 200 of that response's size; the gRPC side checks its response
the same way (`verify.check_get`-like: the record parses and matches).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from benchmarks import data, h2load
from benchmarks.segments import Segment
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.serverproc import ServerProcess

OUT = Path("benchmarks/results/sagemaker.json")
CONCURRENCY = (1, 16, 64)
#: BatchGetRecord: ids per request, and the concurrencies it is measured at.
BATCH = 100
BATCH_CONCURRENCY = (1, 16)
_TICKS = os.sysconf("SC_CLK_TCK")
_REQUESTS = re.compile(r"requests: \d+ total, (\d+) started, \d+ done, (\d+) succeeded")
_DATA = re.compile(r"traffic: .*\((\d+)\) data")


class CheckFailed(RuntimeError):
    pass


# --- CPU -----------------------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (all threads)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def busy_s() -> float:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / _TICKS


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def settle(pid: int, timeout_s: float = 20.0) -> None:
    """Wait until the server uses under a tenth of a core."""
    deadline = time.monotonic() + timeout_s
    last = tree_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = tree_cpu_s(pid)
        if now - last < 0.01:
            return
        last = now


# --- the two routes ------------------------------------------------------------------------------


def sagemaker_url(server: ServerProcess, i: int) -> str:
    return (f"{server.http_url}/FeatureGroup/{data.GROUP}"
            f"?RecordIdentifierValueAsString={data.record_id(i)}")


def check_sagemaker(url: str, i: int) -> int:
    """GET the record once; compare every value with record i; its response size."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read()
    got = {f["FeatureName"]: f.get("ValueAsString", f.get("ValueAsStringList"))
           for f in json.loads(body)["Record"]}
    want = data.record_values(i)
    if set(got) != set(want):
        raise CheckFailed(f"{url}: features {sorted(got)}, want {sorted(want)}")
    for name, value in want.items():
        text = got[name]
        if isinstance(value, np.ndarray):
            ok = np.array_equal(np.asarray(text, dtype=np.float32), value)
        elif isinstance(value, list):
            ok = text == [str(v) for v in value]
        elif isinstance(value, float):
            ok = float(text) == value
        else:
            ok = text == str(value)
        if not ok:
            raise CheckFailed(f"{url}: {name} is {text!r}, want {value!r}")
    return len(body)


def check_grpc(server: ServerProcess, i: int) -> None:
    with grpc.insecure_channel(server.grpc_target) as ch:
        raw = ch.unary_unary("/tessera.v1.FeatureStore/GetRecord")(data.get_request(i),
                                                                    timeout=10)
    if not data.matches(i, pb.GetRecordResponse.FromString(raw).record):
        raise CheckFailed(f"gRPC GetRecord of record {i} does not match it")


def batch_body(indexes: list[int]) -> bytes:
    return json.dumps({"Identifiers": [{
        "FeatureGroupName": data.GROUP,
        "RecordIdentifiersValueAsString": [data.record_id(i) for i in indexes]}]}).encode()


def check_sagemaker_batch(url: str, indexes: list[int]) -> int:
    """POST the BatchGetRecord once; every record found, in order, with its values."""
    req = urllib.request.Request(url, data=batch_body(indexes), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    out = json.loads(body)
    got = [r["RecordIdentifierValueAsString"] for r in out["Records"]]
    if got != [data.record_id(i) for i in indexes] or out["Errors"] or out[
            "UnprocessedIdentifiers"]:
        raise CheckFailed(f"BatchGetRecord: {len(got)} records of {len(indexes)}, "
                          f"errors {out['Errors'][:1]}")
    for i, rec in zip(indexes, out["Records"], strict=True):
        values = {f["FeatureName"]: f.get("ValueAsString", f.get("ValueAsStringList"))
                  for f in rec["Record"]}
        if values["clicks"] != str(data.record_values(i)["clicks"]):
            raise CheckFailed(f"BatchGetRecord: record {i} has clicks {values['clicks']}")
    return len(body)


def check_grpc_batch(server: ServerProcess, indexes: list[int]) -> None:
    with grpc.insecure_channel(server.grpc_target) as ch:
        raw = ch.unary_unary("/tessera.v1.FeatureStore/BatchGetRecord")(
            data.batch_get_request(indexes), timeout=10)
    resp = pb.BatchGetRecordResponse.FromString(raw)
    if [r.record_identifier for r in resp.records] != [data.record_id(i) for i in indexes] or (
            not all(data.matches(i, r.record) for i, r in zip(indexes, resp.records,
                                                               strict=True))):
        raise CheckFailed("gRPC BatchGetRecord: records missing or not matching")


def h1_segment(url: str, concurrency: int, seconds: float, warmup_s: float, work: Path,
               response_bytes: int, pid: int, body: bytes | None = None) -> Segment:
    """h2load --h1, one connection per request in flight (a POST of `body` when given): a
    warm-up run, then the timed one; every measured request must be a 200 of the checked
    response's size."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "requests.log"
    base = ["h2load", "--h1", "-c", str(concurrency), "-m", "1", "-t", "1", "-N", "30s"]
    if body is not None:
        (work / "body.json").write_bytes(body)
        base += ["-d", str(work / "body.json"), "-H", "content-type: application/json"]
    subprocess.run([*base, "-D", f"{round(warmup_s * 1000)}ms", url], capture_output=True,
                   timeout=600, check=True)
    settle(pid)
    log.unlink(missing_ok=True)
    cmd = [*base, "-D", f"{round(seconds * 1000)}ms", "--log-file", str(log), url]
    cpu0, busy0, gen0, t0 = tree_cpu_s(pid), busy_s(), children_cpu_s(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    settle(pid)
    seg = Segment(latencies_us=np.empty(0), seconds=seconds, wall_s=time.monotonic() - t0)
    seg.server_cpu_s = tree_cpu_s(pid) - cpu0
    seg.generator_cpu_s = children_cpu_s() - gen0
    seg.other_cpu_s = max(0.0, busy_s() - busy0 - seg.server_cpu_s - seg.generator_cpu_s)
    r, d = _REQUESTS.search(proc.stdout), _DATA.search(proc.stdout)
    if proc.returncode != 0 or r is None or d is None:
        raise RuntimeError(f"h2load failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    rows = np.loadtxt(log, dtype=np.int64, delimiter="\t", ndmin=2) if log.stat().st_size else (
        np.empty((0, 3), dtype=np.int64))
    ok = rows[:, 1] == 200
    started, succeeded, data_bytes = int(r.group(1)), int(r.group(2)), int(d.group(1))
    extra = data_bytes - succeeded * response_bytes
    if (~ok).any() or not 0 <= extra <= concurrency * response_bytes:
        raise CheckFailed(f"{url} c={concurrency}: {int((~ok).sum())} non-200 answers, "
                          f"{data_bytes} bytes for {succeeded} OK requests of {response_bytes}")
    seg.latencies_us = rows[ok, 2].astype(np.float64)
    seg.server_calls = started
    return seg


def grpc_segment(server: ServerProcess, path: str, body: bytes, concurrency: int,
                 seconds: float, warmup_s: float, work: Path, pid: int) -> Segment:
    """h2load over HTTP/2 (benchmarks/h2load.py): a warm-up run, then the timed one."""
    h2load.run(server.grpc_target, path, body, concurrency, warmup_s, 0.0, work)
    settle(pid)
    cpu0, busy0, gen0, t0 = tree_cpu_s(pid), busy_s(), children_cpu_s(), time.monotonic()
    seg = h2load.run(server.grpc_target, path, body, concurrency, seconds, 0.0, work)
    settle(pid)
    seg.wall_s = time.monotonic() - t0
    seg.server_cpu_s = tree_cpu_s(pid) - cpu0
    seg.generator_cpu_s = children_cpu_s() - gen0
    seg.other_cpu_s = max(0.0, busy_s() - busy0 - seg.server_cpu_s - seg.generator_cpu_s)
    if seg.failed > concurrency:  # calls in flight at the deadline are abandoned, not failed
        raise CheckFailed(f"gRPC {path} c={concurrency}: {seg.failed} calls failed")
    seg.server_calls = seg.latencies_us.size + seg.failed
    return seg


# --- report --------------------------------------------------------------------------------------


def summary(segments: list[Segment]) -> dict[str, Any]:
    lat = np.concatenate([s.latencies_us for s in segments])
    seconds = sum(s.seconds for s in segments)
    wall = sum(s.wall_s for s in segments)
    calls = sum(s.server_calls for s in segments)
    return {
        "requests_per_s": round(lat.size / seconds, 1),
        "requests_per_s_per_segment": [round(s.latencies_us.size / s.seconds, 1)
                                       for s in segments],
        "p50_ms": round(float(np.percentile(lat, 50)) / 1000, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) / 1000, 3),
        "server_cpu_us_per_request": round(
            1e6 * sum(s.server_cpu_s for s in segments) / max(calls, 1), 1),
        "server_cores": round(sum(s.server_cpu_s for s in segments) / wall, 2),
        "generator_cores": round(sum(s.generator_cpu_s for s in segments) / wall, 2),
        "other_processes_cores": round(sum(s.other_cpu_s for s in segments) / wall, 2),
        "requests": int(lat.size),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s (else 4 of 5 s)")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if not h2load.available():
        print("h2load is needed: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    rounds, seconds, warmup_s = (2, 2.0, 0.5) if args.quick else (4, 5.0, 1.0)
    rng = random.Random(args.seed)
    started = time.time()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tessera-sagemaker-bench-") as tmp:
        work = Path(tmp)
        server = ServerProcess(work / "data", workers=args.workers).start(timeout_s=120)
        try:
            assert server.proc is not None
            pid = server.proc.pid
            data.create_group(server.http_url, data.GROUP, offline=False)
            with grpc.insecure_channel(server.grpc_target) as ch:
                put = ch.unary_unary("/tessera.v1.FeatureStore/PutRecords")
                for lo in range(0, args.records, 1000):
                    hi = min(lo + 1000, args.records)
                    written = pb.PutRecordsResponse.FromString(
                        put(data.put_records_request(range(lo, hi)), timeout=60)).written
                    if written != hi - lo:
                        raise CheckFailed(f"PutRecords {lo}..{hi}: {written} written")
            settle(pid, 60.0)
            cells: dict[str, dict[str, Any]] = {}
            for c in CONCURRENCY:
                rest: list[Segment] = []
                rpc: list[Segment] = []
                for r in range(rounds):
                    i = rng.randrange(args.records)
                    url = sagemaker_url(server, i)
                    size = check_sagemaker(url, i)
                    check_grpc(server, i)
                    rest.append(h1_segment(url, c, seconds, warmup_s, work / f"h1-{c}-{r}",
                                           size, pid))
                    rpc.append(grpc_segment(server, "/tessera.v1.FeatureStore/GetRecord",
                                            data.get_request(i), c, seconds, warmup_s,
                                            work / f"grpc-{c}-{r}", pid))
                sm, g = summary(rest), summary(rpc)
                cells[f"c{c}"] = {
                    "sagemaker_get_record": sm,
                    "grpc_get_record": g,
                    "ratio_rest_to_grpc_throughput": round(
                        sm["requests_per_s"] / g["requests_per_s"], 2),
                    "ratio_rest_to_grpc_cpu_per_request": round(
                        sm["server_cpu_us_per_request"] / g["server_cpu_us_per_request"], 2),
                }
                print(f"c={c}: SageMaker GetRecord {sm['requests_per_s']:.0f}/s p50 "
                      f"{sm['p50_ms']} ms p99 {sm['p99_ms']} ms "
                      f"{sm['server_cpu_us_per_request']} us CPU/request | gRPC GetRecord "
                      f"{g['requests_per_s']:.0f}/s p50 {g['p50_ms']} ms p99 {g['p99_ms']} ms "
                      f"{g['server_cpu_us_per_request']} us CPU/request | others "
                      f"{sm['other_processes_cores']}/{g['other_processes_cores']} cores",
                      flush=True)
            for c in BATCH_CONCURRENCY:
                rest, rpc = [], []
                for r in range(rounds):
                    indexes = rng.sample(range(args.records), BATCH)
                    url = f"{server.http_url}/BatchGetRecord"
                    size = check_sagemaker_batch(url, indexes)
                    check_grpc_batch(server, indexes)
                    rest.append(h1_segment(url, c, seconds, warmup_s, work / f"b1-{c}-{r}",
                                           size, pid, batch_body(indexes)))
                    rpc.append(grpc_segment(server, "/tessera.v1.FeatureStore/BatchGetRecord",
                                            data.batch_get_request(indexes), c, seconds,
                                            warmup_s, work / f"bgrpc-{c}-{r}", pid))
                sm, g = summary(rest), summary(rpc)
                cells[f"batch{BATCH}_c{c}"] = {
                    "sagemaker_batch_get_record": sm,
                    "grpc_batch_get_record": g,
                    "ratio_rest_to_grpc_throughput": round(
                        sm["requests_per_s"] / g["requests_per_s"], 2),
                    "ratio_rest_to_grpc_cpu_per_request": round(
                        sm["server_cpu_us_per_request"] / g["server_cpu_us_per_request"], 2),
                }
                print(f"BatchGetRecord({BATCH}) c={c}: SageMaker {sm['requests_per_s']:.0f}/s "
                      f"p50 {sm['p50_ms']} ms p99 {sm['p99_ms']} ms "
                      f"{sm['server_cpu_us_per_request']} us CPU/request | gRPC "
                      f"{g['requests_per_s']:.0f}/s p50 {g['p50_ms']} ms p99 {g['p99_ms']} ms "
                      f"{g['server_cpu_us_per_request']} us CPU/request", flush=True)
        finally:
            server.stop()
    report = {
        "suite": "sagemaker_get_record",
        "command": "python -m benchmarks.sagemaker_bench" + (" --quick" if args.quick else ""),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load0],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "server": {"workers": args.workers, "records": args.records, "group": data.GROUP,
                   "features": 10},
        "method": {"rounds": rounds, "segment_s": seconds, "warmup_s": warmup_s,
                   "rest": "h2load --h1, one connection per request in flight",
                   "grpc": "h2load over HTTP/2, up to 8 connections x streams"},
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
