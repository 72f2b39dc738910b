"""History in its own process: bulk durable writes with `--workers 2`, before and after:

    .venv/bin/python -m benchmarks.history_process_bench [--before TREE] [--after TREE]
        [--records N] [--rounds R] [--flush-interval-s S] [--out FILE.json]

`--before TREE` is a checkout of the old code (`git archive REV | tar -x -C TREE`), `--after`
one of the new (default: this checkout): each server runs with PYTHONPATH pointing at its tree
(as benchmarks/per_record.py does); rounds alternate old and new so the machine's drifts fall
on both alike. Each round starts a fresh `tessera serve --workers 2`
(history on, `--offline-flush-interval-s S`), creates the 10-feature group of
benchmarks/data.py, and sends N records with PutRecords, 1,000 per message, 2 client processes x
4 threads of prepared bodies (benchmarks/scaling_bench.bulk). Measured per round:

  records/s          durable (the clock runs from the first call to the last ack)
  CPU per record     of each process (psutil: user + system, all threads) over the load: the
                     writer's, the history process's (after), the serving processes', and the
                     server's total; and again over the load plus the drain (until Parquet holds
                     every acked row), where the flushes after the last ack are counted too
  backlog            `tessera_offline_outbox_pending_rows` sampled every 0.25 s during the load
                     and after it (max, and the time from the last ack until the gauge is 0),
                     and the Parquet rows counted with DuckDB until they equal the acked rows
  machine            the whole machine's busy cores over the load (others run tests here)

Checks: every ack's `written`; Parquet holds exactly the acked rows (no duplicate seq).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx

from benchmarks import aggregation_bench, report, scaling_bench, verify
from tessera.core import offline_layout
from tests.integration.wire_helpers import metric_total
from tests.serverproc import ServerProcess

GROUP = "hist_plain"
ROOT = Path(__file__).resolve().parent.parent


def _pythonpath_for(tree: Path, tmp: Path) -> str:
    pkg = tmp / f"pythonpath-{tree.name}" / "tessera"
    pkg.mkdir(parents=True, exist_ok=True)
    for name, src in (("core", "core"), ("server", "server"), ("client", "client"),
                      ("ingest", "ingest"), ("proto", "proto/tessera")):
        link = pkg / name
        if not link.exists():
            link.symlink_to(tree / src)
    if not (pkg / "__init__.py").exists() and (tree / "__init__.py").exists():
        (pkg / "__init__.py").symlink_to(tree / "__init__.py")
    return str(pkg.parent)


class _Server:
    """What scaling_bench.bulk needs of a server: target, workers, pids, cpu_by_role."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.workers = 2
        self.name = "workers_2"
        self.server = ServerProcess(data_dir, extra_env=env, workers=2)
        self.server.start(timeout_s=180)

    @property
    def target(self) -> str:
        return self.server.grpc_target

    def pids(self) -> list[int]:
        assert self.server.proc is not None
        return [self.server.proc.pid]

    def roles(self) -> dict[int, str]:
        info = self.server.info()
        out = {info["pid"]: "supervisor", info["writer_pid"]: "writer"}
        out.update({pid: f"serving-{i}" for i, pid in enumerate(info["serving_pids"])})
        if info.get("history_pid"):
            out[info["history_pid"]] = "history"
        return out

    def cpu_by_role(self) -> dict[str, float]:
        roles = self.roles()
        out: dict[str, float] = {}
        for proc in scaling_bench._tree(self.pids()):
            name = roles.get(proc.pid, "other")
            out[name] = out.get(name, 0.0) + scaling_bench._cpu_one(proc)
        return out


def _parquet(data_dir: Path) -> tuple[int, int]:
    """(rows, distinct seqs) of the group's Parquet history."""
    glob = offline_layout.parquet_glob(data_dir / "offline", GROUP)
    for _ in range(10):
        try:
            got = duckdb.sql(f"SELECT count(*), count(DISTINCT tessera_seq) FROM read_parquet("
                             f"'{glob}', hive_partitioning=true)").fetchall()[0]
            return int(got[0]), int(got[1])
        except duckdb.Error as exc:
            if "No files found" in str(exc):
                return 0, 0
            time.sleep(0.2)
    raise RuntimeError("cannot count the Parquet rows")


class _Sampler:
    """Samples the outbox gauge every 0.25 s in a thread."""

    def __init__(self, http_url: str) -> None:
        self._url = http_url
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.25):
            try:
                text = httpx.get(f"{self._url}/metrics", timeout=10).text
                v = metric_total(text, "tessera_offline_outbox_pending_rows")
            except Exception:
                continue
            if v is not None:
                self.samples.append((time.monotonic() - t0, v))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def one_round(label: str, env: dict[str, str], work: Path, n: int, flush_s: float
              ) -> dict[str, Any]:
    data_dir = work / f"{label}-{time.monotonic_ns()}"
    x = _Server(data_dir, {**env, "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": str(flush_s)})
    try:
        aggregation_bench._create(x.server.http_url, GROUP, None)
        roles0 = x.cpu_by_role()
        sampler = _Sampler(x.server.http_url)
        t_start = time.monotonic()
        res = scaling_bench.bulk(x, GROUP, n)
        t_acked = time.monotonic()
        load_samples = [v for t, v in sampler.samples if t <= t_acked - t_start]
        while True:
            rows, seqs = _parquet(data_dir)
            if rows >= n:
                break
            if time.monotonic() - t_acked > 4 * flush_s + 60:
                raise verify.CheckFailed(f"{label}: {rows} of {n} rows in Parquet")
            time.sleep(0.1)
        drained_s = round(time.monotonic() - t_acked, 2)
        drained_gauge_s = None
        while time.monotonic() - t_acked < drained_s + 10:  # the gauge follows the trim
            at = [t for t, v in sampler.samples if v == 0 and t >= t_acked - t_start]
            if at:
                drained_gauge_s = round(at[0] - (t_acked - t_start), 2)
                break
            time.sleep(0.25)
        roles1 = x.cpu_by_role()
        sampler.stop()
        if rows != n or seqs != n:
            raise verify.CheckFailed(f"{label}: {rows} Parquet rows, {seqs} seqs for {n} acks")
        seconds = res["seconds"]
        by_role = res["server_cores_by_process"]
        serving = sum(v for k, v in by_role.items() if k.startswith("serving"))
        total_with_drain = {k: v - roles0.get(k, 0.0) for k, v in roles1.items()}
        out = {
            "records_per_s": res["records_per_s"],
            "seconds": seconds,
            "call_p50_ms": res["call_p50_ms"], "call_p99_ms": res["call_p99_ms"],
            "machine_busy_cores": res["machine_busy_cores"],
            "cpu_us_per_record_during_load": {
                "writer": round(by_role.get("writer", 0.0) * seconds * 1e6 / n, 2),
                "history": round(by_role.get("history", 0.0) * seconds * 1e6 / n, 2),
                "serving": round(serving * seconds * 1e6 / n, 2),
                "server_total": res["server_cpu_us_per_record"]},
            "cpu_us_per_record_load_and_drain": {
                k: round(v * 1e6 / n, 2) for k, v in sorted(total_with_drain.items())},
            "outbox_pending_max_during_load": max(load_samples, default=None),
            "outbox_pending_samples_during_load": len(load_samples),
            "seconds_after_last_ack_until_parquet_has_all": drained_s,
            "seconds_after_last_ack_until_gauge_0": drained_gauge_s,
        }
        scaling_bench._say(f"{label}: {out['records_per_s']:,.0f} records/s, writer "
                           f"{out['cpu_us_per_record_during_load']['writer']} us/record, "
                           f"backlog max {out['outbox_pending_max_during_load']}, "
                           f"in Parquet {drained_s} s after the last ack")
        return out
    finally:
        if x.server.proc is not None:
            x.server.stop(timeout_s=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.history_process_bench",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="a checkout of the old code (its tree)")
    p.add_argument("--after", type=Path, help="a checkout of the new code (default: this one)")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--flush-interval-s", type=float, default=5.0)
    p.add_argument("--out", type=Path,
                   default=Path("benchmarks/results/history_process.json"))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tessera-history-bench-"))
    variants: dict[str, dict[str, str]] = {"after": {} if a.after is None else {
        "PYTHONPATH": _pythonpath_for(a.after.resolve(), work)}}
    if a.before is not None:
        variants = {"before": {"PYTHONPATH": _pythonpath_for(a.before.resolve(), work)},
                    **variants}
    result: dict[str, Any] = {
        "machine": report.machine(), "workers": 2, "records_per_round": a.records,
        "flush_interval_s": a.flush_interval_s, "group": "10 features, history on",
        "clients": "2 processes x 4 threads, 1,000 records per PutRecords", "runs": {}}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for r in range(a.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for label in order:
            runs[label].append(one_round(label, variants[label], work, a.records,
                                         a.flush_interval_s))
    result["runs"] = runs
    result["median"] = {
        label: {
            "records_per_s": statistics.median(x["records_per_s"] for x in rs),
            "writer_cpu_us_per_record": statistics.median(
                x["cpu_us_per_record_during_load"]["writer"] for x in rs),
            "history_cpu_us_per_record": statistics.median(
                x["cpu_us_per_record_during_load"]["history"] for x in rs),
            "server_cpu_us_per_record": statistics.median(
                x["cpu_us_per_record_during_load"]["server_total"] for x in rs),
            "writer_cpu_us_per_record_load_and_drain": statistics.median(
                x["cpu_us_per_record_load_and_drain"].get("writer", 0.0) for x in rs),
            "outbox_pending_max_during_load": statistics.median(
                x["outbox_pending_max_during_load"] or 0 for x in rs),
            "seconds_after_last_ack_until_parquet_has_all": statistics.median(
                x["seconds_after_last_ack_until_parquet_has_all"] for x in rs),
            "machine_busy_cores": statistics.median(x["machine_busy_cores"] for x in rs),
        } for label, rs in runs.items()}
    result["machine"]["load_average_at_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
