"""The fallback load generator, for machines without h2load: grpcio clients in worker processes
(a channel each, blocking calls from threads), run as its own process:

    python -m benchmarks.loadgen --target HOST:PORT --rpc-path /pkg.Service/Method \
        --body body.bin --concurrency 8 --duration-s 5 --warmup-s 1 --out result.npz

It spends Python CPU per call on the same 2 cores as the server, so its throughput is a lower
bound of the server's; the report says which generator produced its figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.segments import Segment

MAX_PROCESSES = 2


def run(
    target: str, rpc_path: str, message: bytes, concurrency: int, duration_s: float,
    warmup_s: float, workdir: Path,
) -> Segment:
    """Same contract as benchmarks.h2load.run, in a separate Python process."""
    workdir.mkdir(parents=True, exist_ok=True)
    body = workdir / "body.msg"
    body.write_bytes(message)
    out = workdir / "result.npz"
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--target", target, "--rpc-path", rpc_path,
           "--body", str(body), "--concurrency", str(concurrency), "--duration-s", str(duration_s),
           "--warmup-s", str(warmup_s), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=duration_s + warmup_s + 120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = np.load(out)
    return Segment(latencies_us=res["latencies_us"], seconds=float(res["seconds"]),
                   failed=int(res["failed"]))


def run_to_completion(
    target: str, rpc_path: str, message: bytes, concurrency: int, duration_s: float,
    warmup_s: float, workdir: Path,
) -> Segment:
    """`run` already awaits every call it sends (none is abandoned at the deadline)."""
    return run(target, rpc_path, message, concurrency, duration_s, warmup_s, workdir)


def _worker(target: str, rpc_path: str, message: bytes, threads: int, warmup_s: float,
            duration_s: float, barrier: mp.synchronize.Barrier, results: mp.Queue) -> None:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
    call = channel.unary_unary(rpc_path)  # bytes in, bytes out
    call(message, timeout=30)  # connected and warm before the clock starts
    barrier.wait()
    measure_at = time.monotonic() + warmup_s
    stop_at = measure_at + duration_s
    lat: list[list[float]] = [[] for _ in range(threads)]
    failed = [0] * threads

    def loop(k: int) -> None:
        out = lat[k]
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                return
            try:
                call(message, timeout=30)
            except grpc.RpcError:
                failed[k] += 1
                continue
            t1 = time.monotonic()
            if t0 >= measure_at and t1 <= stop_at:
                out.append(t1 - t0)

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    channel.close()
    results.put((np.array([x for xs in lat for x in xs]) * 1e6, sum(failed)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--rpc-path", required=True)
    p.add_argument("--body", type=Path, required=True, help="the serialized request message")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration-s", type=float, required=True)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    message = a.body.read_bytes()
    procs = min(MAX_PROCESSES, a.concurrency)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    per_proc = [a.concurrency // procs + (1 if k < a.concurrency % procs else 0)
                for k in range(procs)]
    workers = [ctx.Process(target=_worker, args=(a.target, a.rpc_path, message, n, a.warmup_s,
                                                 a.duration_s, barrier, results))
               for n in per_proc]
    for w in workers:
        w.start()
    parts = [results.get(timeout=a.duration_s + a.warmup_s + 90) for _ in workers]
    for w in workers:
        w.join()
    np.savez(a.out, latencies_us=np.concatenate([lat for lat, _ in parts]),
             seconds=a.duration_s, failed=sum(f for _, f in parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
