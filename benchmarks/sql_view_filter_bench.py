"""What the SQL view filter (issue 12) costs a query, one command:

    .venv/bin/python -m benchmarks.sql_view_filter_bench [--rows 3000000] [--groups 30]
        [--rounds 15] [--out benchmarks/results/sql_view_filter.json]

One feature group `big` of `--rows` history rows (id String, ts Fractional, n Integral, x
Fractional, in the offline store's Parquet layout: 10 daily partitions, 4 files each) next to
`--groups` small groups, then the SQL worker's own code in this process (`sql_worker._Catalogs`
and `Catalog.sql_reader`, what a POST /v1/sql runs once its request reached the worker), three
ways, in alternating rounds so the machine's noise falls on each alike:

    before   the catalog of every group, the query as it ran before (no views-only check)
    admin    the catalog of every group with `views_only` (the parse-tree check), the path of an
             admin and of every caller with authentication off
    reader   a caller with `read:big` and `read:s_1*`: its own catalog (a database of the groups
             it may read, built on its first query and kept), `views_only`, and the refresh of
             the catalog of every group that tells which groups it may read

for a scan of every row (count/sum/avg), a selective filter, and `SELECT 1` (fixed costs). Also
the first query of a new set of readable groups (its catalog built: `reader_cold`) and the check
alone on a short and a ~20 KB query. Wall and process CPU (every thread) per query, medians and
p90; each result is checked equal across the three ways. The load average is recorded: other
processes share the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.core import offline_layout as layout
from tessera.core.schema import FeatureDefinition, FeatureGroup, FeatureGroupDefinition
from tessera.core.sql_sandbox import check_views_only
from tessera.server.auth.permissions import Principal, parse_permissions
from tessera.server.sql_worker import _Catalogs

QUERIES = {
    "scan": "SELECT count(*) AS c, sum(n) AS s, avg(x) AS a FROM big",
    "filter": "SELECT id, n FROM big WHERE id = 'id-1234567' ORDER BY tessera_seq",
    "select_1": "SELECT 1 AS one",
}
DAY_US = 86_400_000_000
T0_US = 1_700_000_000_000_000


def _group(name: str, gid: int) -> FeatureGroup:
    definition = FeatureGroupDefinition(
        feature_group_name=name, record_identifier_feature_name="id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of("id", "String"),
                             FeatureDefinition.of("ts", "Fractional"),
                             FeatureDefinition.of("n", "Integral"),
                             FeatureDefinition.of("x", "Fractional")],
    )
    return FeatureGroup(feature_group_id=gid, definition=definition, version=1,
                        creation_time=1.0, last_modified_time=1.0)


def write_group(root: Path, name: str, gid: int, rows: int, days: int, files_per_day: int) -> None:
    group = _group(name, gid)
    folder = layout.group_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layout.GROUP_FILE).write_text(group.model_dump_json(indent=2))
    schema = layout.arrow_schema(group)
    per_file = max(1, rows // (days * files_per_day))
    seq = 0
    con = duckdb.connect()
    for day in range(days):
        date = time.strftime("%Y-%m-%d", time.gmtime((T0_US + day * DAY_US) / 1e6))
        target = layout.partition_dir(root, name, date)
        target.mkdir(parents=True, exist_ok=True)
        for _ in range(files_per_day):
            first = seq
            event0 = T0_US + day * DAY_US
            table = con.sql(f"""
                SELECT 'id-' || (i % 2000000)::VARCHAR AS id,
                       ({event0} + i * 1000) / 1e6 AS ts, i AS n, (i % 1000) / 7.0 AS x,
                       make_timestamp({event0} + i * 1000) AS write_time,
                       make_timestamp({event0} + i * 1000) AS api_invocation_time,
                       false AS is_deleted,
                       make_timestamp({event0} + i * 1000) AS tessera_event_time,
                       i AS tessera_seq, NULL::TIMESTAMP AS tessera_expires_at,
                       'bench' AS tessera_source
                FROM range({first}, {first + per_file}) r(i)""").to_arrow_table()
            table = pa.Table.from_arrays(
                [table.column(f.name).cast(f.type) for f in schema], schema=schema)
            pq.write_table(table, target / layout.part_file_name(first, first + per_file - 1))
            seq += per_file
    con.close()


def _measure(run: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1e3, 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 3),
            "min_ms": round(ordered[0] * 1e3, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/sql_view_filter.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tessera-sqlfilter-"))
    root = work / "offline"
    try:
        start = time.monotonic()
        write_group(root, "big", 1, args.rows, days=10, files_per_day=4)
        for i in range(args.groups):
            write_group(root, f"s_{i}", 100 + i, 1000, days=2, files_per_day=1)
        print(f"data written in {time.monotonic() - start:.1f} s", flush=True)
        threads = max(1, (os.cpu_count() or 1) - 1)  # the SQL worker's default
        temp = work / "temp"
        temp.mkdir()
        catalogs = _Catalogs(str(root), str(temp), "2GB", threads)
        reader = Principal("bench-reader", parse_permissions(["read:big", "read:s_1*"]))
        readable = 1 + sum(1 for i in range(args.groups) if str(i).startswith("1"))

        def run(way: str, query: str) -> list[tuple[Any, ...]]:
            if way == "before":
                catalog, views_only = catalogs.full, False
            elif way == "admin":
                catalog, views_only = catalogs.full, True
            else:
                catalog, views_only = catalogs.for_principal(reader), True
            with catalog.sql_reader(query, timeout_s=300, views_only=views_only) as r:
                return [tuple(row.values()) for row in r.read_all().to_pylist()]

        ways = ("before", "admin", "reader")
        # The first query of the reader: its catalog is built.
        cold = {}
        for name, query in QUERIES.items():
            catalogs._some.clear()  # noqa: SLF001  (a cold start of the reader's catalog)
            wall, cpu, _ = _measure(lambda q=query: run("reader", q))
            cold[name] = {"wall_ms": round(wall * 1e3, 2), "cpu_ms": round(cpu * 1e3, 2)}
        for way in ways:  # warm every way once (footer caches, the reader's catalog)
            for query in QUERIES.values():
                run(way, query)
        walls: dict[str, dict[str, list[float]]] = {w: {q: [] for q in QUERIES} for w in ways}
        cpus: dict[str, dict[str, list[float]]] = {w: {q: [] for q in QUERIES} for w in ways}
        expected: dict[str, Any] = {}
        loads = [os.getloadavg()[0]]
        for rnd in range(args.rounds):
            order = ways if rnd % 2 == 0 else tuple(reversed(ways))
            for name, query in QUERIES.items():
                for way in order:
                    wall, cpu, result = _measure(lambda w=way, q=query: run(w, q))
                    if expected.setdefault(name, result) != result:
                        raise SystemExit(f"{way} {name}: {result} != {expected[name]}")
                    walls[way][name].append(wall)
                    cpus[way][name].append(cpu)
            loads.append(os.getloadavg()[0])
        if expected["scan"][0][0] != (args.rows // 40) * 40:
            raise SystemExit(f"scan counted {expected['scan'][0][0]} rows")

        long_query = "SELECT * FROM big WHERE id IN (" + ", ".join(
            f"'id-{i}'" for i in range(1500)) + ")"
        cur = catalogs.full.cursor()
        check: dict[str, dict[str, float]] = {}
        for name, query in (("short", QUERIES["filter"]), ("20KB", long_query)):
            samples = [_measure(lambda q=query: check_views_only(cur, q))[0] for _ in range(50)]
            check[name] = {**_stats(samples), "query_bytes": len(query)}
        cur.close()

        report: dict[str, Any] = {
            "benchmark": "sql_view_filter",
            "rows": args.rows, "groups": args.groups + 1, "reader_groups": readable,
            "rounds": args.rounds, "duckdb_threads": threads, "duckdb": duckdb.__version__,
            "queries": QUERIES,
            "warm": {way: {name: {"wall": _stats(walls[way][name]),
                                  "cpu": _stats(cpus[way][name])} for name in QUERIES}
                     for way in ways},
            "ratio_to_before_wall_median": {
                way: {name: round(statistics.median(walls[way][name])
                                  / statistics.median(walls["before"][name]), 3)
                      for name in QUERIES} for way in ("admin", "reader")},
            "ratio_to_before_cpu_median": {
                way: {name: round(statistics.median(cpus[way][name])
                                  / statistics.median(cpus["before"][name]), 3)
                      for name in QUERIES} for way in ("admin", "reader")},
            "reader_cold_first_query": cold,
            "check_views_only_alone": check,
            "results_checked_equal": True,
            "machine": {"cpus": os.cpu_count(), "load_average_1m": [round(x, 2) for x in loads]},
        }
        catalogs.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("warm", "ratio_to_before_wall_median",
                                              "ratio_to_before_cpu_median",
                                              "reader_cold_first_query",
                                              "check_views_only_alone", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
