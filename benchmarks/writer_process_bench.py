"""The writer process benchmark, one command:

    .venv/bin/python -m benchmarks.writer_process_bench [--quick] [--out FILE.json]

Three parts, each next to its baseline in the same run:

  throughput  100-record PutOp batches (200-byte payloads, history rows) from 2 client threads,
              8 batches in flight each: through the writer process (WriterClient over its Unix
              socket) vs RocksDBOnlineStore in this process; records/s durable, every result
              checked
  catch-up    the CPU a SecondaryReader's timer thread burns at 1, 5, 10, 20 ms, idle and while
              a client process writes continuously (the thread's own utime+stime from /proc)
  staleness   write ack -> visible in a secondary that only catches up on its timer (no token),
              p50/p99 at each interval (writes at a random phase against the timer)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tessera.core.keys import record_key
from tessera.server import history
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.rocksdb import open_rocksdb
from tessera.server.secondary import SecondaryReader
from tessera.server.store import Committed, PutOp
from tessera.server.writer_client import WriterClient
from tests.writerproc import WriterProcess

BATCH = 100


def _batch(name: str, n: int) -> list[PutOp]:
    return [PutOp(1, record_key(1, f"{name}-{n}-{i}"), 1, None, b"x" * 200,
                  history.encode(1, 0, 1, None, False, "", b"x" * 200)) for i in range(BATCH)]


def _drive(submit: Callable[[list[PutOp]], Future[Committed]], seconds: float) -> float:
    """records/s from 2 threads, 8 batches in flight each, for `seconds`."""
    done = [0, 0]

    def run(t: int) -> None:
        window: list[Future[Committed]] = []
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end or window:
            if time.monotonic() < end:
                window.append(submit(_batch(f"t{t}", n)))
                n += 1
            if len(window) >= 8 or time.monotonic() >= end:
                c = window.pop(0).result(timeout=60)
                if c.results != [True] * BATCH:
                    raise RuntimeError("a put was not applied")
                done[t] += BATCH

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start)


def _thread_cpu_s(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_LOAD = """
import sys, time
from pathlib import Path
from tessera.core.keys import record_key
from tessera.server.store import PutOp
from tessera.server.writer_client import WriterClient
c = WriterClient(Path(sys.argv[1]))
end = time.monotonic() + float(sys.argv[2]); n = 0
while time.monotonic() < end:
    c.submit([PutOp(1, record_key(1, f"load{n}-{i}"), 1, None, b"y" * 200) for i in range(100)]
             ).result(timeout=60)
    n += 1
    time.sleep(0.002)
c.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    report: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="tessera-writer-bench-"))
    try:
        # --- throughput, interleaved: in-process, writer process, in-process, writer process
        with WriterProcess(root / "wp") as writer:
            client = WriterClient(writer.socket)
            rocks = open_rocksdb(root / "inproc", block_cache_mb=8, write_buffer_mb=4)
            store = RocksDBOnlineStore(rocks)
            inproc, viaproc = [], []
            for _ in range(2):
                inproc.append(_drive(store.submit, seconds))
                viaproc.append(_drive(client.submit, seconds))
            store.close()
            rocks.close()
            stats = client.stats()
            report["throughput"] = {
                "in_process_records_per_s": max(inproc),
                "writer_process_records_per_s": max(viaproc),
                "ratio": max(viaproc) / max(inproc),
                "writer_commits": stats["commits"], "writer_requests": stats["requests"],
            }
            print(json.dumps(report["throughput"]), flush=True)

            # --- catch-up timer CPU and staleness
            report["catch_up"] = {}
            for interval_ms in (1, 5, 10, 20):
                reader = SecondaryReader(root / "wp" / "online", root / f"sec{interval_ms}",
                                         catch_up_interval_s=interval_ms / 1000,
                                         block_cache_mb=8)
                tid = reader._timer.native_id
                assert tid is not None
                c0, t0 = _thread_cpu_s(tid), time.monotonic()
                time.sleep(seconds)
                idle = (_thread_cpu_s(tid) - c0) / (time.monotonic() - t0)
                load = subprocess.Popen([sys.executable, "-c", _LOAD, str(writer.socket),
                                         str(seconds + 1)])
                try:
                    time.sleep(0.5)
                    c0, t0 = _thread_cpu_s(tid), time.monotonic()
                    time.sleep(seconds)
                    busy = (_thread_cpu_s(tid) - c0) / (time.monotonic() - t0)
                finally:
                    load.wait(timeout=60)
                lags: list[float] = []
                rng = random.Random(7)
                for i in range(100 if args.quick else 300):
                    # a random phase against the timer (a loop right after a catch-up would
                    # always wait a whole interval)
                    time.sleep(rng.uniform(0, interval_ms / 1000))
                    c = client.submit([PutOp(1, record_key(1, f"st{i}"), 1, None, b"s")]
                                      ).result(timeout=10)
                    acked = time.perf_counter()
                    while reader.visible_seq() < c.seq:
                        time.sleep(0.0001)
                    lags.append((time.perf_counter() - acked) * 1000)
                    if reader.get(record_key(1, f"st{i}"), 10**15) is None:
                        raise RuntimeError("visible seq without the write")
                lags.sort()
                report["catch_up"][f"{interval_ms}ms"] = {
                    "timer_cpu_core_fraction_idle": round(idle, 4),
                    "timer_cpu_core_fraction_under_writes": round(busy, 4),
                    "staleness_p50_ms": round(statistics.median(lags), 3),
                    "staleness_p99_ms": round(lags[int(len(lags) * 0.99) - 1], 3),
                    "catch_ups": reader.catch_ups,
                }
                reader.close()
                print(interval_ms, json.dumps(report["catch_up"][f"{interval_ms}ms"]), flush=True)
            client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
