"""Micro-benchmarks of the aggregation kernels; each checks its result before timing it.

    python -m tessera.core.aggregation.bench [--events N] [--queries N] [--json PATH]

fold      events/s folded into stored values (codec included) and by the kernel alone
read      one key's read (decode + kernel + row()) for 6 functions x 3 windows: p50/p99
pit       point_in_time over N events x M queries vs pandas (concat + groupby().rolling() per
          window, the exact (t - W, t] windows, which equal ours with 1 s tiles on whole-second
          times and write time = event time); checked equal, ratio reported
compile   warm_up() in a fresh process with an empty Numba cache, then with the cache filled
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation import offline, online
from tessera.core.aggregation.codec import decode
from tessera.core.aggregation.columns import AggregateValue, AggregateValues, Events
from tessera.core.aggregation.kernels import fold_tiles
from tessera.core.aggregation.plan import StreamPlan
from tessera.core.aggregation.spec import (
    AggregationConfig,
    AggregationDefinition,
    check,
    parse_duration_us,
)
from tessera.core.aggregation.warmup import warm_up
from tessera.core.schema import FeatureType

S = 1_000_000
DAY = 86_400 * S
FUNCS = ("count", "sum", "mean", "min", "max", "last")
I64s = npt.NDArray[np.int64]
F64s = npt.NDArray[np.float64]
Row = dict[str, AggregateValue]


def make_plan(windows: tuple[str, ...], funcs: tuple[str, ...], tile: str | None) -> StreamPlan:
    defs = [
        AggregationDefinition(name=f"v_{f}_{w}", source="v", function=f, window=w)
        for w in windows
        for f in funcs
    ]
    types = {"id": FeatureType.parse("String"), "v": FeatureType.parse("Fractional")}
    config = AggregationConfig(tile_size=tile)
    return check(defs, types, record_identifier="id", config=config).streams[0]


def _events(rng: np.random.Generator, n: int, keys: int, span_us: int, lag_us: int) -> Events:
    """Random events as history holds them: in commit order (write time, then seq)."""
    event = rng.integers(0, span_us // S, n) * S
    write = event + (rng.exponential(lag_us, n).astype(np.int64) if lag_us else 0)
    values = np.round(rng.normal(100, 30, n), 2)
    values[rng.random(n) < 0.05] = np.nan
    order = np.argsort(write, kind="stable")
    return Events(
        rng.integers(0, keys, n),
        event[order],
        write[order],
        np.arange(1, n + 1),
        values[order].reshape(-1, 1),
    )


def bench_fold(batches: int = 20, batch: int = 10_000, keys: int = 1_000) -> dict[str, float]:
    """Commits of `batch` events over `keys` keys, in commit order, one day of 1m tiles."""
    plan = make_plan(("10m", "1h", "1d"), FUNCS, None)
    rng = np.random.default_rng(1)
    stored: list[bytes | None] = [None] * keys
    t0, total, kernel_s = 0.0, 0, 0.0
    for b in range(batches):
        ev = _events(rng, batch, keys, DAY // batches, 5 * S)
        ev = Events(ev.key, ev.event_time_us + b * DAY // batches, ev.write_time_us + b * DAY //
                    batches, ev.seq + b * batch, ev.values)  # fmt: skip
        ev = ev.take(np.argsort(ev.write_time_us, kind="stable"))
        start = time.perf_counter()
        stored = online.fold(plan, stored, ev).values
        t0 += time.perf_counter() - start
        total += batch
        g = ev.take(np.argsort(ev.key, kind="stable"))
        state = decode(stored, plan.n_sources, plan.recent_capacity)
        args = online.fold_arguments(plan, state, g, int(g.write_time_us.max()))
        start = time.perf_counter()
        fold_tiles(*args)
        kernel_s += time.perf_counter() - start
    sizes = [len(v) for v in stored if v is not None]
    return {
        "events_per_s_with_codec": total / t0,
        "events_per_s_kernel": total / kernel_s,
        "mean_value_bytes": float(np.mean(sizes)),
    }


def bench_read(events_per_day: int, reads: int = 20_000) -> dict[str, float]:
    """One key with `events_per_day` events over the last day: read p50/p99 in microseconds."""
    plan = make_plan(("10m", "1h", "1d"), FUNCS, None)
    rng = np.random.default_rng(2)
    now = 400 * DAY
    ev = _events(rng, events_per_day, 1, DAY, 0)
    ev = Events(ev.key, ev.event_time_us + now - DAY, ev.write_time_us + now - DAY, ev.seq,
                ev.values)  # fmt: skip
    value = online.fold(plan, [None], ev.take(np.argsort(ev.write_time_us))).values
    one = np.zeros(1, np.int64)
    want = offline.point_in_time(plan, ev, one, one + now).row(0)
    got = online.read(plan, value, now).row(0)
    _check_rows(plan, got, want)
    times = _time(lambda: online.read(plan, value, now).row(0), reads)
    return {"value_bytes": len(value[0] or b""), **times}


def bench_pit(n_events: int, n_queries: int, keys: int, baseline: bool) -> dict[str, object]:
    """point_in_time vs pandas groupby().rolling(), 15 aggregations (5 functions x 3 windows)."""
    plan = make_plan(("10m", "1h", "12h"), FUNCS[:5], "1s")
    rng = np.random.default_rng(3)
    ev = _events(rng, n_events, keys, 30 * DAY, 0)
    q_key = rng.integers(0, keys, n_queries)
    q_time = rng.integers(0, 30 * DAY // S, n_queries) * S
    start = time.perf_counter()
    result = offline.point_in_time(plan, ev, q_key, q_time)
    ours = time.perf_counter() - start
    out: dict[str, object] = {"events": n_events, "queries": n_queries, "keys": keys,
                              "tessera_s": ours}  # fmt: skip
    late = _events(rng, n_events, keys, 30 * DAY, 60 * S)
    start = time.perf_counter()
    offline.point_in_time(plan, late, q_key, q_time)
    out["tessera_with_late_events_s"] = time.perf_counter() - start
    if baseline:
        start = time.perf_counter()
        frame = _pandas_rolling(ev, q_key, q_time, ("10m", "1h", "12h"))
        pandas_s = time.perf_counter() - start
        out["pandas_s"] = pandas_s
        out["ratio"] = pandas_s / ours
        _check_pandas(plan, result, frame)
        out["checked"] = "count/min/max exact, sum/mean 1e-9 relative: equal"
    return out


def _pandas_rolling(ev: Events, q_key: I64s, q_time: I64s, windows: tuple[str, ...]) -> Any:
    """The baseline, written lean: one frame of events and queries (value NaN) sorted by (key,
    time, events first), groupby("key").rolling(W, on="ts", closed="right") per window, then
    the query rows' values scattered back into query order with NumPy."""
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the dev tools

    n, q = len(ev), len(q_key)
    frame = pd.DataFrame(
        {
            "key": np.concatenate([ev.key, q_key]),
            "ts": pd.to_datetime(np.concatenate([ev.event_time_us, q_time]), unit="us"),
            "is_query": np.concatenate([np.zeros(n, bool), np.ones(q, bool)]),
            "row": np.concatenate([np.full(n, -1), np.arange(q)]),
            "v": np.concatenate([ev.values[:, 0], np.full(q, np.nan)]),
        }
    ).sort_values(["key", "ts", "is_query"], kind="stable")
    is_query = frame["is_query"].to_numpy()
    rows = frame["row"].to_numpy()[is_query]
    out: dict[str, F64s] = {}
    for w in windows:
        span = pd.Timedelta(parse_duration_us(w, "window"), unit="us")
        rolled = frame.groupby("key", sort=False).rolling(span, on="ts", closed="right")["v"]
        aggs = rolled.agg(["count", "sum", "mean", "min", "max"])
        for f in aggs.columns:
            # groupby(sort=False).rolling keeps the frame's (sorted) row order
            col = np.empty(q)
            col[rows] = aggs[f].to_numpy()[is_query]
            out[f"v_{f}_{w}"] = col
    return out


def _check_pandas(plan: StreamPlan, result: AggregateValues, frame: Any) -> None:
    for agg in plan.aggregations:
        vals, valid = result.column(agg.name)
        ref = frame[agg.name]
        if agg.function in ("count", "sum"):
            ref = np.nan_to_num(ref, nan=0.0)
        ours = np.where(valid, vals, np.nan).astype(np.float64)
        if agg.function in ("sum", "mean"):
            ok = np.isclose(ours, ref, rtol=1e-9, atol=1e-6, equal_nan=True)
        else:
            ok = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
        if not ok.all():
            bad = int(np.argmin(ok))
            raise AssertionError(f"{agg.name} row {bad}: ours {ours[bad]} pandas {ref[bad]}")


def _check_rows(plan: StreamPlan, got: Row, want: Row) -> None:
    for agg in plan.aggregations:
        a, b = got[agg.name], want[agg.name]
        name = agg.name
        if isinstance(a, float) and isinstance(b, float):
            if abs(a - b) > 1e-9 * max(abs(b), 1.0):
                raise AssertionError(f"{name}: online {a} offline {b}")
        elif a != b:
            raise AssertionError(f"{name}: online {a} offline {b}")


def _time(call: Callable[[], object], n: int) -> dict[str, float]:
    for _ in range(min(n, 1000)):
        call()
    samples = np.empty(n)
    for i in range(n):
        start = time.perf_counter_ns()
        call()
        samples[i] = time.perf_counter_ns() - start
    return {"p50_us": float(np.percentile(samples, 50)) / 1e3,
            "p99_us": float(np.percentile(samples, 99)) / 1e3}  # fmt: skip


def bench_compile() -> dict[str, float]:
    """warm_up() in fresh processes: an empty Numba cache, then the cache it filled."""
    code = "from tessera.core.aggregation.warmup import warm_up; print(warm_up().compile_s)"
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [
            float(
                subprocess.run(
                    [sys.executable, "-c", code],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )  # fmt: skip
            for _ in range(2)
        ]
    return {"cold_s": runs[0], "cached_s": runs[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--no-baseline", action="store_true", help="skip pandas")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    report: dict[str, object] = {"warm_up": warm_up().__dict__, "compile": bench_compile()}
    report["fold"] = bench_fold()
    report["read_sparse_50_events"] = bench_read(50)
    report["read_dense_4320_events"] = bench_read(4_320)
    report["pit"] = bench_pit(args.events, args.queries, args.keys, not args.no_baseline)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
