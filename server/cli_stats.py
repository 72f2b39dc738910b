"""`tessera stats GROUP [--from ISO] [--to ISO]`: feature statistics of a group's offline history
(tessera.core.statistics), read from the Parquet files directly (a stopped server's data too),
or asked of a running server with `--http URL` (GET /v1/feature-groups/{group}/statistics).
`--baseline-from/--baseline-to` add drift of the window from that baseline (psi, p-value,
drifted). Without --from/--to the window is the whole history."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tessera.core.errors import error_for_http_status
from tessera.server.cli_offline import DEFAULT_OFFLINE_ROOT, client_options

_ALL_FROM = "1970-01-01T00:00:00+00:00"
_ALL_TO = "9999-12-31T00:00:00+00:00"
_TABLE_COLUMNS = ("type", "of", "count", "nulls", "distinct", "min", "max", "mean", "stddev",
                  "p50")


def _get(args: argparse.Namespace, path: str, params: dict[str, str]) -> Any:
    """GET `path` of the server at --http with the client flags' API key and TLS; its JSON, or
    the TesseraError of an error status."""
    import httpx

    from tessera.client._admin import transport_errors
    from tessera.client._security import client_security
    from tessera.client.sync import DEFAULT_HTTP_URL

    security = client_security(**client_options(args))
    url = security.http_url(args.http.rstrip("/"), DEFAULT_HTTP_URL)
    with httpx.Client(base_url=url, headers=security.http_headers,
                      verify=security.http_verify(), timeout=None) as http, \
            transport_errors(url, security):
        resp = http.get(path, params=params)
    if resp.status_code != 200:
        try:
            message = resp.json().get("error", {}).get("message", resp.text)
        except ValueError:
            message = resp.text
        raise error_for_http_status(resp.status_code, message)
    return resp.json()


def _local(args: argparse.Namespace, window: tuple[str, str],
           baseline: tuple[str, str] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from tessera.core.catalog import Catalog
    from tessera.core.drift import drift
    from tessera.core.statistics import StatisticsEngine, check_window, parse_time

    start, end = parse_time(window[0], "--from"), parse_time(window[1], "--to")
    check_window(start, end)
    with Catalog(args.offline_root, memory_limit=args.memory_limit) as catalog:
        group = catalog.group(args.group)
        stats = StatisticsEngine(catalog.root, catalog.cursor).statistics(group, start, end)
        drifts = None
        if baseline is not None:
            b = parse_time(baseline[0], "--baseline-from"), parse_time(baseline[1],
                                                                       "--baseline-to")
            con = catalog.cursor()
            try:
                drifts = drift(con, catalog.root, group, b, (start, end))
            finally:
                con.close()
    return stats, drifts


def _stats(args: argparse.Namespace) -> int:
    window = (args.start or _ALL_FROM, args.end or _ALL_TO)
    baseline = None
    if args.baseline_from or args.baseline_to:
        if not (args.baseline_from and args.baseline_to):
            print("tessera: give both --baseline-from and --baseline-to", file=sys.stderr)
            return 2
        baseline = (args.baseline_from, args.baseline_to)
    if args.http:
        from urllib.parse import quote

        path = f"/v1/feature-groups/{quote(args.group, safe='')}"
        stats = _get(args, f"{path}/statistics",
                     {"start": window[0], "end": window[1]})["features"]
        drifts = None if baseline is None else _get(args, f"{path}/drift", {
            "baseline_start": baseline[0], "baseline_end": baseline[1],
            "start": window[0], "end": window[1]})["features"]
    else:
        stats, drifts = _local(args, window, baseline)
    if args.format == "json":
        out: dict[str, Any] = {"group": args.group, "features": stats}
        if drifts is not None:
            out["drift"] = drifts
        print(json.dumps(out, indent=2))
        return 0
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the dev tools

    from tessera.client.offline import drift_frame, statistics_frame

    frame = statistics_frame(stats)
    shown = frame[[c for c in _TABLE_COLUMNS if c in frame.columns]] if len(frame) else frame
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(shown.to_string())
        if drifts is not None:
            print()
            print(drift_frame(drifts)[["test", "psi", "p_value", "drifted", "baseline_count",
                                       "count"]].to_string())
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `tessera stats`."""
    p = sub.add_parser("stats", help="feature statistics (and drift) of a group's offline history")
    p.add_argument("group")
    p.add_argument("--from", dest="start", help="window start, ISO 8601 (default: all history)")
    p.add_argument("--to", dest="end", help="window end, exclusive, ISO 8601")
    p.add_argument("--baseline-from", help="also report drift from this baseline's start")
    p.add_argument("--baseline-to", help="the baseline's end (exclusive)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--offline-root", type=Path, default=DEFAULT_OFFLINE_ROOT,
                   help="the offline store to read (a stopped or running server's)")
    p.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit (local reads)")
    p.add_argument("--http", help="ask a running server instead (its base URL)")
    p.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                   help="API key for --http (default: $TESSERA_API_KEY)")
    p.add_argument("--tls-ca", type=Path, help="CA bundle to verify the server (PEM)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM; mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client certificate's key (PEM)")
    p.set_defaults(func=_stats)

