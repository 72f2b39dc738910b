"""Feature statistics (tessera.core.statistics) against NumPy on generated offline files."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera.core import offline_layout as layout
from tessera.core.catalog import Catalog
from tessera.core.errors import InvalidRequestError
from tessera.core.statistics import (
    HISTOGRAM_BINS,
    SAMPLE_ROWS,
    StatisticsEngine,
    parse_time,
)
from tests.offline_fixtures import make_group, write_history

DAY0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
FEATURES = {
    "id": "String", "ts": "Fractional", "x": "Fractional", "n": "Integral", "s": "String",
    "c": "Fractional", "z": "Fractional", "l": "List[Integral]", "v": "Vector[3]",
}
QS = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}


def _rows(count: int, days: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    span = days * 86_400.0
    out = []
    for i in range(count):
        x = float(rng.normal(5.0, 2.0))
        out.append({
            "id": f"r{i % 50}",
            "ts": DAY0.timestamp() + float(rng.uniform(0, span)),
            "x": None if i % 9 == 0 else x,
            "n": int(rng.integers(-20, 20)),
            "s": None if i % 11 == 0 else str(rng.choice(["a", "b", "c", "d"], p=[.4, .3, .2, .1])),
            "c": 2.5,
            "z": None,
            "l": None if i % 13 == 0 else [int(v) for v in rng.integers(0, 9, rng.integers(0, 6))],
            "v": None if i % 17 == 0 else [float(v) for v in rng.normal(0, 1, 3).astype(np.float32)],
        })
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root: Path = tmp_path_factory.mktemp("offline")
    group = make_group("g", FEATURES)
    rows = _rows(1500, 3)
    written = write_history(root, group, rows, rows_per_file=300)
    catalog = Catalog(root)
    yield root, group, written, catalog
    catalog.close()


def _in(rows: list[dict[str, Any]], start: dt.datetime, end: dt.datetime
        ) -> list[dict[str, Any]]:
    lo, hi = int(start.timestamp() * 1e6), int(end.timestamp() * 1e6)
    return [r for r in rows if lo <= r[layout.EVENT_TIME] < hi and not r[layout.IS_DELETED]]


def _check_numbers(stats: dict[str, Any], values: np.ndarray, exact_quantiles: bool) -> None:
    assert stats["min"] == pytest.approx(values.min())
    assert stats["max"] == pytest.approx(values.max())
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert stats["stddev"] == pytest.approx(values.std(ddof=1), rel=1e-9)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
    assert stats["histogram"]["counts"] == counts.tolist()
    assert stats["histogram"]["edges"] == pytest.approx(edges.tolist())
    want = np.quantile(values, list(QS.values()))
    if exact_quantiles:
        assert stats["quantiles_exact"] is True
        assert list(stats["quantiles"].values()) == pytest.approx(want.tolist())


def test_statistics_over_whole_days_match_numpy(store: Any) -> None:
    root, group, rows, catalog = store
    start, end = DAY0, DAY0 + dt.timedelta(days=3)
    out = StatisticsEngine(root, catalog.cursor).statistics(group, start, end)
    rows = _in(rows, start, end)
    xs = np.array([r["x"] for r in rows if r["x"] is not None])
    assert out["x"]["count"] == len(xs) and out["x"]["nulls"] == len(rows) - len(xs)
    _check_numbers(out["x"], xs, exact_quantiles=True)
    ns = np.array([r["n"] for r in rows], dtype=float)
    _check_numbers(out["n"], ns, exact_quantiles=True)
    assert out["n"]["distinct"] == pytest.approx(len(set(ns)), rel=0.05)
    lengths = np.array([len(r["l"]) for r in rows if r["l"] is not None], dtype=float)
    assert out["l"]["count"] == len(lengths)
    _check_numbers(out["l"]["length"], lengths, exact_quantiles=True)
    norms = np.array([np.linalg.norm(np.array(r["v"], dtype=np.float32)) for r in rows
                      if r["v"] is not None])
    assert out["v"]["count"] == len(norms) and out["v"]["nulls"] == len(rows) - len(norms)
    stats = out["v"]["norm"]
    assert stats["mean"] == pytest.approx(norms.mean(), rel=1e-6)
    assert stats["stddev"] == pytest.approx(norms.std(ddof=1), rel=1e-5)
    assert sum(stats["histogram"]["counts"]) == len(norms)


def test_strings_report_top_values_and_distinct(store: Any) -> None:
    root, group, rows, catalog = store
    start, end = DAY0, DAY0 + dt.timedelta(days=3)
    out = StatisticsEngine(root, catalog.cursor).statistics(group, start, end)["s"]
    rows = _in(rows, start, end)
    values = [r["s"] for r in rows if r["s"] is not None]
    assert out["count"] == len(values) and out["nulls"] == len(rows) - len(values)
    assert out["top"] == dict(Counter(values).most_common(10))
    assert out["top_exact"] is True
    assert out["distinct"] == 4
    assert "min" not in out and "histogram" not in out
    ids = StatisticsEngine(root, catalog.cursor).statistics(group, start, end)["id"]
    assert ids["distinct"] == pytest.approx(50, abs=2)
    assert len(ids["top"]) == 10


def test_constant_column_has_zero_stddev_and_one_bin(store: Any) -> None:
    root, group, rows, catalog = store
    out = StatisticsEngine(root, catalog.cursor).statistics(
        group, DAY0, DAY0 + dt.timedelta(days=3))["c"]
    n = len(_in(rows, DAY0, DAY0 + dt.timedelta(days=3)))
    assert (out["min"], out["max"], out["mean"], out["stddev"]) == (2.5, 2.5, 2.5, 0.0)
    assert out["histogram"] == {"edges": [2.5, 2.5], "counts": [n]}
    assert out["distinct"] == 1


def test_all_null_column_has_no_values(store: Any) -> None:
    root, group, rows, catalog = store
    out = StatisticsEngine(root, catalog.cursor).statistics(
        group, DAY0, DAY0 + dt.timedelta(days=3))["z"]
    n = len(_in(rows, DAY0, DAY0 + dt.timedelta(days=3)))
    assert out["count"] == 0 and out["nulls"] == n
    assert out["min"] is None and out["max"] is None and out["stddev"] is None
    assert out["quantiles"] is None
    assert out["histogram"] == {"edges": [], "counts": []}


def test_empty_window_counts_nothing(store: Any) -> None:
    root, group, _, catalog = store
    engine = StatisticsEngine(root, catalog.cursor)
    later = DAY0 + dt.timedelta(days=30)
    out = engine.statistics(group, later, later + dt.timedelta(hours=1))
    assert out["x"]["count"] == 0 and out["x"]["nulls"] == 0 and out["x"]["min"] is None
    assert out["s"]["top"] == {} and out["l"]["length"]["max"] is None


def test_window_cutting_partitions_is_half_open_at_any_granularity(store: Any) -> None:
    root, group, rows, catalog = store
    start = DAY0 + dt.timedelta(hours=7, minutes=13, seconds=5)
    end = DAY0 + dt.timedelta(days=1, hours=20, microseconds=1)
    inside = _in(rows, start, end)
    assert 0 < len(inside) < len(rows)
    out = StatisticsEngine(root, catalog.cursor).statistics(group, start, end)
    xs = np.array([r["x"] for r in inside if r["x"] is not None])
    assert out["x"]["count"] == len(xs)
    _check_numbers(out["x"], xs, exact_quantiles=True)
    # An event exactly at `end` is outside, one exactly at `start` inside.
    edge = rows[5][layout.EVENT_TIME]
    at = dt.datetime.fromtimestamp(edge / 1e6, dt.UTC)
    assert StatisticsEngine(root, catalog.cursor).statistics(
        group, at - dt.timedelta(seconds=1), at)["n"]["count"] == len(
        _in(rows, at - dt.timedelta(seconds=1), at))
    assert StatisticsEngine(root, catalog.cursor).statistics(
        group, at, at + dt.timedelta(microseconds=1))["n"]["count"] >= 1


def test_whole_partitions_are_cached_until_their_files_change(tmp_path: Path) -> None:
    group = make_group("g", {"id": "String", "ts": "Fractional", "x": "Fractional"})
    rows = [{"id": str(i), "ts": DAY0.timestamp() + i * 100.0, "x": float(i)}
            for i in range(2000)]  # ~2.3 days
    write_history(tmp_path, group, rows, rows_per_file=300)
    with Catalog(tmp_path) as catalog:
        engine = StatisticsEngine(tmp_path, catalog.cursor)
        whole = (DAY0, DAY0 + dt.timedelta(days=3))
        first = engine.statistics(group, *whole)
        assert (engine.computed, engine.cached) == (3, 0)
        assert engine.statistics(group, *whole) == first
        assert (engine.computed, engine.cached) == (3, 3)
        # A window cutting the last day: the first two days from the cache.
        engine.statistics(group, DAY0, DAY0 + dt.timedelta(days=2, hours=1))
        assert (engine.computed, engine.cached) == (4, 5)
        # A new file in day 2 (a flush): that partition is read again, and its rows count.
        write_history(tmp_path, group, [{"id": "new", "ts": DAY0.timestamp() + 86_400 + 5,
                                         "x": 1e6}])
        again = engine.statistics(group, *whole)
        assert (engine.computed, engine.cached) == (5, 7)
        assert again["x"]["count"] == 2001 and again["x"]["max"] == 1e6
        assert again["x"]["histogram"]["counts"][-1] == 1


def test_large_partitions_give_approximate_quantiles(tmp_path: Path) -> None:
    group = make_group("g", {"id": "String", "ts": "Fractional", "x": "Fractional"})
    rng = np.random.default_rng(5)
    xs = rng.lognormal(0.0, 1.0, 3 * SAMPLE_ROWS)
    rows = [{"id": "a", "ts": DAY0.timestamp() + (i % 2) * 86_400.0 + 1, "x": float(x)}
            for i, x in enumerate(xs)]
    write_history(tmp_path, group, rows)
    with Catalog(tmp_path) as catalog:
        out = StatisticsEngine(tmp_path, catalog.cursor).statistics(
            group, DAY0, DAY0 + dt.timedelta(days=2))["x"]
    assert out["quantiles_exact"] is False
    assert out["count"] == len(xs) and out["mean"] == pytest.approx(xs.mean())
    for name, q in QS.items():  # within 2% of rank
        rank = float(np.mean(xs <= out["quantiles"][name]))
        assert abs(rank - q) < 0.02, (name, rank)


def test_delete_markers_are_not_counted(tmp_path: Path) -> None:
    group = make_group("g", {"id": "String", "ts": "Fractional", "x": "Fractional"})
    write_history(tmp_path, group, [
        {"id": "a", "ts": DAY0.timestamp() + 1, "x": 1.0},
        {"id": "a", "ts": DAY0.timestamp() + 2, layout.IS_DELETED: True},
        {"id": "b", "ts": DAY0.timestamp() + 3, "x": None},
    ])
    with Catalog(tmp_path) as catalog:
        out = StatisticsEngine(tmp_path, catalog.cursor).statistics(
            group, DAY0, DAY0 + dt.timedelta(days=1))["x"]
    assert (out["count"], out["nulls"]) == (1, 1)


def test_a_feature_added_later_reads_as_null_in_older_files(tmp_path: Path) -> None:
    old = make_group("g", {"id": "String", "ts": "Fractional"})
    write_history(tmp_path, old, [{"id": "a", "ts": DAY0.timestamp() + 1}])
    new = make_group("g", {"id": "String", "ts": "Fractional", "y": "Integral"}, version=2)
    write_history(tmp_path, new, [{"id": "a", "ts": DAY0.timestamp() + 86_400 + 1, "y": 4}])
    with Catalog(tmp_path) as catalog:
        out = StatisticsEngine(tmp_path, catalog.cursor).statistics(
            new, DAY0, DAY0 + dt.timedelta(days=2))["y"]
    assert (out["count"], out["nulls"], out["min"]) == (1, 1, 4.0)


def test_bad_windows_are_refused(store: Any) -> None:
    root, group, _, catalog = store
    engine = StatisticsEngine(root, catalog.cursor)
    with pytest.raises(InvalidRequestError, match="must be before end"):
        engine.statistics(group, DAY0, DAY0)
    with pytest.raises(InvalidRequestError, match="not an ISO 8601 time"):
        parse_time("yesterday", "start")
    assert parse_time("2026-03-01", "start") == DAY0
    assert parse_time("2026-03-01T01:00:00+01:00", "start") == DAY0


def test_offline_store_statistics_and_drift_as_dataframes(store: Any) -> None:
    from tessera.client.offline import OfflineStore

    root, group, rows, catalog = store
    start, end = DAY0, DAY0 + dt.timedelta(days=3)
    want = StatisticsEngine(root, catalog.cursor).statistics(group, start, end)
    with OfflineStore(root) as off:
        frame = off.statistics("g", start, "2026-03-04")
        drifted = off.drift("g", baseline=(DAY0, DAY0 + dt.timedelta(days=1)),
                            window=("2026-03-02", "2026-03-03"))
        with pytest.raises(InvalidRequestError, match="baseline"):
            off.drift("g", baseline=("2026-03-02", "2026-03-01"), window=(start, end))
    assert list(frame.index) == list(FEATURES)
    assert frame.loc["x", "count"] == want["x"]["count"]
    assert frame.loc["x", "p50"] == pytest.approx(want["x"]["quantiles"]["p50"])
    assert frame.loc["l", "of"] == "length" and frame.loc["v", "of"] == "norm"
    assert frame.loc["s", "top"] == want["s"]["top"]
    assert frame.loc["l", "histogram_counts"] == want["l"]["length"]["histogram"]["counts"]
    assert set(drifted.columns) >= {"psi", "p_value", "drifted", "threshold", "test"}
    # One distribution throughout, but for the event time, which moves with the window.
    assert not drifted["drifted"].drop("ts").any() and drifted.loc["ts", "drifted"]


def test_kept_summaries_are_bounded_by_their_samples_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tessera.core import statistics

    group = make_group("g", {"id": "String", "ts": "Fractional", "x": "Fractional"})
    write_history(tmp_path, group, [{"id": str(i), "ts": DAY0.timestamp() + i * 3600.0,
                                     "x": float(i)} for i in range(72)])  # 3 days
    monkeypatch.setattr(statistics, "SUMMARY_CACHE_BYTES", 24 * 8 + 1)  # one day's sample
    with Catalog(tmp_path) as catalog:
        engine = StatisticsEngine(tmp_path, catalog.cursor)
        whole = (DAY0, DAY0 + dt.timedelta(days=3))
        engine.statistics(group, *whole)
        assert (engine.computed, engine.cached) == (3, 0)
        # Only the last day read was kept: it comes from the cache, the first day does not.
        engine.statistics(group, DAY0 + dt.timedelta(days=2), whole[1])
        assert (engine.computed, engine.cached) == (3, 1)
        engine.statistics(group, DAY0, DAY0 + dt.timedelta(days=1))
        assert (engine.computed, engine.cached) == (4, 1)
