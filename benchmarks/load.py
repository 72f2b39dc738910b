"""Bulk load: N records via PutRecords from several client processes, timed from the first call
to the last durable ack (the server answers PutRecords only after the group commit's fsync).

Request bodies are built and serialized before the clock starts, so the figure is the server's
ingest rate, not the clients' protobuf building; the clients then only send bytes.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time

import grpc
import numpy as np

from benchmarks import data
from tessera.proto.v1 import feature_store_pb2 as pb

PUT_RECORDS = "/tessera.v1.FeatureStore/PutRecords"


def bulk_load(
    target: str, n: int, batch: int = 1000, processes: int = 2, threads: int = 4,
    group: str = data.GROUP,
) -> dict[str, float | int]:
    """Load records 0..n-1 into `group`; return the timing and what the server acknowledged."""
    ctx = mp.get_context("spawn")  # the parent has grpc threads: never fork it
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_client, args=(target, group, n, batch, k, processes, threads,
                                          barrier, results))
        for k in range(processes)
    ]
    t_build = time.perf_counter()
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=300)  # every client has its bodies ready
        build_s = time.perf_counter() - t_build
        start = time.perf_counter()
        parts = _collect(workers, results, timeout_s=900)
        seconds = time.perf_counter() - start
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
    errors = [e for p in parts for e in p["errors"]]
    if errors:
        raise RuntimeError(f"bulk load failed: {errors[:3]}")
    written = sum(p["written"] for p in parts)
    lat_ms = np.concatenate([p["latencies_ms"] for p in parts])
    return {
        "records": n,
        "written_acked": written,
        "records_per_call": batch,
        "client_processes": processes,
        "client_threads_per_process": threads,
        "build_bodies_s": round(build_s, 2),
        "seconds": round(seconds, 3),
        "records_per_s": round(n / seconds, 1),
        "call_p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "call_p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
    }


def _collect(workers: list, results: mp.Queue, timeout_s: float) -> list[dict]:
    parts: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(parts) < len(workers):
        try:
            parts.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"bulk load clients failed (exit codes {dead})") from None
    return parts


def _client(target: str, group: str, n: int, batch: int, k: int, processes: int, threads: int,
            barrier: mp.synchronize.Barrier, results: mp.Queue) -> None:
    # Client k takes every processes-th chunk of `batch` consecutive records.
    bodies: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    for lo in range(k * batch, n, processes * batch):
        hi = min(lo + batch, n)
        bodies.put((hi - lo, data.put_records_request(range(lo, hi), group)))
    channel = grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=30)
    call = channel.unary_unary(PUT_RECORDS)
    written = [0] * threads
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def send(t: int) -> None:
        while True:
            try:
                size, body = bodies.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                resp = pb.PutRecordsResponse.FromString(call(body, timeout=300))
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                return
            lat[t].append((time.perf_counter() - t0) * 1000)
            if resp.written != size:
                errors.append(f"PutRecords wrote {resp.written} of {size}")
            written[t] += resp.written

    barrier.wait(timeout=300)
    pool = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    channel.close()
    results.put({"written": sum(written), "errors": errors,
                 "latencies_ms": np.array([x for xs in lat for x in xs])})
