"""The cost of TLS on the read path, one command:

    .venv/bin/python -m benchmarks.tls_bench [--quick] [--workers 1,2]

For each layout (`tessera serve --workers N`) two servers run side by side, each in its own
data directory with the same records: one plaintext, one with TLS on both ports
(TESSERA_TLS__CERT / __KEY: a certificate of a CA made for the run, tests/certs.py). h2load
drives, at concurrency 1 and 16, gRPC GetRecord (benchmarks/scaling_bench.h2load_segment: one
prepared protobuf body per segment, a random key per round; over TLS h2load negotiates h2 by
ALPN) and the REST runtime's GET of one record (JSON over HTTP/1.1, granian; rest_bench's
h2load_http), the handshakes falling in each run's warm-up; segments are interleaved (both
servers at one method and concurrency, then the next; the order rotates each round), so the
machine's drifts fall on both alike. Per cell: calls/s, p50/p99 and the server's CPU per call
(the supervisor and all its children, psutil). The figures that survive this machine's noise
are the ratios within a round and the server CPU per call; the report lists both, with
`other_processes_cores` (CPU used by everything else while the cell ran).

The floor, measured in the same rounds: a bare grpc.aio echo server (no Tessera code, one
process) plaintext and TLS, answering a GetRecord response's bytes: what TLS costs grpcio
itself, next to what it costs Tessera's GetRecord.

Also, what an inference service in Python sees: `sdk`: FeatureStoreClient.get_record at c=1
(the SDK's TLS channel with `tls_ca=` vs its plaintext one), p50/p99 of each over alternating
blocks of calls, and the client process's CPU per call.

Checks: every key read back through grpcio (over TLS from the TLS server, verified against the
run's CA) and compared with the record written, and over REST, on both servers; the TLS server
refuses a plaintext call (UNAVAILABLE) and its HTTP port answers only HTTPS; each h2load gRPC
segment's response bytes equal its OK calls' responses (a gRPC error has no body), each REST
answer is 200. Writes benchmarks/results/tls.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from benchmarks import data, h2load, report, verify
from benchmarks.rest_bench import h2load_http
from benchmarks.scaling_bench import busy_s, children_cpu_s, h2load_segment, tree_cpu_s
from benchmarks.segments import Cell
from tessera.client import FeatureStoreClient
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.certs import Certs, make_certs
from tests.kafka_fixtures import free_port
from tests.serverproc import ServerProcess

GET = "/tessera.v1.FeatureStore/GetRecord"
PUT_RECORDS = "/tessera.v1.FeatureStore/PutRecords"
GROUP = "tls_read"  # offline store off: no history flush during the read segments
CONCURRENCIES = (1, 16)
#: The methods measured: gRPC GetRecord (HTTP/2), the REST runtime's GET of one record (JSON
#: over HTTP/1.1, one connection per request in flight: what most REST clients do), and the
#: floor: a bare grpc.aio echo server (no Tessera code) answering a GetRecord response's bytes,
#: plaintext and TLS, which tells grpcio's own cost of TLS from Tessera's.
METHODS = ("grpc_get", "rest_get_h1", "grpc_echo_floor")
ECHO = "/bench.Echo/Echo"
ECHO_SERVER = r"""
import asyncio, sys, grpc
async def main(port, cert, key):
    async def echo(request, context):
        return request
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    address = f"127.0.0.1:{port}"
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            server.add_secure_port(address, grpc.ssl_server_credentials([(k.read(), c.read())]))
    else:
        server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main(int(sys.argv[1]), *(sys.argv[2:4] if len(sys.argv) > 2 else (None, None))))
"""
FULL = {"records": 20_000, "rounds": 4, "segment_s": 4.0, "warmup_s": 1.0, "sdk_calls": 4000}
QUICK = {"records": 5_000, "rounds": 2, "segment_s": 2.0, "warmup_s": 0.5, "sdk_calls": 1000}


def _say(msg: str) -> None:
    print(f"[tls] {time.strftime('%H:%M:%S')} {msg}", flush=True)


class Subject:
    """One server: `tessera serve --workers N`, plaintext or TLS on both ports."""

    def __init__(self, workers: int, tls: bool, certs: Certs, work: Path) -> None:
        self.workers, self.tls, self.certs = workers, tls, certs
        self.name = f"workers_{workers}_{'tls' if tls else 'plain'}"
        env = certs.server_env() if tls else {}
        self.server = ServerProcess(work / self.name, extra_env=env,
                                    workers=workers).start(timeout_s=300)

    @property
    def target(self) -> str:
        return self.server.grpc_target

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.http_port}"

    def pids(self) -> list[int]:
        assert self.server.proc is not None
        return [self.server.proc.pid]

    def channel(self) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(
            self.target, grpc.ssl_channel_credentials(self.certs.ca.read_bytes()))

    def client(self) -> FeatureStoreClient:
        return FeatureStoreClient(grpc=self.target, http=None, timeout_s=30,
                                  tls_ca=self.certs.ca if self.tls else None,
                                  read_your_writes=False)

    def load(self, n: int) -> None:
        """The group and records 0..n-1 (benchmarks/data.py)."""
        verify_tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.certs.ca)) if self.tls else True)
        with httpx.Client(base_url=self.http_url, timeout=30, verify=verify_tls) as http:
            r = http.post("/v1/feature-groups", json=data.group_definition(GROUP, offline=False))
            if r.status_code != 201:
                raise RuntimeError(f"{self.name}: creating '{GROUP}' failed: {r.text}")
        with self.channel() as ch:
            put = ch.unary_unary(PUT_RECORDS)
            for lo in range(0, n, 1000):
                raw = put(data.put_records_request(range(lo, min(n, lo + 1000)), GROUP),
                          timeout=60)
                if pb.PutRecordsResponse.FromString(raw).written != min(1000, n - lo):
                    raise verify.CheckFailed(f"{self.name}: PutRecords at {lo} short")

    def check_tls_is_on(self) -> None:
        """The TLS server refuses plaintext on both ports."""
        if not self.tls:
            return
        with grpc.insecure_channel(self.target) as ch:
            try:
                ch.unary_unary(GET)(data.get_request(0, GROUP), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise verify.CheckFailed(f"{self.name}: plaintext gRPC gave {exc}") from exc
            else:
                raise verify.CheckFailed(f"{self.name}: a plaintext gRPC call was answered")
        try:
            httpx.get(f"http://127.0.0.1:{self.server.http_port}/healthz", timeout=10)
        except httpx.TransportError:
            pass
        else:
            raise verify.CheckFailed(f"{self.name}: plaintext HTTP was answered")

    def stop(self) -> None:
        self.server.kill()


class EchoSubject:
    """The floor: a bare grpc.aio echo server in one process, plaintext or TLS (the same server
    certificate as the TLS Tessera)."""

    workers = 0

    def __init__(self, tls: bool, certs: Certs, work: Path) -> None:
        self.tls = tls
        self.name = f"echo_{'tls' if tls else 'plain'}"
        self.port = free_port()
        args = [str(certs.server.cert), str(certs.server.key)] if tls else []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, str(self.port), *args], stdout=subprocess.PIPE,
            stderr=open(work / f"{self.name}.log", "ab"), text=True)  # noqa: SIM115
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.name} did not start")
        self.certs = certs

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def echoes(self, message: bytes) -> None:
        """The server answers `message` with itself (over TLS verified by the run's CA)."""
        channel = (grpc.secure_channel(self.target, grpc.ssl_channel_credentials(
            self.certs.ca.read_bytes())) if self.tls else grpc.insecure_channel(self.target))
        with channel:
            if channel.unary_unary(ECHO)(message, timeout=10) != message:
                raise verify.CheckFailed(f"{self.name} did not echo")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _segment(s: Subject | EchoSubject, method: str, c: int, key: int, body: bytes, frame: int,
             mode: dict[str, Any], work: Path) -> Any:
    cpu0, busy0, gen0, t0 = tree_cpu_s(s.pids()), busy_s(), children_cpu_s(), time.monotonic()
    if method in ("grpc_get", "grpc_echo_floor"):
        path = GET if method == "grpc_get" else ECHO
        seg = h2load_segment(s.target, path, body, c, mode["segment_s"], mode["warmup_s"],
                             work / "h2", frame, scheme="https" if s.tls else "http")
    else:
        assert isinstance(s, Subject)
        # rest_bench's h2load run (warm-up excluded from its log; any answer but 200 fails).
        seg = h2load_http(s.http_url + _record_path(key), "h1", c, [], None,
                          mode["segment_s"], mode["warmup_s"], work / "h1")
    seg.wall_s = time.monotonic() - t0
    seg.server_cpu_s = tree_cpu_s(s.pids()) - cpu0
    seg.generator_cpu_s = children_cpu_s() - gen0
    seg.other_cpu_s = max(0.0, busy_s() - busy0 - seg.server_cpu_s - seg.generator_cpu_s)
    # CPU per call over the whole segment (warm-up included): calls of the whole segment,
    # from the measured rate over the wall time.
    seg.server_calls = round(seg.latencies_us.size / seg.seconds * seg.wall_s)
    return seg


def _record_path(k: int) -> str:
    return f"/v1/feature-groups/{GROUP}/records/{data.record_id(k)}"


def bench_reads(subjects: list[Subject], echoes: list[EchoSubject], mode: dict[str, Any],
                work: Path) -> dict[str, Any]:
    n = mode["records"]
    rng = np.random.default_rng(20261129)
    keys = [int(k) for k in rng.integers(0, n, mode["rounds"])]
    bodies = [data.get_request(k, GROUP) for k in keys]
    frames: dict[bytes, int] = {}
    for s in subjects:  # every key reads back as the record written, on every server
        with s.channel() as ch:
            call = ch.unary_unary(GET)
            for k, body in zip(keys, bodies, strict=True):
                raw = call(body, timeout=10)
                if not data.matches(k, pb.GetRecordResponse.FromString(raw).record):
                    raise verify.CheckFailed(f"{s.name}: GetRecord({k}) is not record {k}")
                frames[body] = len(data.grpc_frame(raw))
        verify_tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(s.certs.ca)) if s.tls else True)
        with httpx.Client(base_url=s.http_url, timeout=10, verify=verify_tls) as http:
            for k in keys:
                answer = http.get(_record_path(k))
                if answer.status_code != 200 or data.record_id(k) not in answer.text:
                    raise verify.CheckFailed(f"{s.name}: REST GET of {k}: {answer.text[:200]}")
        s.check_tls_is_on()
    # The floor echoes what GetRecord answers (the first key's response), at its size.
    with subjects[0].channel() as ch:
        echo_body = ch.unary_unary(GET)(bodies[0], timeout=10)
    for e in echoes:
        e.echoes(echo_body)
    methods = mode["methods"]
    measured: dict[str, list[Any]] = {m: list(echoes if m == "grpc_echo_floor" else subjects)
                                      for m in methods}
    cells = {(s.name, m, c): Cell(f"{s.name}/{m}", c)
             for m in methods for s in measured[m] for c in CONCURRENCIES}
    for r in range(mode["rounds"]):
        for m in methods:
            body = echo_body if m == "grpc_echo_floor" else bodies[r]
            frame = len(data.grpc_frame(echo_body)) if m == "grpc_echo_floor" else frames[body]
            who = measured[m]
            for c in CONCURRENCIES:
                for s in who[r % len(who):] + who[:r % len(who)]:
                    cells[(s.name, m, c)].add(_segment(s, m, c, keys[r], body, frame, mode,
                                                       work))
                _say(f"round {r + 1} {m} c={c}: " + ", ".join(
                    f"{s.name} {cells[(s.name, m, c)].rates()[-1]:,.0f}/s" for s in who))
    out: dict[str, Any] = {"records": n, "keys": keys, "cells": {}}
    for m in methods:
        for s in measured[m]:
            out["cells"].setdefault(s.name, {})[m] = {
                str(c): cells[(s.name, m, c)].summary() for c in CONCURRENCIES}
    ratios: dict[str, Any] = {}
    for m in methods:
        if m == "grpc_echo_floor":
            if echoes:
                ratios[f"tls_over_plain_{m}"] = _ratios(cells, out, "echo_tls", "echo_plain", m)
            continue
        for w in sorted({s.workers for s in subjects}):
            on, off = f"workers_{w}_tls", f"workers_{w}_plain"
            ratios[f"workers_{w}_tls_over_plain_{m}"] = _ratios(cells, out, on, off, m)
    out["ratios"] = ratios
    return out


def _ratios(cells: dict[tuple[str, str, int], Cell], out: dict[str, Any], on: str, off: str,
            m: str) -> dict[str, Any]:
    """TLS over plaintext for one method, per concurrency."""
    per_c: dict[str, Any] = {}
    for c in CONCURRENCIES:
        a, b = out["cells"][on][m][str(c)], out["cells"][off][m][str(c)]
        # Round by round (the two segments of a round ran back to back): the spread of the
        # ratio says how much of it is noise.
        by_round = [round(x / y, 3) for x, y in zip(
            cells[(on, m, c)].rates(), cells[(off, m, c)].rates(), strict=True) if y]
        per_c[str(c)] = {
            "calls_per_s": round(a["calls_per_s"] / b["calls_per_s"], 3),
            "calls_per_s_by_round": by_round,
            "calls_per_s_median_of_rounds": round(statistics.median(by_round), 3),
            "p50": round(a["p50_ms"] / b["p50_ms"], 3),
            "p99": round(a["p99_ms"] / b["p99_ms"], 3),
            "server_cpu_us_per_call_added": _diff(a.get("server_cpu_us_per_call"),
                                                  b.get("server_cpu_us_per_call")),
            "server_cpu_us_per_call": _ratio(a.get("server_cpu_us_per_call"),
                                             b.get("server_cpu_us_per_call")),
        }
    return per_c


def bench_sdk(subjects: list[Subject], calls: int, blocks: int = 8) -> dict[str, Any]:
    """FeatureStoreClient.get_record at c=1 from this process, TLS vs plaintext, in alternating
    blocks: latency p50/p99 and this process's CPU per call (the client side of TLS)."""
    out: dict[str, Any] = {}
    for w in sorted({s.workers for s in subjects}):
        pair = [s for s in subjects if s.workers == w]
        clients = {s.name: s.client() for s in pair}
        lat: dict[str, list[float]] = {s.name: [] for s in pair}
        cpu: dict[str, float] = {s.name: 0.0 for s in pair}
        rng = np.random.default_rng(5)
        ids = [data.record_id(int(k)) for k in rng.integers(0, 1000, calls // blocks)]
        try:
            for s in pair:  # warm: channels connected, handshakes done
                if clients[s.name].get_record(GROUP, ids[0]) is None:
                    raise verify.CheckFailed(f"{s.name}: the SDK read no record {ids[0]}")
            for b in range(blocks):
                for s in (pair if b % 2 == 0 else pair[::-1]):
                    fs = clients[s.name]
                    c0 = time.process_time()
                    for rid in ids:
                        t0 = time.perf_counter()
                        fs.get_record(GROUP, rid)
                        lat[s.name].append(time.perf_counter() - t0)
                    cpu[s.name] += time.process_time() - c0
        finally:
            for fs in clients.values():
                fs.close()
        per = {name: {"calls": len(v), "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 4),
                      "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 4),
                      "client_cpu_us_per_call": round(cpu[name] / len(v) * 1e6, 1)}
               for name, v in lat.items()}
        on, off = per[f"workers_{w}_tls"], per[f"workers_{w}_plain"]
        out[f"workers_{w}"] = {**per, "tls_over_plain": {
            "p50": round(on["p50_ms"] / off["p50_ms"], 3),
            "p99": round(on["p99_ms"] / off["p99_ms"], 3),
            "client_cpu_us_per_call_added": round(
                on["client_cpu_us_per_call"] - off["client_cpu_us_per_call"], 1)}}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 1) if a is not None and b is not None else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tls_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run (~1 min)")
    p.add_argument("--workers", default="1", help="layouts (default 1; e.g. 1,2)")
    p.add_argument("--rounds", type=int, help="rounds of every cell (default 4; quick 2)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"what to measure (default {','.join(METHODS)})")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tls.json"))
    a = p.parse_args(argv)
    if not h2load.available():
        sys.exit("h2load is not installed: apt-get install -y nghttp2-client")
    mode = dict(QUICK if a.quick else FULL)
    if a.rounds:
        mode["rounds"] = a.rounds
    methods = tuple(m for m in a.methods.split(",") if m)
    unknown = set(methods) - set(METHODS)
    if unknown:
        sys.exit(f"--methods: unknown {sorted(unknown)}; known: {', '.join(METHODS)}")
    mode["methods"] = methods
    workers = [int(w) for w in a.workers.split(",")]
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "machine": report.machine(), "mode": "quick" if a.quick else "full",
        "config": {**mode, "workers": workers, "concurrencies": list(CONCURRENCIES),
                   "h2load_layout": {str(c): h2load.layout(c) for c in CONCURRENCIES},
                   "server_certificate": "ECDSA P-256 (trustme), TLS 1.3 negotiated"},
    }
    work = Path(tempfile.mkdtemp(prefix="tessera-tls-"))
    subjects: list[Subject] = []
    echoes: list[EchoSubject] = []
    try:
        certs = make_certs(work)
        for w in workers:
            for tls in (False, True):
                subjects.append(Subject(w, tls, certs, work))
                subjects[-1].load(mode["records"])
        if "grpc_echo_floor" in methods:
            echoes = [EchoSubject(tls, certs, work) for tls in (False, True)]
        _say("servers: " + ", ".join(f"{s.name} pid {s.pids()[0]}" for s in subjects))
        result["reads"] = bench_reads(subjects, echoes, mode, work)
        result["sdk"] = bench_sdk(subjects, mode["sdk_calls"])
    finally:
        for x in [*subjects, *echoes]:
            x.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(_table(result), indent=1))
    print(f"report: {a.out} ({result['elapsed_s']} s)")
    return 0


def _table(r: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {"load_average": [r["machine"].get("load_avg_1m_at_start"),
                                          r["machine"]["load_average_at_end"]]}
    t["calls/s | p50 | p99 ms | server us/call | other cores"] = {
        f"{name} {m}": {c: f"{v['calls_per_s']:,.0f} | {v['p50_ms']} | {v['p99_ms']} | "
                           f"{v.get('server_cpu_us_per_call')} | {v.get('other_processes_cores')}"
                        for c, v in per_c.items()}
        for name, methods in r["reads"]["cells"].items() for m, per_c in methods.items()}
    t["tls / plain"] = r["reads"]["ratios"]
    t["sdk c=1"] = r["sdk"]
    return t


if __name__ == "__main__":
    sys.exit(main())
