"""Driving unary gRPC calls with h2load (nghttp2-client): C, one body per run, per-request log.

A gRPC unary call is an HTTP/2 POST of one length-prefixed message with `content-type:
application/grpc` and `te: trailers`. h2load cannot read grpc-status (a trailer), so callers
check the server's per-code counters (benchmarks/verify.py) for errors.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.data import grpc_frame
from benchmarks.segments import Segment

MAX_CONNECTIONS = 8
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")


def available() -> bool:
    return shutil.which("h2load") is not None


def layout(concurrency: int) -> tuple[int, int]:
    """Connections and streams per connection for a concurrency: up to 8 connections (like 8
    client processes with a channel each), the rest as concurrent streams on them."""
    connections = min(concurrency, MAX_CONNECTIONS)
    return connections, max(1, concurrency // connections)


def run(
    target: str, rpc_path: str, message: bytes, concurrency: int, duration_s: float,
    warmup_s: float, workdir: Path,
) -> Segment:
    """Send `message` to `rpc_path` (e.g. '/tessera.v1.FeatureStore/GetRecord') for `duration_s`
    after `warmup_s`, `concurrency` calls in flight. Calls still in flight at the deadline are
    abandoned (the server sees them cancelled): use `run_to_completion` for writes."""
    timing = ["-D", f"{round(duration_s * 1000)}ms",
              "--warm-up-time", f"{round(warmup_s * 1000)}ms"]
    seg, _ = _h2load(target, rpc_path, message, concurrency, timing, workdir)
    seg.seconds = duration_s
    return seg


def run_to_completion(
    target: str, rpc_path: str, message: bytes, concurrency: int, duration_s: float,
    warmup_s: float, workdir: Path,
) -> Segment:
    """Like `run`, but every call sent is awaited (h2load -n): a warm-up run of a few calls per
    stream gives the rate, then a run of about `duration_s` worth of calls is measured from
    h2load's own elapsed time. Nothing is left in flight, so no write is ever cancelled."""
    def calls(n: float) -> list[str]:  # whole rounds of `concurrency` calls, at least one
        return ["-n", str(max(1, math.ceil(n / concurrency)) * concurrency)]

    warm, warm_s = _h2load(target, rpc_path, message, concurrency, calls(2 * concurrency),
                           workdir)
    rate = warm.latencies_us.size / warm_s if warm_s else 1.0
    if warmup_s - warm_s > 0.2:  # top the warm-up up to `warmup_s`
        _h2load(target, rpc_path, message, concurrency, calls(rate * (warmup_s - warm_s)),
                workdir)
    seg, seconds = _h2load(target, rpc_path, message, concurrency,
                           calls(max(2 * concurrency, rate * duration_s)), workdir)
    seg.seconds = seconds
    return seg


_FINISHED = re.compile(r"finished in ([0-9.]+)(s|ms|us)")


def _h2load(
    target: str, rpc_path: str, message: bytes, concurrency: int, timing: list[str],
    workdir: Path,
) -> tuple[Segment, float]:
    """One h2load run; the measured calls and h2load's elapsed seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    body = workdir / "body.bin"
    body.write_bytes(grpc_frame(message))
    log = workdir / "requests.log"
    log.unlink(missing_ok=True)
    connections, streams = layout(concurrency)
    cmd = [
        "h2load", "-c", str(connections), "-m", str(streams), "-t", "1", *timing,
        "-N", "30s",  # a server that stops answering fails the run instead of hanging it
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        "--log-file", str(log), f"http://{target}{rpc_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    m = _REQUESTS.search(proc.stdout)
    f = _FINISHED.search(proc.stdout)
    if proc.returncode != 0 or m is None or f is None:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    # Log rows: start time (us since epoch), HTTP status (-1: failed stream), duration (us).
    rows = np.loadtxt(log, dtype=np.int64, delimiter="\t", ndmin=2) if log.stat().st_size else (
        np.empty((0, 3), dtype=np.int64))
    ok = rows[:, 1] == 200
    failed = max(int((~ok).sum()), int(m.group(5)))  # h2load's 'failed' includes the others
    seconds = float(f.group(1)) / {"s": 1, "ms": 1e3, "us": 1e6}[f.group(2)]
    return Segment(latencies_us=rows[ok, 2].astype(np.float64), seconds=seconds,
                   failed=failed), seconds
