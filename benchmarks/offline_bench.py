"""The offline-store benchmark, one command:

    .venv/bin/python -m benchmarks.offline_bench [--quick] [--sizes 1M:10M,10M:100M]
        [--memory-limit 6GB] [--skip-pandas-above 50M] [--out benchmarks/results/offline.json]

For each size M:N (spine rows : feature rows) it writes a feature group `users` (record id
`user_id` Integral, event time `ts` Fractional, 10 Integral/Fractional features) of N history rows
in the offline store's Parquet layout (`tessera.core.offline_layout`), with numpy and pyarrow, as
the server's flusher leaves them (~30 daily partitions, several files each), and a spine of M rows
as a Parquet file. Then each engine runs in a process of its own (wall time measured inside it,
peak RSS from the kernel's rusage of that child alone), writing its result to Parquet:

    tessera            OfflineStore(root).dataset(spine, ...).to_parquet(out), on the files as
                       flushed, then again after `compact_group` clustered them by (id, event time)
    floor              the bare DuckDB ASOF LEFT JOIN of the spine and the Parquet files (same
                       memory limit, same threads): the engine's floor
    pandas             read both, sort, pd.merge_asof(by="user_id"), restore spine order, write
                       (skipped above --skip-pandas-above feature rows: it would not fit in memory)

Every output is checked: row count, spine order (tessera, pandas), per-column checksums and null
counts against the floor, every row against the floor (joined on the spine's request_id), and 10k
sampled rows against a brute-force reference computed without ASOF (arg_max over the history).

Last, the offline write path: a real server, a 10-feature group made over HTTP, ~500k records put
with gRPC PutRecords (benchmarks/load.py), and the time until /metrics' tessera_offline_rows_written
reaches the count (rows/s reaching Parquet), plus bytes on disk per row before/after compaction.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

GROUP = "users"
ID = "user_id"
EVENT_TIME_FEATURE = "ts"
#: The 10 features: name, type.
FEATURES: list[tuple[str, str]] = [
    ("clicks", "Integral"),
    ("views", "Integral"),
    ("purchases", "Integral"),
    ("sessions", "Integral"),
    ("age_days", "Integral"),
    ("ctr", "Fractional"),
    ("score", "Fractional"),
    ("spend", "Fractional"),
    ("dwell_s", "Fractional"),
    ("rating", "Fractional"),
]
FEATURE_NAMES = [n for n, _ in FEATURES]
SPINE_COLUMNS = ("request_id", "user_id", "ts", "label")
SQL_TYPES = {"request_id": "BIGINT", "user_id": "BIGINT", "ts": "TIMESTAMPTZ", "label": "TINYINT"}
SQL_TYPES.update({n: "BIGINT" if t == "Integral" else "DOUBLE" for n, t in FEATURES})

DEFAULT_ROOT = Path("/tmp/tessera-offline-bench")
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
DAYS = 30
SPAN_US = DAYS * 86_400_000_000
FLUSH_MAX_ROWS = 200_000  # the server's default offline_store.flush_max_rows
MIN_FILES_PER_PARTITION = 4
SAMPLE_ROWS = 10_000
GB = 1 << 30

# Figures quoted in the issue, measured on this machine (for the ratios).
ISSUE: dict[str, Any] = {
    "floor_1Mx10M_s": 1.9, "floor_10Mx100M_s": 24.0, "floor_1Mx10M_peak_gb": 1.4,
    "floor_10Mx100M_peak_gb": 8.8, "pandas_1Mx10M_s": 6.7, "pandas_10Mx100M_s": 74.0,
    "pandas_10Mx100M_peak_gb": 16.0, "feast_1Mx10M_s": [3.1, 3.7], "feast_1Mx10M_peak_gb": 1.3,
}
TARGET_VS_FLOOR = 1.3
TARGET_PEAK_GB_10Mx100M = 8.0
FEAST_STRETCH_SPEEDUP = 2.0

QUICK_SIZES = "100k:1M"
FULL_SIZES = "1M:10M,10M:100M"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOISY_CORES = 0.3  # other processes' CPU during a run above which it is run again
MAX_RERUNS = 2  # per run
QUIET_WAIT_S = 20.0  # the longest wait for a quiet second before each run


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return _child(json.loads(argv[1]))
    args = _parser().parse_args(argv)
    if args.quick:
        global _quiet_wait_s
        _quiet_wait_s = 3.0
        args.rerun_budget = min(args.rerun_budget, 3)
    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES))
    work = args.work_dir
    if work.exists() and not args.reuse_data:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    result: dict[str, Any] = {"machine": _machine(work), "config": {
        "mode": "quick" if args.quick else "full",
        "sizes": [f"{_fmt_n(m)}:{_fmt_n(n)}" for m, n in sizes],
        "memory_limit": args.memory_limit, "threads": args.threads,
        "repeats": args.repeats or "auto (3 up to 10M feature rows, else 1)",
        "skip_pandas_above": args.skip_pandas_above, "work_dir": str(work),
        "noise_control": f"before each run, wait up to {_quiet_wait_s:g} s for a second in "
                         f"which other processes use < {NOISY_CORES} cores; a run during which "
                         f"they used more is run again (at most {MAX_RERUNS} times, "
                         f"{args.rerun_budget} per size), the quietest attempt kept",
        "group": {"name": GROUP, "record_identifier": f"{ID} (Integral)",
                  "event_time": f"{EVENT_TIME_FEATURE} (Fractional)", "features": dict(FEATURES)},
        "spine_columns": list(SPINE_COLUMNS),
        "data": "ids ~N/10 distinct (spine draws from 1.1x the id space: ~9% of its ids have "
                "no history); event times over 30 days, distinct per id; one file per event "
                "date per flush of min(200k, rows per partition / 4) rows, in commit order",
    }, "sizes": {}, "issue_figures": ISSUE}
    try:
        for m, n in sizes:
            key = f"{_fmt_n(m)}x{_fmt_n(n)}"
            _say(f"=== {key}: spine {m:,} rows x {n:,} feature rows")
            result["sizes"][key] = _run_size(m, n, args, work)
            _write(args.out, result, t_start)  # a partial report survives a later failure
        if not args.skip_write_throughput:
            n_put = args.write_records or (100_000 if args.quick else 500_000)
            _say(f"=== offline write throughput: {n_put:,} records through a server")
            result["offline_write"] = _write_throughput(n_put, work, args)
        result["targets"] = _targets(result)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _write(args.out, result, t_start)
    print(summary(result))
    print(f"report: {args.out} ({result['elapsed_s']} s)")
    return 0 if result.get("checks_passed", True) else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.offline_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK_SIZES} (~2 min)")
    p.add_argument("--sizes", help=f"spine:feature rows, comma-separated (full: {FULL_SIZES})")
    p.add_argument("--memory-limit", default="6GB",
                   help="DuckDB memory_limit of tessera and of the floor (default 6GB)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-pandas-above", type=parse_count, default=50_000_000,
                   help="feature rows above which pandas is not run (default 50M)")
    p.add_argument("--repeats", type=int, default=0,
                   help="runs per engine and layout (default: 3 up to 10M feature rows, else 1)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/offline.json"))
    p.add_argument("--work-dir", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.add_argument("--reuse-data", action="store_true",
                   help="reuse data left in --work-dir by a run with --keep (same sizes)")
    p.add_argument("--write-records", type=int, default=0,
                   help="records of the write-throughput test (default 500k; quick 100k)")
    p.add_argument("--skip-write-throughput", action="store_true")
    p.add_argument("--explain", choices=("auto", "always", "never"), default="auto",
                   help="profile tessera's statements next to the floor's: auto = when tessera "
                        f"is slower than {TARGET_VS_FLOOR}x the floor on a layout")
    p.add_argument("--rerun-budget", type=int, default=12,
                   help="runs repeated per size because other processes used > "
                        f"{NOISY_CORES} cores meanwhile (default 12)")
    p.add_argument("--seed", type=int, default=20240601)
    return p


def parse_count(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a count (e.g. 500k, 10M)")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        spine, _, feats = part.partition(":")
        out.append((parse_count(spine), parse_count(feats)))
    return out


def _fmt_n(n: int) -> str:
    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def _say(msg: str) -> None:
    print(f"[offline-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _write(out: Path, result: dict[str, Any], t_start: float) -> None:
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _machine(work: Path) -> dict[str, Any]:
    from benchmarks import report

    info = report.machine()
    for pkg in ("duckdb", "pyarrow", "pandas", "numpy"):
        info[pkg] = metadata.version(pkg)
    info["mem_total_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)
    info["mem_available_gb_at_start"] = round(_mem_available() / GB, 1)
    info["disk_free_gb_at_start"] = round(shutil.disk_usage(work).free / GB, 1)
    return info


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def _dir_bytes(path: Path, pattern: str = "**/*.parquet") -> tuple[int, int]:
    files = list(path.glob(pattern))
    return sum(f.stat().st_size for f in files), len(files)


# --- data --------------------------------------------------------------------------------------


def make_group() -> Any:
    from tessera.core.schema import (
        FeatureDefinition,
        FeatureGroup,
        FeatureGroupDefinition,
        OnlineStoreConfig,
    )

    defs = [FeatureDefinition.of(ID, "Integral"),
            FeatureDefinition.of(EVENT_TIME_FEATURE, "Fractional")]
    defs += [FeatureDefinition.of(n, t) for n, t in FEATURES]
    definition = FeatureGroupDefinition(
        feature_group_name=GROUP, record_identifier_feature_name=ID,
        event_time_feature_name=EVENT_TIME_FEATURE, feature_definitions=defs,
        online_store_config=OnlineStoreConfig(ttl_duration=None),
    )
    definition.check()
    return FeatureGroup(definition=definition, feature_group_id=1, version=1,
                        creation_time=T0_US / 1e6, last_modified_time=T0_US / 1e6)


def generate_history(root: Path, n: int, seed: int) -> dict[str, Any]:
    """N history rows of `users` under `root`, as the flusher writes them: flushes of
    `flush_rows` consecutive commits, each split into one file per event date.

    Row j (global, 0..N-1) has event time T0 + j*step + jitter (jitter < step): event times are
    distinct, so every engine picks the same row. Within a flush the commit order (seq) is a
    random permutation of the rows (events arrive somewhat out of order); write_time follows
    seq and is after every event time of its flush. Ids are uniform over N/10 ids.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tessera.core import offline_layout as layout

    t = time.perf_counter()
    group = make_group()
    folder = layout.group_dir(root, GROUP)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layout.GROUP_FILE).write_text(group.model_dump_json(indent=2))
    schema = layout.arrow_schema(group)
    ids = max(n // 10, 1)
    step = SPAN_US // n
    if step < 2:
        raise SystemExit(f"{n:,} rows over {DAYS} days leave no room for distinct event times")
    flush_rows = max(1, min(FLUSH_MAX_ROWS, n // DAYS // MIN_FILES_PER_PARTITION))
    rng = np.random.default_rng(seed)
    ts_type = pa.timestamp("us", tz="UTC")
    files = 0
    for lo in range(0, n, flush_rows):
        hi = min(lo + flush_rows, n)
        k = hi - lo
        j = lo + rng.permutation(k)  # row r of this flush (seq lo+1+r) is the event of index j
        event_us = T0_US + j * step + rng.integers(0, step, k)
        seq = np.arange(lo + 1, hi + 1, dtype=np.int64)
        write_us = T0_US + hi * step + np.arange(k, dtype=np.int64)  # >= every event of the flush
        cols = {
            ID: rng.integers(0, ids, k),
            EVENT_TIME_FEATURE: event_us / 1e6,
            "clicks": rng.integers(0, 1000, k),
            "views": rng.integers(0, 100_000, k),
            "purchases": rng.poisson(0.3, k).astype(np.int64),
            "sessions": rng.integers(1, 50, k),
            "age_days": rng.integers(0, 3650, k),
            "ctr": np.round(rng.random(k), 3),
            "score": rng.standard_normal(k),
            "spend": np.round(rng.exponential(20.0, k), 2),
            "dwell_s": rng.random(k) * 600.0,
            "rating": rng.integers(1, 11, k) / 2.0,
        }
        arrays = [pa.array(cols[f.name], type=f.type) for f in schema if f.name in cols]
        arrays += [
            pa.array(write_us, pa.int64()).cast(ts_type),
            pa.array(write_us - 1000, pa.int64()).cast(ts_type),  # api invocation: 1 ms earlier
            pa.array(np.zeros(k, dtype=bool)),
            pa.array(event_us, pa.int64()).cast(ts_type),
            pa.array(seq),
            pa.nulls(k, ts_type),
            pa.nulls(k, pa.string()),
        ]
        table = pa.Table.from_arrays(arrays, schema=schema)
        day = (event_us // 86_400_000_000).astype(np.int64)
        for d in np.unique(day):
            picked = np.flatnonzero(day == d)
            part = table.take(picked)
            s = seq[picked]
            date = str(np.datetime64(int(d), "D"))
            target = layout.partition_dir(root, GROUP, date)
            target.mkdir(parents=True, exist_ok=True)
            # The flusher's writer: zstd, 128k-row groups (server/offline_writer.py).
            pq.write_table(part, target / layout.part_file_name(int(s.min()), int(s.max())),
                           compression="zstd", row_group_size=128 * 1024)
            files += 1
    size, _ = _dir_bytes(folder)
    partitions = len(list(folder.glob(f"{layout.EVENT_DATE}=*")))
    return {"rows": n, "distinct_ids": ids, "files": files, "partitions": partitions,
            "rows_per_flush": flush_rows, "bytes": size, "bytes_per_row": round(size / n, 1),
            "generate_s": round(time.perf_counter() - t, 1)}


def generate_spine(path: Path, m: int, n: int, seed: int) -> dict[str, Any]:
    """M spine rows: request_id = row number, ids uniform over 1.1x the id space (some have no
    history), timestamps uniform over the history's span, a 0/1 label; in random order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    ids = max(n // 10, 1)
    table = pa.table({
        "request_id": pa.array(np.arange(m, dtype=np.int64)),
        "user_id": pa.array(rng.integers(0, ids + ids // 10, m)),
        "ts": pa.array(T0_US + rng.integers(0, SPAN_US, m), pa.int64()).cast(
            pa.timestamp("us", tz="UTC")),
        "label": pa.array(rng.integers(0, 2, m).astype(np.int8)),
    })
    pq.write_table(table, path, compression="zstd")
    return {"rows": m, "bytes": path.stat().st_size,
            "generate_s": round(time.perf_counter() - t, 1)}


# --- the engines (each in a child process) -------------------------------------------------------


def _child(spec: dict[str, Any]) -> int:
    """Run one engine; write {"wall_s", "rows", ...} to spec["result"]."""
    engine = spec["engine"]
    fn = {"tessera": _run_tessera, "floor": _run_floor, "pandas": _run_pandas,
          "compact": _run_compact, "explain": _run_explain}[engine]
    out = fn(spec)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def _run_tessera(spec: dict[str, Any]) -> dict[str, Any]:
    from tessera.client import OfflineStore

    t0 = time.perf_counter()
    with OfflineStore(spec["root"], memory_limit=spec["memory_limit"], threads=spec["threads"],
                      temp_directory=spec["spill"], progress=False) as store:
        ds = store.dataset(spec["spine"], timestamp="ts", features={GROUP: FEATURE_NAMES})
        rows = ds.to_parquet(spec["out"])
    return {"wall_s": time.perf_counter() - t0, "rows": rows}


def floor_sql(spine: str, root: str, out: str) -> str:
    from tessera.core import offline_layout as layout

    feats = ", ".join(f"f.{f}" for f in FEATURE_NAMES)
    return (
        f"COPY (SELECT s.*, {feats} FROM read_parquet('{spine}') s "
        f"ASOF LEFT JOIN read_parquet('{layout.parquet_glob(root, GROUP)}') f "
        f"ON s.user_id = f.user_id AND s.ts >= f.{layout.EVENT_TIME}) "
        f"TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
    )


def _duckdb(spec: dict[str, Any]) -> Any:
    import duckdb

    return duckdb.connect(config={"memory_limit": spec["memory_limit"],
                                  "threads": spec["threads"],
                                  "temp_directory": spec["spill"]})


def _run_floor(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    con = _duckdb(spec)
    rows = con.execute(floor_sql(spec["spine"], spec["root"], spec["out"])).fetchall()[0][0]
    con.close()
    return {"wall_s": time.perf_counter() - t0, "rows": int(rows)}


def _run_pandas(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped]
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tessera.core import offline_layout as layout

    et = layout.EVENT_TIME
    t0 = time.perf_counter()
    spine = pq.read_table(spec["spine"]).to_pandas()
    feats = pq.read_table(Path(spec["root"]) / GROUP, columns=[ID, et, *FEATURE_NAMES],
                          partitioning="hive").to_pandas()
    t_read = time.perf_counter()
    order = np.argsort(spine["ts"].to_numpy(), kind="stable")
    spine_sorted = spine.take(order)
    feats = feats.sort_values(et, kind="stable", ignore_index=True)
    t_sort = time.perf_counter()
    merged = pd.merge_asof(spine_sorted, feats, left_on="ts", right_on=et, by=ID,
                           direction="backward", allow_exact_matches=True)
    merged = merged.drop(columns=[et])
    merged = merged.take(np.argsort(order, kind="stable")).reset_index(drop=True)  # spine order
    t_join = time.perf_counter()
    pq.write_table(pa.Table.from_pandas(merged, preserve_index=False), spec["out"],
                   compression="zstd")
    t_write = time.perf_counter()
    return {"wall_s": t_write - t0, "rows": len(merged), "phases_s": {
        "read": t_read - t0, "sort": t_sort - t_read, "join": t_join - t_sort,
        "write": t_write - t_join}}


def _run_compact(spec: dict[str, Any]) -> dict[str, Any]:
    from tessera.core.schema import FeatureGroup
    from tessera.server.compaction import compact_group
    from tessera.server.offline_writer import ParquetOfflineWriter

    root = Path(spec["root"])
    group = FeatureGroup.model_validate_json((root / spec["group"] / "_group.json").read_text())
    t0 = time.perf_counter()
    res = compact_group(ParquetOfflineWriter(root), group)
    return {"wall_s": time.perf_counter() - t0, "rows": res.rows,
            "partitions_compacted": res.partitions_compacted, "files_before": res.files_before,
            "files_after": res.files_after}


def _run_explain(spec: dict[str, Any]) -> dict[str, Any]:
    """Where tessera's time goes: its two statements (the join into a temporary table, then the
    ordered read-back written to Parquet), each timed and profiled, next to the floor's."""
    from tessera.client import OfflineStore
    from tessera.client.offline import _RESULT, _ordered_sql
    from tessera.core.catalog import quote_literal

    out: dict[str, Any] = {}
    with OfflineStore(spec["root"], memory_limit=spec["memory_limit"], threads=spec["threads"],
                      temp_directory=spec["spill"], progress=False) as store:
        ds = store.dataset(spec["spine"], timestamp="ts", features={GROUP: FEATURE_NAMES})
        out["tessera_sql"] = ds.query.unordered_sql()
        cur = store.catalog.cursor()
        ds._source.prepare(cur)
        cur.execute("SET SESSION preserve_insertion_order = false")
        t = time.perf_counter()
        out["join_profile"] = _profile(
            cur, f"CREATE TEMP TABLE {_RESULT} AS {ds.query.unordered_sql()}", spec, "join")
        out["join_s"] = time.perf_counter() - t
        cur.execute("SET SESSION preserve_insertion_order = true")
        t = time.perf_counter()
        out["ordered_write_profile"] = _profile(
            cur, f"COPY ({_ordered_sql()}) TO {quote_literal(spec['out'])} "
                 "(FORMAT parquet, COMPRESSION zstd)", spec, "write")
        out["ordered_write_s"] = time.perf_counter() - t
        cur.close()
    con = _duckdb(spec)
    t = time.perf_counter()
    out["floor_profile"] = _profile(
        con, floor_sql(spec["spine"], spec["root"], spec["out"] + ".floor"), spec, "floor")
    out["floor_s"] = time.perf_counter() - t
    con.close()
    out["wall_s"] = out["join_s"] + out["ordered_write_s"]
    out["rows"] = 0
    return out


def _profile(con: Any, sql: str, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Run `sql` with DuckDB's JSON profiler; the slowest operators (cumulative time of each
    operator itself, not its children)."""
    path = Path(spec["spill"]) / f"profile-{name}.json"
    con.execute("SET enable_profiling = 'json'")
    con.execute(f"SET profiling_output = '{path}'")
    con.execute("SET profiling_mode = 'detailed'")
    con.execute(sql)
    con.execute("PRAGMA disable_profiling")
    tree = json.loads(path.read_text())
    ops: list[dict[str, Any]] = []
    keep = ("Join Type", "Conditions", "Function", "Estimated Cardinality", "Total Files Read",
            "Order By", "Partitions")

    def walk(node: dict[str, Any], depth: int) -> None:
        # DuckDB 2.0: {"type", "timing", "intermediate_rows", "extra_info", "children"};
        # older: {"operator_type", "operator_timing", "operator_cardinality", ...}.
        ops.append({
            "operator": node.get("type") or node.get("operator_type") or node.get("operator_name"),
            "depth": depth,
            "time_s": round(float(node.get("timing", node.get("operator_timing", 0.0))), 3),
            "rows_out": node.get("intermediate_rows", node.get("operator_cardinality")),
            "extra": {k: v for k, v in (node.get("extra_info") or {}).items() if k in keep},
        })
        for child in node.get("children", []):
            walk(child, depth + 1)

    roots = tree.get("operator") if isinstance(tree.get("operator"), list) else \
        tree.get("children", [])
    for root in roots:
        walk(root, 0)
    query, system = tree.get("query", {}), tree.get("system", {})
    return {
        "latency_s": query.get("total_time", tree.get("latency")),
        "cpu_s": query.get("cpu_time", tree.get("cpu_time")),
        "peak_buffer_memory_gb": round(system.get("peak_buffer_memory", 0) / GB, 3),
        "peak_spill_gb": round(system.get("peak_temp_dir_size", 0) / GB, 3),
        "operators": ops,
    }


# --- running children ----------------------------------------------------------------------------


def run_child(spec: dict[str, Any], log_dir: Path, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run one engine in its own process; its result plus peak RSS and CPU from its rusage."""
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{spec['engine']}-{int(time.time() * 1000)}"
    spec = {**spec, "result": str(log_dir / f"{tag}.json")}
    log_path = log_dir / f"{tag}.log"
    Path(spec["spill"]).mkdir(parents=True, exist_ok=True)
    if "out" in spec:
        Path(spec["out"]).unlink(missing_ok=True)
    busy0, t0 = _machine_busy_s(), time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.offline_bench", "_child", json.dumps(spec)],
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    process_s = time.perf_counter() - t0
    busy = _machine_busy_s() - busy0
    shutil.rmtree(spec["spill"], ignore_errors=True)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        return {"ok": False, "exit_code": proc.returncode, "error": tail.strip().splitlines()[-1]
                if tail.strip() else "", "log_tail": tail,
                "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 3)}
    out = json.loads(Path(spec["result"]).read_text())
    cpu_s = usage.ru_utime + usage.ru_stime
    out.update({
        "ok": True,
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 3),  # ru_maxrss is in KiB on Linux
        "process_s": round(process_s, 3),
        "cpu_s": round(cpu_s, 2),
        "cores_used": round(cpu_s / process_s, 2) if process_s else None,
        # Other processes' CPU meanwhile: the noise of a shared machine.
        "other_processes_cores": round(max(busy - cpu_s, 0.0) / process_s, 2) if process_s
        else None,
    })
    out["wall_s"] = round(out["wall_s"], 3)
    return out


def _median_run(runs: list[dict[str, Any]], rows: int, n: int) -> dict[str, Any]:
    """An engine's figures over its accepted runs: median wall (the headline), min wall (the
    least disturbed by other processes), median CPU seconds (work done, all threads)."""
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return {"ok": False, "error": runs[-1].get("error"), "runs": runs}
    walls = [r["wall_s"] for r in ok]
    wall = statistics.median(walls)
    best = min(ok, key=lambda r: abs(r["wall_s"] - wall))
    out = {
        "ok": len(ok) == len(runs),
        "wall_s": round(wall, 3),
        "wall_s_min": round(min(walls), 3),
        "wall_s_runs": walls,
        "spine_rows_per_s": round(rows / wall),
        "feature_rows_per_s": round(n / wall),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in ok),
        "cpu_s": round(statistics.median(r["cpu_s"] for r in ok), 2),
        "cores_used": best.get("cores_used"),
        "other_processes_cores_runs": [r.get("other_processes_cores") for r in ok],
        "noisy_attempts_discarded": sum(r.get("noisy_attempts_discarded", 0) for r in ok),
    }
    if "phases_s" in best:
        out["phases_s"] = {k: round(v, 3) for k, v in best["phases_s"].items()}
    if len(ok) < len(runs):
        out["failed_runs"] = [r for r in runs if not r.get("ok")]
    return out


_quiet_wait_s = QUIET_WAIT_S  # quick mode: shorter


def _wait_quiet(max_wait_s: float) -> float:
    """Wait (up to max_wait_s) for a second in which other processes use < NOISY_CORES."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        b0 = _machine_busy_s()
        time.sleep(1.0)
        if _machine_busy_s() - b0 < NOISY_CORES:
            break
    return time.monotonic() - t0


def run_quiet(spec: dict[str, Any], log_dir: Path, budget: list[int]) -> dict[str, Any]:
    """run_child on a machine as quiet as we can get: wait for a quiet second first, and run
    again (up to MAX_RERUNS times, `budget[0]` per size) when other processes used more than
    NOISY_CORES meanwhile; the quietest attempt is kept."""
    attempts = []
    for _ in range(MAX_RERUNS + 1):
        waited = _wait_quiet(_quiet_wait_s)
        one = run_child(spec, log_dir)
        one["waited_for_quiet_s"] = round(waited, 1)
        attempts.append(one)
        if not one.get("ok") or (one.get("other_processes_cores") or 0) <= NOISY_CORES \
                or budget[0] <= 0:
            break
        budget[0] -= 1
    ok = [a for a in attempts if a.get("ok")]
    if not ok:
        return attempts[-1]
    chosen = min(ok, key=lambda a: a.get("other_processes_cores") or 0)
    chosen["noisy_attempts_discarded"] = len(attempts) - 1
    return chosen


# --- one size ------------------------------------------------------------------------------------


def _run_size(m: int, n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = work / f"{_fmt_n(m)}x{_fmt_n(n)}"
    root = base / "offline"
    spine = base / "spine.parquet"
    outs = base / "out"
    logs = base / "logs"
    outs.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"spine_rows": m, "feature_rows": n}

    free = shutil.disk_usage(work).free
    # History ~60-70 B/row, DuckDB's spill (tessera: ~120 B per feature row at 10Mx100M with a
    # 6GB limit), outputs and the compaction's staging copy of one partition.
    need = n * 200 + m * 600
    if free < need:
        res["skipped"] = f"needs ~{need / GB:.1f} GB of disk, {free / GB:.1f} GB free"
        _say(res["skipped"])
        return res
    kept = _dir_bytes(root / GROUP)[1] if (root / GROUP).exists() else 0
    partitions = len(list((root / GROUP).glob("event_date=*"))) if kept else 0
    # A run's data ends compacted (one file per partition): then it is written anew.
    if args.reuse_data and kept > partitions and spine.exists():
        res["data"] = {"reused": True}
    else:
        shutil.rmtree(base, ignore_errors=True)
        outs.mkdir(parents=True, exist_ok=True)
        _say(f"generating {n:,} history rows")
        res["data"] = generate_history(root, n, args.seed)
        res["spine"] = generate_spine(spine, m, n, args.seed)
        _say(f"generated: {res['data']['files']} files in {res['data']['partitions']} partitions, "
             f"{res['data']['bytes'] / GB:.2f} GB ({res['data']['bytes_per_row']} B/row) in "
             f"{res['data']['generate_s']} s")
    repeats = args.repeats or (3 if n <= 10_000_000 else 1)
    common = {"root": str(root), "spine": str(spine), "memory_limit": args.memory_limit,
              "threads": args.threads, "spill": str(base / "spill")}
    run_pandas = n <= args.skip_pandas_above
    if not run_pandas:
        res["pandas_skipped"] = (
            f"{n:,} feature rows > --skip-pandas-above {args.skip_pandas_above:,}: pandas holds "
            "both tables and their sorted copies in memory (the issue measured 16 GB at 100M)")

    rerun_budget = [args.rerun_budget]

    def measure(layout_name: str, engines: list[str]) -> dict[str, dict[str, Any]]:
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        for r in range(repeats):
            for e in engines:  # interleaved, so the machine's drifts fall on all alike
                spec = {**common, "engine": e, "out": str(outs / f"{e}-{layout_name}.parquet")}
                one = run_quiet(spec, logs, rerun_budget)
                runs[e].append(one)
                _say(f"{layout_name} {e} run {r + 1}/{repeats}: "
                     + (f"{one['wall_s']:.2f} s, peak {one['peak_rss_gb']:.2f} GB, "
                        f"others {one.get('other_processes_cores')} cores"
                        if one.get("ok") else f"FAILED: {one.get('error')}"))
        return {e: _median_run(rr, m, n) for e, rr in runs.items()}

    engines = ["floor", "tessera"] + (["pandas"] if run_pandas else [])
    res["flushed"] = measure("flushed", engines)
    checks: dict[str, Any] = {}
    checks["flushed"] = verify_outputs(
        outs, "flushed", [e for e in engines if res["flushed"][e].get("wall_s")], m, root,
        spine, base, args)
    res["where_time_goes"] = {}

    def explain_if_slow(layout_name: str) -> None:
        t, f = (res[layout_name].get(e, {}).get("wall_s") for e in ("tessera", "floor"))
        if args.explain == "always" or (args.explain == "auto" and t and f
                                        and t / f > TARGET_VS_FLOOR):
            _say(f"profiling tessera's statements and the floor's on the {layout_name} files "
                 "(DuckDB's JSON profiler: EXPLAIN ANALYZE's figures)")
            ex = run_child({**common, "engine": "explain",
                            "out": str(outs / "explain.parquet")}, logs)
            res["where_time_goes"][layout_name] = _summarize_explain(ex)

    explain_if_slow("flushed")

    _say("compacting (server/compaction.py compact_group)")
    comp = run_child({**common, "engine": "compact", "group": GROUP}, logs)
    size, files = _dir_bytes(root / GROUP)
    comp.update({"bytes": size, "bytes_per_row": round(size / n, 1), "files": files})
    res["compaction"] = comp
    _say(f"compacted in {comp.get('wall_s')} s: {files} files, {comp['bytes_per_row']} B/row")
    res["compacted"] = measure("compacted", ["floor", "tessera"])
    checks["compacted"] = verify_outputs(
        outs, "compacted", [e for e in ["floor", "tessera"] if res["compacted"][e].get("wall_s")],
        m, root, spine, base, args, reference=False)
    res["checks"] = checks
    res["ratios"] = _ratios(res, m, n)
    explain_if_slow("compacted")
    shutil.rmtree(outs, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return res


def _summarize_explain(ex: dict[str, Any]) -> dict[str, Any]:
    if not ex.get("ok"):
        return {"ok": False, "error": ex.get("error")}

    def top(profile: dict[str, Any], k: int = 8) -> list[dict[str, Any]]:
        ops = sorted(profile["operators"], key=lambda o: -o["time_s"])
        return ops[:k]

    return {
        "tessera_join_s": round(ex["join_s"], 3),
        "tessera_ordered_write_s": round(ex["ordered_write_s"], 3),
        "floor_s": round(ex["floor_s"], 3),
        "tessera_join_cpu_s": ex["join_profile"]["cpu_s"],
        "tessera_join_peak_buffer_gb": ex["join_profile"]["peak_buffer_memory_gb"],
        "tessera_join_peak_spill_gb": ex["join_profile"]["peak_spill_gb"],
        "tessera_ordered_write_peak_buffer_gb":
            ex["ordered_write_profile"]["peak_buffer_memory_gb"],
        "tessera_ordered_write_peak_spill_gb": ex["ordered_write_profile"]["peak_spill_gb"],
        "floor_cpu_s": ex["floor_profile"]["cpu_s"],
        "floor_peak_buffer_gb": ex["floor_profile"]["peak_buffer_memory_gb"],
        "floor_peak_spill_gb": ex["floor_profile"]["peak_spill_gb"],
        "tessera_join_top_operators": top(ex["join_profile"]),
        "tessera_ordered_write_top_operators": top(ex["ordered_write_profile"]),
        "floor_top_operators": top(ex["floor_profile"]),
        "peak_rss_gb": ex["peak_rss_gb"],
        "tessera_sql": ex["tessera_sql"],
    }


def _ratios(res: dict[str, Any], m: int, n: int) -> dict[str, Any]:
    def wall(layout_name: str, e: str, key: str = "wall_s") -> float | None:
        return res.get(layout_name, {}).get(e, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    out: dict[str, Any] = {
        "tessera_flushed_vs_floor_flushed": ratio(wall("flushed", "tessera"),
                                                  wall("flushed", "floor")),
        "tessera_compacted_vs_floor_compacted": ratio(wall("compacted", "tessera"),
                                                      wall("compacted", "floor")),
        # The same on the least disturbed run of each, and on CPU seconds (work, all threads).
        "tessera_flushed_vs_floor_flushed_min_wall": ratio(
            wall("flushed", "tessera", "wall_s_min"), wall("flushed", "floor", "wall_s_min")),
        "tessera_flushed_vs_floor_flushed_cpu": ratio(
            wall("flushed", "tessera", "cpu_s"), wall("flushed", "floor", "cpu_s")),
        "tessera_compacted_vs_floor_compacted_min_wall": ratio(
            wall("compacted", "tessera", "wall_s_min"), wall("compacted", "floor", "wall_s_min")),
        "tessera_compacted_vs_floor_compacted_cpu": ratio(
            wall("compacted", "tessera", "cpu_s"), wall("compacted", "floor", "cpu_s")),
        "tessera_compacted_vs_floor_flushed": ratio(wall("compacted", "tessera"),
                                                    wall("flushed", "floor")),
        "tessera_compacted_vs_tessera_flushed": ratio(wall("compacted", "tessera"),
                                                      wall("flushed", "tessera")),
        "floor_compacted_vs_floor_flushed": ratio(wall("compacted", "floor"),
                                                  wall("flushed", "floor")),
        "pandas_vs_tessera_flushed": ratio(wall("flushed", "pandas"), wall("flushed", "tessera")),
        "pandas_vs_floor": ratio(wall("flushed", "pandas"), wall("flushed", "floor")),
    }
    best = min(w for w in (wall("flushed", "tessera"), wall("compacted", "tessera"), 1e18) if w)
    if (m, n) == (1_000_000, 10_000_000):
        lo, hi = ISSUE["feast_1Mx10M_s"]
        out["feast_1Mx10M_s_quoted"] = [lo, hi]
        out["tessera_best_speedup_vs_feast"] = [round(lo / best, 2), round(hi / best, 2)]
        out["floor_vs_issue_figure"] = ratio(wall("flushed", "floor"), ISSUE["floor_1Mx10M_s"])
    if (m, n) == (10_000_000, 100_000_000):
        out["floor_vs_issue_figure"] = ratio(wall("flushed", "floor"), ISSUE["floor_10Mx100M_s"])
    peaks = [res.get(lay, {}).get("tessera", {}).get("peak_rss_gb") for lay in ("flushed",
                                                                                 "compacted")]
    peaks = [p for p in peaks if p is not None]
    if peaks:
        out["tessera_peak_rss_gb_vs_8gb"] = round(max(peaks) / TARGET_PEAK_GB_10Mx100M, 3)
    return {k: v for k, v in out.items() if v is not None}


# --- correctness ---------------------------------------------------------------------------------


def _cast_select(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    cols = [*SPINE_COLUMNS, *FEATURE_NAMES]
    return ", ".join(f"CAST({p}{c} AS {SQL_TYPES[c]}) AS {c}" for c in cols)


def verify_outputs(outs: Path, layout_name: str, engines: list[str], m: int, root: Path,
                   spine: Path, base: Path, args: argparse.Namespace,
                   reference: bool = True) -> dict[str, Any]:
    """Check each engine's output against the floor's (and a brute-force reference)."""
    import duckdb
    import numpy as np

    from tessera.core import offline_layout as layout

    spill = base / "spill-verify"
    spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"memory_limit": "4GB", "threads": args.threads,
                                 "temp_directory": str(spill)})
    con.execute("SET TimeZone = 'UTC'")
    path = {e: str(outs / f"{e}-{layout_name}.parquet") for e in engines}
    out: dict[str, Any] = {"engines": {}}
    failures: list[str] = []
    sample = np.random.default_rng(args.seed + 2).choice(m, min(SAMPLE_ROWS, m), replace=False)
    con.register("sample_ids", __import__("pyarrow").table({"request_id": np.sort(sample)}))

    def summary_of(p: str) -> dict[str, Any]:
        parts = ["count(*) AS rows"]
        for c in [*SPINE_COLUMNS, *FEATURE_NAMES]:
            parts.append(f"count(CAST({c} AS {SQL_TYPES[c]})) AS nonnull_{c}")
            parts.append(f"sum(hash(CAST({c} AS {SQL_TYPES[c]})))::VARCHAR AS hash_{c}")
        rel = con.sql(f"SELECT {', '.join(parts)} FROM read_parquet('{p}')")
        return dict(zip(rel.columns, rel.fetchall()[0], strict=True))

    def sample_of(p: str) -> Any:
        return con.sql(
            f"SELECT {_cast_select('o')} FROM read_parquet('{p}') o "
            "SEMI JOIN sample_ids USING (request_id) ORDER BY request_id").to_arrow_table()

    floor = path.get("floor")
    floor_sum = summary_of(floor) if floor else None
    floor_sample = sample_of(floor) if floor else None
    for e in engines:
        info: dict[str, Any] = {}
        s = floor_sum if e == "floor" and floor_sum is not None else summary_of(path[e])
        info["rows"] = s["rows"]
        info["rows_equal_spine"] = s["rows"] == m
        info["null_features"] = {f: m - s[f"nonnull_{f}"] for f in FEATURE_NAMES}
        if e in ("tessera", "pandas"):
            bad = con.execute(
                f"SELECT count(*) FROM read_parquet('{path[e]}', file_row_number = true) "
                "WHERE request_id <> file_row_number").fetchall()[0][0]
            info["spine_order_kept"] = bad == 0
        if e != "floor" and floor_sum is not None:
            diff = [k for k in s if s[k] != floor_sum[k]]
            info["checksums_equal_floor"] = not diff
            if diff:
                info["checksum_differences"] = diff[:10]
            info["sample_equal_floor"] = bool(sample_of(path[e]).equals(floor_sample))
            cond = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}"
                               for c in [*SPINE_COLUMNS[1:], *FEATURE_NAMES])
            info["rows_differing_from_floor"] = con.execute(
                f"SELECT count(*) FROM (SELECT {_cast_select()} FROM read_parquet('{path[e]}')) a "
                f"FULL JOIN (SELECT {_cast_select()} FROM read_parquet('{floor}')) b "
                f"USING (request_id) WHERE a.request_id IS NULL OR b.request_id IS NULL OR {cond}"
            ).fetchall()[0][0]
        out["engines"][e] = info
        for k in ("rows_equal_spine", "spine_order_kept", "checksums_equal_floor",
                  "sample_equal_floor"):
            if info.get(k) is False:
                failures.append(f"{e}: {k}")
        if info.get("rows_differing_from_floor"):
            failures.append(f"{e}: {info['rows_differing_from_floor']} rows differ from the floor")
    if reference and floor_sample is not None:
        # Brute force, no ASOF: for each sampled spine row, the history row of its id with the
        # greatest event time <= the row's timestamp.
        feats = ", ".join(f"f.{f}" for f in FEATURE_NAMES)
        vals = ", ".join(f"best.v.{f} AS {f}" for f in FEATURE_NAMES)
        ref = con.sql(
            f"WITH s AS (SELECT * FROM read_parquet('{spine}') SEMI JOIN sample_ids "
            "USING (request_id)), "
            f"h AS (SELECT * FROM read_parquet('{layout.parquet_glob(root, GROUP)}') "
            "WHERE user_id IN (SELECT user_id FROM s)), "
            f"best AS (SELECT s.request_id, arg_max(struct_pack({feats}), "
            f"f.{layout.EVENT_TIME}) AS v FROM s JOIN h f ON s.user_id = f.user_id "
            f"AND f.{layout.EVENT_TIME} <= s.ts GROUP BY s.request_id) "
            f"SELECT {_cast_select('q')} FROM (SELECT s.*, {vals} FROM s LEFT JOIN best "
            "USING (request_id)) q ORDER BY request_id").to_arrow_table()
        same = bool(ref.equals(floor_sample))
        out["sample_equal_brute_force_reference"] = same
        out["sample_rows"] = ref.num_rows
        out["sample_rows_with_features"] = ref.num_rows - ref.column("clicks").null_count
        if not same:
            failures.append("floor sample differs from the brute-force reference")
    con.close()
    shutil.rmtree(spill, ignore_errors=True)
    out["failures"] = failures
    out["passed"] = not failures
    _say(f"checks ({layout_name}): " + ("passed" if not failures else f"FAILED {failures}"))
    return out


# --- offline write throughput --------------------------------------------------------------------


def _write_throughput(n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Records put through a real server (gRPC PutRecords, durable acks), and the time until
    they are all in Parquet (the server's tessera_offline_rows_written)."""
    import duckdb

    from benchmarks import data, load, verify
    from tests.serverproc import ServerProcess

    base = work / "write"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    server = ServerProcess(base / "data",
                           extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "1"})
    name = data.GROUP
    out: dict[str, Any] = {"records": n, "group": f"{name} (benchmarks/data.py: String id, "
                           "Fractional event time, 3 Integral, 2 Fractional, String, "
                           "List[String], Vector[8])", "flush_interval_s": 1}
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        server.start()
        data.create_group(server.http_url, name)
        metric = "tessera_offline_rows_written"
        base_rows = verify.unlabeled(server.http_url, metric) or 0.0

        def poll() -> None:
            while not stop.is_set():
                try:
                    v = verify.unlabeled(server.http_url, metric)
                except Exception:  # noqa: BLE001  (a scrape during shutdown)
                    v = None
                if v is not None:
                    samples.append((time.perf_counter(), v - base_rows))
                stop.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        bulk = load.bulk_load(server.grpc_target, n, group=name)
        # bulk_load's clock starts once the bodies are built (not timed): its start is the
        # last ack minus its seconds.
        t_end = time.perf_counter()
        t_put_start = t_end - bulk["seconds"]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if samples and samples[-1][1] >= n:
                break
            time.sleep(0.05)
        stop.set()
        poller.join()
        reached = next((t for t, v in samples if v >= n), None)
        out["bulk_put"] = bulk
        if reached is None:
            got = samples[-1][1] if samples else 0
            out["error"] = f"only {got:.0f} rows in Parquet after 600 s"
        else:
            seconds = max(reached, t_end) - t_put_start
            out["seconds_put_to_parquet"] = round(seconds, 3)
            out["rows_per_s_to_parquet"] = round(n / seconds, 1)
            out["parquet_lag_after_last_ack_s"] = round(max(reached - t_end, 0.0), 3)
            out["put_records_per_s_durable"] = bulk["records_per_s"]
        offline_root = base / "data" / "offline"
        size, files = _dir_bytes(offline_root / name)
        server.stop()
        size_after_stop, files_after_stop = _dir_bytes(offline_root / name)
        con = duckdb.connect()
        rows = con.execute(
            f"SELECT count(*) FROM read_parquet('{offline_root / name}/event_date=*/*.parquet')"
        ).fetchall()[0][0]
        out["parquet_rows"] = int(rows)
        out["parquet_rows_equal_records"] = int(rows) == n
        out["flushed"] = {"files": files_after_stop, "bytes": size_after_stop,
                          "bytes_per_row": round(size_after_stop / n, 1)}
        comp = run_child({"engine": "compact", "root": str(offline_root), "group": name,
                          "spill": str(base / "spill")}, base / "logs")
        size, files = _dir_bytes(offline_root / name)
        rows2 = con.execute(
            f"SELECT count(*) FROM read_parquet('{offline_root / name}/event_date=*/*.parquet')"
        ).fetchall()[0][0]
        con.close()
        out["compacted"] = {"files": files, "bytes": size, "bytes_per_row": round(size / n, 1),
                            "compact_s": comp.get("wall_s"), "rows": int(rows2),
                            "peak_rss_gb": comp.get("peak_rss_gb")}
        if rows2 != n:
            out["error"] = f"{rows2} rows after compaction; expected {n}"
    finally:
        stop.set()
        if server.proc is not None:
            server.kill()
        shutil.rmtree(base, ignore_errors=True)
    _say(f"offline write: {out.get('rows_per_s_to_parquet')} rows/s reaching Parquet, "
         f"{out.get('flushed', {}).get('bytes_per_row')} B/row flushed, "
         f"{out.get('compacted', {}).get('bytes_per_row')} B/row compacted")
    return out


# --- targets and summary -------------------------------------------------------------------------


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    passed = True
    for key, res in result["sizes"].items():
        checks = res.get("checks", {})
        for c in checks.values():
            passed &= bool(c.get("passed"))
        r = res.get("ratios", {})

        def within(name: str, r: dict[str, Any] = r) -> bool | None:
            v = r.get(name)
            return None if v is None else v <= TARGET_VS_FLOOR

        out[key] = {
            # Median wall time, tessera / floor, both on the same files.
            "tessera_within_1.3x_of_floor_on_flushed_files":
                within("tessera_flushed_vs_floor_flushed"),
            "tessera_within_1.3x_of_floor_on_compacted_files":
                within("tessera_compacted_vs_floor_compacted"),
            # Tessera on compacted files against the floor on the files as flushed.
            "tessera_compacted_within_1.3x_of_floor_on_flushed_files":
                within("tessera_compacted_vs_floor_flushed"),
        }
        if key == "10Mx100M":
            peak = max((res.get(lay, {}).get("tessera", {}).get("peak_rss_gb") or 0)
                       for lay in ("flushed", "compacted"))
            out[key]["tessera_peak_under_8gb"] = (peak < TARGET_PEAK_GB_10Mx100M) if peak else None
        if key == "1Mx10M":
            best = min((res.get(lay, {}).get("tessera", {}).get("wall_s") or 1e18)
                       for lay in ("flushed", "compacted"))
            out[key]["stretch_2x_faster_than_feast_3.1s"] = best <= ISSUE["feast_1Mx10M_s"][0] / 2
    result["checks_passed"] = passed
    return out


def summary(result: dict[str, Any]) -> str:
    lines = [f"Offline store benchmark ({result['config']['mode']}), memory_limit "
             f"{result['config']['memory_limit']}, {result['config']['threads']} threads, "
             f"machine load {result['machine']['load_avg_1m_at_start']} at start"]
    hdr = (f"{'size':<10} {'layout':<10} {'engine':<8} {'wall s':>7} {'min s':>7} {'cpu s':>7} "
           f"{'spine rows/s':>13} {'peak GB':>8} {'vs floor':>9} {'others':>6}")
    lines += [hdr, "-" * len(hdr)]
    for key, res in result["sizes"].items():
        if res.get("skipped"):
            lines.append(f"{key:<10} skipped: {res['skipped']}")
            continue
        for lay in ("flushed", "compacted"):
            floor = res.get(lay, {}).get("floor", {}).get("wall_s")
            for e, r in res.get(lay, {}).items():
                if not r.get("wall_s"):
                    lines.append(f"{key:<10} {lay:<10} {e:<8} FAILED: {r.get('error')}")
                    continue
                vs = f"{r['wall_s'] / floor:.2f}x" if floor else "-"
                others = max((x or 0) for x in r.get("other_processes_cores_runs") or [0])
                lines.append(f"{key:<10} {lay:<10} {e:<8} {r['wall_s']:>7.2f} "
                             f"{r['wall_s_min']:>7.2f} {r['cpu_s']:>7.2f} "
                             f"{r['spine_rows_per_s']:>13,} {r['peak_rss_gb']:>8.2f} {vs:>9} "
                             f"{others:>6.2f}")
        if res.get("pandas_skipped"):
            lines.append(f"{key:<10} pandas skipped: {res['pandas_skipped']}")
        d, c = res.get("data", {}), res.get("compaction", {})
        if d.get("bytes_per_row"):
            lines.append(f"{key:<10} data: {d['files']} files, {d['bytes_per_row']} B/row, "
                         f"generated in {d['generate_s']} s; compaction {c.get('wall_s')} s "
                         f"(peak {c.get('peak_rss_gb')} GB) -> {c.get('files')} files, "
                         f"{c.get('bytes_per_row')} B/row")
        ok = all(ch.get("passed") for ch in res.get("checks", {}).values())
        lines.append(f"{key:<10} correctness: {'PASSED' if ok else 'FAILED'} "
                     + "; ".join(f"{lay}: {ch.get('failures') or 'ok'}"
                                 for lay, ch in res.get("checks", {}).items()))
        rt = res.get("ratios", {})
        lines.append(
            f"{key:<10} tessera/floor: flushed {rt.get('tessera_flushed_vs_floor_flushed')} "
            f"(min-wall {rt.get('tessera_flushed_vs_floor_flushed_min_wall')}, cpu "
            f"{rt.get('tessera_flushed_vs_floor_flushed_cpu')}); compacted "
            f"{rt.get('tessera_compacted_vs_floor_compacted')} (min-wall "
            f"{rt.get('tessera_compacted_vs_floor_compacted_min_wall')}, cpu "
            f"{rt.get('tessera_compacted_vs_floor_compacted_cpu')}); compacted tessera vs "
            f"flushed floor {rt.get('tessera_compacted_vs_floor_flushed')}"
            + (f"; speedup vs Feast's 3.1-3.7 s: {rt['tessera_best_speedup_vs_feast']}"
               if "tessera_best_speedup_vs_feast" in rt else ""))
        for lay, w in (res.get("where_time_goes") or {}).items():
            if "tessera_join_s" not in w:
                continue
            lines.append(f"{key:<10} {lay}: tessera = join {w['tessera_join_s']} s "
                         f"+ ordered write {w['tessera_ordered_write_s']} s; floor "
                         f"{w['floor_s']} s (profiled run)")
    ow = result.get("offline_write")
    if ow:
        lines.append(
            f"offline write: {ow['records']:,} records put at "
            f"{ow.get('put_records_per_s_durable', 0):,.0f}/s durable; "
            f"{ow.get('rows_per_s_to_parquet', 0):,.0f} rows/s reaching Parquet (lag after last "
            f"ack {ow.get('parquet_lag_after_last_ack_s')} s); "
            f"{ow.get('flushed', {}).get('bytes_per_row')} B/row flushed "
            f"({ow.get('flushed', {}).get('files')} files), "
            f"{ow.get('compacted', {}).get('bytes_per_row')} B/row compacted")
    for key, t in result.get("targets", {}).items():
        lines.append(f"targets {key}: " + ", ".join(f"{k}={v}" for k, v in t.items()))
    lines.append(f"all correctness checks passed: {result.get('checks_passed')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
