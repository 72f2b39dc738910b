"""Where the server's time goes under one RPC's load: py-spy samples a real server process while
h2load drives it, then the samples are summed by function (self and inclusive) and by area.

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profile --rpc GetRecord --concurrency 8 --seconds 10

Writes the collapsed stacks and an SVG flame graph next to `--out` (default
/tmp/tessera-profile-<rpc>.txt) and prints the top costs.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import data, h2load, load, verify
from tests.serverproc import ServerProcess

BODIES = {
    "GetRecord": lambda n: data.get_request(n // 2),
    "BatchGetRecord": lambda n: data.batch_get_request(list(range(0, n, max(1, n // 100)))[:100]),
    "PutRecords": lambda n: data.put_records_request(range(0, min(n, 500))),
    "Echo": lambda n: data.echo_request(200),
}
PATHS = {"GetRecord": verify.GET, "BatchGetRecord": verify.BATCH_GET,
         "PutRecords": verify.PUT_RECORDS, "Echo": verify.ECHO}
# Areas by source path: the first match names a frame's area.
AREAS = (
    ("tessera/server/", "tessera server"), ("tessera/core/", "tessera core"),
    ("/work/main/server/", "tessera server"), ("/work/main/core/", "tessera core"),
    ("grpc/", "grpc (python + cython)"), ("protobuf", "protobuf"), ("rocksdict", "rocksdict"),
    ("prometheus_client", "prometheus_client"), ("asyncio/", "asyncio"),
    ("concurrent/futures", "concurrent.futures"), ("threading.py", "threading"),
    ("libgrpc", "grpc C-core"), ("cygrpc", "grpc (python + cython)"),
)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--rpc", choices=sorted(BODIES), default="GetRecord")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    p.add_argument("--all-samples", action="store_true",
                   help="every non-idle thread's samples, not only those holding the GIL (the "
                        "one Python core the server's Python code shares)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    out = a.out or Path(tempfile.gettempdir()) / f"tessera-profile-{a.rpc}.txt"
    work = Path(tempfile.mkdtemp(prefix="tessera-profile-"))
    server = ServerProcess(work / "data").start()
    try:
        data.create_group(server.http_url)
        load.bulk_load(server.grpc_target, a.records)
        body = BODIES[a.rpc](a.records)
        run = h2load.run_to_completion if a.rpc == "PutRecords" else h2load.run
        base = [pyspy, "record", "-p", str(server.proc.pid), "-d", str(a.seconds), "-r", "200",
                *(["--native"] if a.native else []), *([] if a.all_samples else ["--gil"])]
        raw = subprocess.Popen([*base, "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL)
        time.sleep(1)  # py-spy attached
        seg = run(server.grpc_target, PATHS[a.rpc], body, a.concurrency, a.seconds, 1.0,
                  work / "gen")
        raw.wait(timeout=a.seconds + 60)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{a.rpc} at concurrency {a.concurrency}: {seg.latencies_us.size / seg.seconds:,.0f} "
          f"calls/s while sampled; stacks in {out}")
    print(summarize(out.read_text()))
    return 0


def summarize(collapsed: str, top: int = 25) -> str:
    """Top functions by self and inclusive samples, and samples by area of the leaf frame."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    area_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith(("process ",
                                                                                "thread "))]
        if not frames:
            continue
        total += n
        self_n[_func(frames[-1])] += n
        area_n[_area(frames[-1])] += n
        for f in {_func(f) for f in frames}:
            incl_n[f] += n
    lines = [f"{total} samples", "", "by area (leaf frame):"]
    lines += [f"  {100 * k / total:5.1f}%  {area}" for area, k in area_n.most_common()]
    lines += ["", "top self:"]
    lines += [f"  {100 * k / total:5.1f}%  {f}" for f, k in self_n.most_common(top)]
    lines += ["", "top inclusive:"]
    lines += [f"  {100 * k / total:5.1f}%  {f}" for f, k in incl_n.most_common(top)]
    return "\n".join(lines)


def _func(frame: str) -> str:
    """'name (path/file.py:123)' -> 'name (file.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def _area(frame: str) -> str:
    return next((area for key, area in AREAS if key in frame), "other: " + _func(frame))


if __name__ == "__main__":
    sys.exit(main())
