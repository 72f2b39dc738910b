"""`GET /v1/feature-groups/{group}/statistics` and `.../drift`: feature statistics and drift
computed from the offline store (tessera.core.statistics, tessera.core.drift).

Windows are ISO 8601 times (a date alone is its midnight UTC; naive times are UTC), half-open
[start, end). A bad window is 422 naming the parameter, an unknown group 404; a group without
offline files answers counts of 0. The computation runs in a thread (DuckDB releases the GIL),
over the server's catalog connection, so the files it may read are the offline root's only;
whole partitions' summaries are cached in the process (see `StatisticsEngine`).

Each drift answer sets `tessera_feature_drift_psi{group,feature}` (server/metrics.py) to the PSI
just computed and `tessera_feature_drift_computed_timestamp_seconds` to when: with --workers N,
/metrics shows the latest of the serving processes' values once (`metrics.latest_drift`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import FastAPI, Query

from tessera.core.catalog import Catalog
from tessera.core.drift import drift
from tessera.core.errors import StorageError
from tessera.core.statistics import StatisticsEngine, check_window, parse_time
from tessera.server import metrics
from tessera.server.registry import Registry

_ISO = "an ISO 8601 time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z"


def register_stats_routes(app: FastAPI, registry: Registry, catalog: Catalog | None) -> None:
    """Add the statistics and drift routes to `app`; without a catalog (no offline store)
    they answer 503."""
    engine = None if catalog is None else StatisticsEngine(catalog.root, catalog.cursor)

    @app.get("/v1/feature-groups/{group}/statistics", tags=["offline store"])
    async def feature_statistics(
        group: str,
        start: Annotated[str, Query(description=f"window start (inclusive): {_ISO}")],
        end: Annotated[str, Query(description=f"window end (exclusive): {_ISO}")],
    ) -> dict[str, Any]:
        """Per feature, over the offline history rows whose event time is in [start, end)
        (every put, several per record id): `count` (non-null values), `nulls`, and by type
        min/max/mean/stddev (sample)/quantiles/`histogram` {edges, counts} for numbers,
        `distinct` (approximate) and `top` (value -> count) for strings, `length` stats for
        lists, `norm` stats for vectors. Needs read on the group."""
        definition = registry.describe(group)
        window = parse_time(start, "start"), parse_time(end, "end")
        check_window(*window)
        if engine is None:
            raise StorageError("this server has no offline store")
        features = await asyncio.to_thread(engine.statistics, definition, *window)
        return {"group": group, "start": window[0].isoformat(), "end": window[1].isoformat(),
                "features": features}

    @app.get("/v1/feature-groups/{group}/drift", tags=["offline store"])
    async def feature_drift(
        group: str,
        baseline_start: Annotated[str, Query(description=f"baseline start: {_ISO}")],
        baseline_end: Annotated[str, Query(description=f"baseline end (exclusive): {_ISO}")],
        start: Annotated[str, Query(description=f"window start: {_ISO}")],
        end: Annotated[str, Query(description=f"window end (exclusive): {_ISO}")],
    ) -> dict[str, Any]:
        """Per feature, the drift of the window from the baseline: `psi` (over the baseline's
        deciles, or its top 10 values + other for strings), `p_value` (two-sample KS for
        numbers, list lengths and vector norms; chi-square for strings) and `drifted` (psi
        above the group's `drift_psi_threshold`, default 0.2). Sets the gauge
        tessera_feature_drift_psi{group,feature}. Needs read on the group."""
        definition = registry.describe(group)
        baseline = (parse_time(baseline_start, "baseline_start"),
                    parse_time(baseline_end, "baseline_end"))
        window = parse_time(start, "start"), parse_time(end, "end")
        check_window(*baseline, "baseline")
        check_window(*window)
        if catalog is None:
            raise StorageError("this server has no offline store")

        def run() -> dict[str, Any]:
            con = catalog.cursor()
            try:
                return drift(con, catalog.root, definition, baseline, window)
            finally:
                con.close()

        features = await asyncio.to_thread(run)
        now = time.time()
        for name, result in features.items():
            if result["psi"] is not None:
                metrics.FEATURE_DRIFT_PSI.labels(group, name).set(result["psi"])
                metrics.FEATURE_DRIFT_COMPUTED.labels(group, name).set(now)
        return {"group": group,
                "baseline": {"start": baseline[0].isoformat(), "end": baseline[1].isoformat()},
                "window": {"start": window[0].isoformat(), "end": window[1].isoformat()},
                "features": features}
