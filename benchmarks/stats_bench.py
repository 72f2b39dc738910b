"""Feature statistics over 10M history rows (issue 13: <= 10 s on this machine).

Writes a group's offline files directly in the offline layout (`tessera.core.offline_layout`,
10 features: 6 numbers, 2 strings, a list and a vector; `--days` partitions), then computes the
statistics of the whole window with `StatisticsEngine`:
- cold: a fresh engine (nothing cached; DuckDB's Parquet footers cached after the first round),
- cached: the same window again (every partition's summary and histogram reused),
- one day changed: a new file appended to one partition (a flush), then the window again
  (that partition recomputed, the others reused),
and checks each answer against NumPy on the generated columns (counts, nulls, min, max, mean,
stddev, histogram counts). Wall and process CPU per round; load average, since the machine is
shared. JSON report: benchmarks/results/stats.json.

    .venv/bin/python -m benchmarks.stats_bench [--rows 10000000] [--days 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.report import machine
from tessera.core import offline_layout as layout
from tessera.core.catalog import Catalog
from tessera.core.schema import (
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.core.statistics import HISTOGRAM_BINS, StatisticsEngine

FEATURES = {
    "id": "String", "ts": "Fractional",
    "f_normal": "Fractional", "f_uniform": "Fractional", "f_exp": "Fractional",
    "i_count": "Integral", "i_small": "Integral", "f_sparse": "Fractional",
    "s_country": "String", "s_device": "String", "l_items": "List[Integral]",
    "v_emb": "Vector[4]",
}
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_group() -> FeatureGroup:
    definition = FeatureGroupDefinition(
        feature_group_name="stats_bench", record_identifier_feature_name="id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in FEATURES.items()])
    definition.check()
    return FeatureGroup(definition=definition, feature_group_id=1, creation_time=1.0,
                        last_modified_time=1.0)


def day_table(group: FeatureGroup, day: int, rows: int, seq0: int,
              rng: np.random.Generator) -> tuple[pa.Table, dict[str, np.ndarray]]:
    base_us = int((START + dt.timedelta(days=day)).timestamp() * 1e6)
    event_us = base_us + np.sort(rng.integers(0, 86_400_000_000, rows))
    cols: dict[str, np.ndarray] = {
        "f_normal": rng.normal(10.0, 3.0, rows),
        "f_uniform": rng.uniform(-1.0, 1.0, rows),
        "f_exp": rng.exponential(2.0, rows),
        "i_count": rng.poisson(4.0, rows).astype(np.int64),
        "i_small": rng.integers(0, 100, rows),
    }
    sparse = rng.normal(0.0, 1.0, rows)
    sparse_null = rng.random(rows) < 0.3
    countries = np.array(["us", "de", "fr", "jp", "br", "in", "gb", "ca", "mx", "kr", "it"])
    lengths = rng.integers(0, 8, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    emb = rng.normal(0.0, 1.0, (rows, 4)).astype(np.float32)
    seq = np.arange(seq0, seq0 + rows, dtype=np.int64)
    ts = pa.array(event_us, pa.timestamp("us", tz="UTC"))
    arrays = {
        "id": pa.array(np.char.add("r", (seq % 1_000_000).astype(str))),
        "ts": pa.array(event_us / 1e6),
        **{k: pa.array(v) for k, v in cols.items()},
        "f_sparse": pa.array(sparse, mask=sparse_null),
        "s_country": pa.array(countries[rng.zipf(1.6, rows) % len(countries)]),
        "s_device": pa.array(np.where(rng.random(rows) < 0.5, "ios", "android")),
        "l_items": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                            pa.array(rng.integers(0, 1000, offsets[-1]))),
        "v_emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4),
        layout.WRITE_TIME: ts, layout.API_INVOCATION_TIME: ts,
        layout.IS_DELETED: pa.array(np.zeros(rows, dtype=bool)),
        layout.EVENT_TIME: ts, layout.SEQ: pa.array(seq),
        layout.EXPIRES_AT: pa.nulls(rows, pa.timestamp("us", tz="UTC")),
        layout.SOURCE: pa.nulls(rows, pa.string()),
    }
    schema = layout.arrow_schema(group)
    table = pa.table([arrays[f.name] for f in schema], schema=schema)
    cols["f_sparse"] = sparse[~sparse_null]
    cols["l_items"] = lengths.astype(np.float64)
    return table, cols


def write(root: Path, group: FeatureGroup, rows: int, days: int, files_per_day: int,
          seed: int) -> dict[str, list[np.ndarray]]:
    folder = layout.group_dir(root, group.name)
    folder.mkdir(parents=True)
    (folder / layout.GROUP_FILE).write_text(group.model_dump_json())
    rng = np.random.default_rng(seed)
    truth: dict[str, list[np.ndarray]] = {}
    per_file = rows // (days * files_per_day)
    seq = 1
    for day in range(days):
        target = layout.partition_dir(root, group.name,
                                      (START + dt.timedelta(days=day)).date().isoformat())
        target.mkdir(parents=True)
        for _ in range(files_per_day):
            table, cols = day_table(group, day, per_file, seq, rng)
            pq.write_table(table, target / layout.part_file_name(seq, seq + per_file - 1))
            seq += per_file
            for k, v in cols.items():
                truth.setdefault(k, []).append(v)
    return truth


def check(result: dict[str, Any], truth: dict[str, list[np.ndarray]]) -> None:
    """Every number the engine reported against NumPy on the generated columns."""
    for name, parts in truth.items():
        values = np.concatenate(parts).astype(np.float64)
        stats = result[name] if name != "l_items" else result[name]["length"]
        n = len(values)
        count = result[name]["count"]
        if name != "l_items" and count != n:
            raise SystemExit(f"{name}: count {count} != {n}")
        lo, hi = values.min(), values.max()
        want = {"min": lo, "max": hi, "mean": values.mean(), "stddev": values.std(ddof=1)}
        for k, v in want.items():
            if not np.isclose(stats[k], v, rtol=1e-9, atol=1e-9):
                raise SystemExit(f"{name}: {k} {stats[k]} != {v}")
        counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi))
        if int(np.abs(counts - np.array(stats["histogram"]["counts"])).sum()) > n * 1e-6 + 2:
            raise SystemExit(f"{name}: histogram {stats['histogram']['counts']} != {counts}")


def timed(fn: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--files-per-day", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/stats.json")
    args = ap.parse_args()
    report: dict[str, Any] = {"machine": machine(), "rows": args.rows, "days": args.days,
                              "files_per_day": args.files_per_day,
                              "features": len(FEATURES) - 2}
    root = Path(tempfile.mkdtemp(prefix="tessera-stats-bench-"))
    try:
        group = make_group()
        wall, _, truth = timed(lambda: write(root, group, args.rows, args.days,
                                             args.files_per_day, args.seed))
        report["write_s"] = round(wall, 2)
        start, end = START, START + dt.timedelta(days=args.days)
        cold: list[tuple[float, float]] = []
        cached: list[tuple[float, float]] = []
        with Catalog(root, memory_limit="2GB") as catalog:
            for _ in range(args.rounds):
                engine = StatisticsEngine(catalog.root, catalog.cursor)
                wall, cpu, result = timed(lambda e=engine: e.statistics(group, start, end))
                check(result, truth)
                cold.append((wall, cpu))
                wall, cpu, again = timed(lambda e=engine: e.statistics(group, start, end))
                if again != result:
                    raise SystemExit("the cached statistics differ from the computed ones")
                cached.append((wall, cpu))
            # A flush into the last day: that partition is recomputed, the others reused.
            day = args.days - 1
            extra, cols = day_table(group, day, 10_000, args.rows + 1, np.random.default_rng(1))
            target = layout.partition_dir(root, group.name,
                                          (START + dt.timedelta(days=day)).date().isoformat())
            pq.write_table(extra, target / layout.part_file_name(args.rows + 1,
                                                                 args.rows + 10_000))
            for k, v in cols.items():
                truth[k].append(v)
            before = engine.computed
            wall, cpu, result = timed(lambda: engine.statistics(group, start, end))
            check(result, truth)
            report["one_partition_changed"] = {
                "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "partitions_recomputed": engine.computed - before}
        report["cold"] = _summary(cold)
        report["cached"] = _summary(cached)
        report["target_s"] = 10.0
        report["cold_within_target"] = report["cold"]["wall_s_median"] <= 10.0
        report["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
        report["checked"] = "count, nulls, min, max, mean, stddev, histogram vs NumPy"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


def _summary(rounds: list[tuple[float, float]]) -> dict[str, Any]:
    return {"wall_s": [round(w, 3) for w, _ in rounds],
            "cpu_s": [round(c, 3) for _, c in rounds],
            "wall_s_median": round(statistics.median(w for w, _ in rounds), 3),
            "cpu_s_median": round(statistics.median(c for _, c in rounds), 3)}


if __name__ == "__main__":
    main()
