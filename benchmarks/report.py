"""The report: machine info, ratios to the floors, target flags, and the summary table."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
from importlib import metadata
from typing import Any

# Targets of the online store (reported, not asserted).
GET_P99_C1_MS = 1.0
GET_VS_ECHO_PCT = 80.0
BATCH_P99_MS = 5.0
BULK_RECORDS_PER_S = 50_000.0


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f
                              if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": metadata.version("grpcio"),
        "protobuf": metadata.version("protobuf"),
        "rocksdict": metadata.version("rocksdict"),
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted changes of the server's code when the run started: the commit alone
        # does not say what ran.
        "git_uncommitted_server_changes": bool(_git("status", "--porcelain", "--", "server",
                                                    "core", "proto")),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except OSError:
        return ""


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _pct(a: float, b: float) -> float | None:
    return round(100 * a / b, 1) if b else None


def _paired(a: list[float], b: list[float]) -> float | None:
    pairs = [100 * x / y for x, y in zip(a, b, strict=False) if y]
    return round(float(statistics.median(pairs)), 1) if pairs else None


def ratios(rpc: dict[str, dict[str, dict]], storage: dict[str, dict]) -> dict[str, Any]:
    """GetRecord against the echo floor (same generator, same concurrency) and the reads
    against the in-process storage floor."""
    get, echo, batch = rpc["GetRecord"], rpc["Echo"], rpc["BatchGetRecord"]
    vs_echo = {
        c: {
            "throughput_pct_of_echo": _pct(get[c]["calls_per_s"], echo[c]["calls_per_s"]),
            # Each round's GetRecord segment against the Echo segment run right after it: the
            # median of these pairs is the least sensitive to a noisy machine's drifts.
            "paired_throughput_pct_median": _paired(get[c]["calls_per_s_by_round"],
                                                    echo[c]["calls_per_s_by_round"]),
            "p50_ratio": _ratio(get[c]["p50_ms"], echo[c]["p50_ms"]),
            "p99_ratio": _ratio(get[c]["p99_ms"], echo[c]["p99_ms"]),
            "server_cpu_ratio": _ratio(get[c].get("server_cpu_us_per_call", 0),
                                       echo[c].get("server_cpu_us_per_call", 0)),
        }
        for c in get
    }
    peak_get = max(v["calls_per_s"] for v in get.values())
    peak_echo = max(v["calls_per_s"] for v in echo.values())
    single, multi = storage["get"], storage["multi_get_100"]
    vs_storage = {
        "GetRecord": {c: {"p50_ratio": _ratio(v["p50_ms"], single["p50_ms"]),
                          "p99_ratio": _ratio(v["p99_ms"], single["p99_ms"]),
                          "throughput_pct_of_storage": round(
                              100 * v["calls_per_s"] / single["calls_per_s"], 2)}
                      for c, v in get.items()},
        "BatchGetRecord": {c: {"p50_ratio": _ratio(v["p50_ms"], multi["p50_ms"]),
                               "p99_ratio": _ratio(v["p99_ms"], multi["p99_ms"]),
                               "throughput_pct_of_storage": round(
                                   100 * v["calls_per_s"] / multi["calls_per_s"], 2)}
                           for c, v in batch.items()},
    }
    return {
        "GetRecord_vs_echo": vs_echo,
        "GetRecord_vs_echo_peak_throughput_pct": round(100 * peak_get / peak_echo, 1),
        "vs_storage_floor": vs_storage,
    }


def targets(rpc: dict[str, dict[str, dict]], bulk: dict[str, Any], ratio: dict[str, Any],
            bulk_online_only: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    get_p99 = rpc["GetRecord"]["1"]["p99_ms"]
    batch_p99 = rpc["BatchGetRecord"]["1"]["p99_ms"]
    pct = ratio["GetRecord_vs_echo_peak_throughput_pct"]
    return [
        {"name": "GetRecord p99 at concurrency 1", "target": f"<= {GET_P99_C1_MS} ms",
         "measured": get_p99, "pass": get_p99 <= GET_P99_C1_MS},
        {"name": "GetRecord peak throughput vs echo floor peak", "target":
         f">= {GET_VS_ECHO_PCT}%", "measured": pct, "pass": pct >= GET_VS_ECHO_PCT,
         "per_concurrency_pct": {c: v["throughput_pct_of_echo"]
                                 for c, v in ratio["GetRecord_vs_echo"].items()},
         "per_concurrency_paired_median_pct": {
             c: v["paired_throughput_pct_median"] for c, v in ratio["GetRecord_vs_echo"].items()},
         "server_cpu_per_call_echo_over_get_pct": {
             c: _pct(rpc["Echo"][c].get("server_cpu_us_per_call", 0),
                     rpc["GetRecord"][c].get("server_cpu_us_per_call", 0))
             for c in rpc["GetRecord"]}},
        {"name": "BatchGetRecord(100) p99 at concurrency 1", "target": f"<= {BATCH_P99_MS} ms",
         "measured": batch_p99, "pass": batch_p99 <= BATCH_P99_MS,
         "p99_ms_by_concurrency": {c: v["p99_ms"] for c, v in rpc["BatchGetRecord"].items()}},
        {"name": "bulk load, records/s durable", "target": f">= {BULK_RECORDS_PER_S:,.0f}",
         "measured": bulk["records_per_s"], "pass": bulk["records_per_s"] >= BULK_RECORDS_PER_S,
         "online_only_group_records_per_s": (bulk_online_only or {}).get("records_per_s")},
    ]


def table(report: dict[str, Any]) -> str:
    """A readable summary of a report."""
    lines = []
    cfg = report["config"]
    lines.append(f"Tessera online benchmark ({report['mode']}), {report['machine']['date_utc']}, "
                 f"{report['machine']['cpu_count']} CPUs, load generator: "
                 f"{cfg['load_generator']}, {cfg['records']:,} records")
    b = report["bulk_load"]
    lines.append(f"bulk load: {b['records']:,} records in {b['seconds']} s = "
                 f"{b['records_per_s']:,.0f} records/s durable ({b['records_per_call']}/call, "
                 f"{b['client_processes']}x{b['client_threads_per_process']} clients; "
                 f"call p50 {b['call_p50_ms']} ms, p99 {b['call_p99_ms']} ms; server "
                 f"{b['server_cpu_us_per_record']} us CPU/record, {b['server_cores']} cores; "
                 f"others {b['other_processes_cores']} cores)")
    if "settle_after_load_s" in b:
        lines.append(f"  then the server settled (offline flush, compactions) in "
                     f"{b['settle_after_load_s']} s before the reads were measured")
    o = report.get("bulk_load_online_only")
    if o:
        lines.append(f"bulk load, group without offline store: {o['records']:,} records = "
                     f"{o['records_per_s']:,.0f} records/s durable (server "
                     f"{o['server_cpu_us_per_record']} us CPU/record; others "
                     f"{o['other_processes_cores']} cores)")
    lines.append("")
    head = (f"{'RPC':<22}{'conc':>5}{'calls/s':>10}{'records/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'cpu us/call':>12}{'calls':>9}{'fail':>6}{'others':>8}")
    lines += [head, "-" * len(head)]
    for method, cells in report["rpc"].items():
        label = {"BatchGetRecord": "BatchGetRecord(100)",
                 "PutRecords": f"PutRecords({cfg['put_records_per_call']})",
                 "Echo": "Echo (floor)"}.get(method, method)
        for c, v in cells.items():
            lines.append(f"{label:<22}{c:>5}{v['calls_per_s']:>10,.0f}{v['records_per_s']:>11,.0f}"
                         f"{v['p50_ms']:>9.3f}{v['p99_ms']:>9.3f}"
                         f"{v.get('server_cpu_us_per_call', 0):>12,.0f}{v['calls']:>9}"
                         f"{v['failed']:>6}{v.get('other_processes_cores', 0):>8.2f}")
    lines.append("(cpu us/call: server CPU per call, all threads; others: cores used by other "
                 "processes meanwhile, of 2)")
    s = report["floors"]["storage"]
    lines.append("")
    for name, v in (("rocksdict get", s["get"]), ("rocksdict multi_get(100)", s["multi_get_100"]),
                    ("rocksdict get, one key", s["get_fixed_key"])):
        lines.append(f"storage floor {name:<25} p50 {v['p50_ms'] * 1000:8.1f} us  p99 "
                     f"{v['p99_ms'] * 1000:8.1f} us  {v['calls_per_s']:>10,.0f} calls/s")
    r = report["ratios"]
    lines.append("")
    lines.append("GetRecord vs Echo (transport floor): " + "; ".join(
        f"c={c}: {v['throughput_pct_of_echo']}% of echo calls/s, p50 x{v['p50_ratio']}, "
        f"p99 x{v['p99_ratio']}" for c, v in r["GetRecord_vs_echo"].items()))
    lines.append(f"GetRecord peak / Echo peak: {r['GetRecord_vs_echo_peak_throughput_pct']}%; "
                 "median of paired rounds: " + ", ".join(
                     f"c={c}: {v['paired_throughput_pct_median']}%"
                     for c, v in r["GetRecord_vs_echo"].items()))
    g1 = r["vs_storage_floor"]["GetRecord"]["1"]
    b1 = r["vs_storage_floor"]["BatchGetRecord"]["1"]
    lines.append(f"vs storage floor at c=1: GetRecord p50 x{g1['p50_ratio']}, "
                 f"BatchGetRecord(100) p50 x{b1['p50_ratio']}")
    lines.append("")
    for t in report["targets"]:
        lines.append(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} "
                     f"(target {t['target']})")
    lines.append(f"checks: {report['checks']['summary']}")
    return "\n".join(lines)
