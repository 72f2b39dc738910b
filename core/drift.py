"""Drift of a feature group's features between a baseline window and a window (offline store).

Per feature, over the same rows statistics count (`tessera.core.statistics`: every put whose
event time lies in the half-open window):

- numbers (and list lengths, vector norms): PSI over the baseline's decile bins (the baseline's
  quantiles at 10%, ..., 90%, duplicates merged: a constant baseline gives two bins, below its
  value and from it up), and the two-sample Kolmogorov-Smirnov test. The KS statistic is exact:
  computed from the two windows' values themselves (each window's values, or a uniform
  reservoir sample of `MAX_SAMPLE` of them when it has more). Its p-value is scipy.stats.
  ks_2samp's default: exact up to `KS_EXACT_N` values per sample (the share of lattice paths
  leaving the band, counted row by row in NumPy, `ks_exact_sf`; equal to scipy's within 1e-9 in
  the tests), asymptotic above: the Kolmogorov distribution at
  (sqrt(en) + 0.12 + 0.11 / sqrt(en)) * D, en = n m / (n + m) (Stephens' correction), within
  0.005 of scipy's (which uses the one-sample exact distribution at round(en)) in the tests.
  Far in the tail (asymptotic p < 1e-9) the asymptotic value is answered: both are ~0 there
  and the exact count's cells underflow.
- strings: categories are the baseline's `TOP_CATEGORIES` most frequent values plus "other"
  (every other value); PSI over them, and Pearson's chi-square test of homogeneity on the
  2 x categories table (categories empty in both windows left out; no continuity correction),
  p-value from the chi-square distribution (regularized upper incomplete gamma, in NumPy).

PSI = sum over bins of (w - b) * ln(w / b), b and w the baseline's and the window's share of
values per bin; an empty bin's share is taken as `PSI_EPSILON` (1e-4) so PSI stays finite.
`drifted` = PSI > the threshold (the group's `drift_psi_threshold`, else 0.2). A feature with no
value in either window has PSI and p-value null and is not drifted.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np

from tessera.core.catalog import duckdb_errors, quote_ident
from tessera.core.schema import FeatureGroup
from tessera.core.statistics import (
    STRING,
    check_window,
    kind_of,
    list_partitions,
    source_sql,
    value_sql,
    window_sql,
)

DEFAULT_PSI_THRESHOLD = 0.2
PSI_EPSILON = 1e-4
PSI_BINS = 10
TOP_CATEGORIES = 10
MAX_SAMPLE = 1_000_000
KS_EXACT_N = 10_000
OTHER = "other"


# --- the tests, on NumPy arrays -----------------------------------------------------------------


def psi_from_counts(baseline: np.ndarray, window: np.ndarray) -> float:
    b = np.maximum(baseline / max(baseline.sum(), 1), PSI_EPSILON)
    w = np.maximum(window / max(window.sum(), 1), PSI_EPSILON)
    return float(np.sum((w - b) * np.log(w / b)))


def decile_cuts(baseline: np.ndarray) -> np.ndarray:
    """The interior bin edges of the baseline's decile bins (unique)."""
    return np.unique(np.quantile(baseline, np.arange(1, PSI_BINS) / PSI_BINS))


def psi_numbers(baseline: np.ndarray, window: np.ndarray) -> float:
    cuts = decile_cuts(baseline)
    bins = len(cuts) + 1
    b = np.bincount(np.searchsorted(cuts, baseline, side="right"), minlength=bins)
    w = np.bincount(np.searchsorted(cuts, window, side="right"), minlength=bins)
    return psi_from_counts(b.astype(float), w.astype(float))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """sup |F_a - F_b| over every value of either sample (ties handled as scipy does)."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    fa = np.searchsorted(a, both, side="right") / len(a)
    fb = np.searchsorted(b, both, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution."""
    if x <= 0:
        return 1.0
    if x < 1.18:  # the theta-function form converges fast here
        y = math.exp(-math.pi**2 / (8 * x * x))
        cdf = math.sqrt(2 * math.pi) / x * sum(y ** ((2 * k - 1) ** 2) for k in range(1, 8))
        return min(1.0, max(0.0, 1.0 - cdf))
    total = math.fsum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def ks_exact_sf(d: float, n: int, m: int) -> float:
    """P(D >= d) for samples of n and m values (no ties), exactly: the share of the
    C(n + m, n) lattice paths from (0, 0) to (n, m) that leave |i/n - j/m| < d. Row by row, the
    inside cells of a row are one interval, so a row's path counts are a cumulative sum of the
    previous row's (kept scaled, the scale in logarithms): O(n m) in NumPy."""
    if n > m:
        n, m = m, n
    h = round(d * n * m)  # |i/n - j/m| < d  <=>  |i m - j n| < h, exactly in integers
    if h <= 0:
        return 1.0
    j = np.arange(m + 1)
    # i = 0: the inside cells are a prefix. Long double: the cells on the diagonal, the ones
    # that reach (n, m), are far smaller than a row's largest and underflow in float64.
    row = np.where(j * n < h, 1.0, 0.0).astype(np.longdouble)
    log_scale = 0.0
    for i in range(1, n + 1):
        inside = np.abs(i * m - j * n) < h
        if not inside.any():
            return 1.0
        lo, hi = int(np.argmax(inside)), int(len(inside) - np.argmax(inside[::-1]) - 1)
        new = np.zeros(m + 1, dtype=np.longdouble)
        new[lo:hi + 1] = np.cumsum(row[lo:hi + 1])
        top = new.max()
        if top <= 0:
            return 1.0
        row = new / top
        log_scale += math.log(float(top))
    total = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    last = float(np.log(row[m])) if row[m] > 0 else -math.inf
    inside_share = math.exp(min(0.0, last + log_scale - total))
    return min(1.0, max(0.0, 1.0 - inside_share))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(D, p-value) of the two-sided two-sample KS test: the exact p-value up to `KS_EXACT_N`
    values per sample (as scipy.stats.ks_2samp's default), the asymptotic one above."""
    d = ks_statistic(a, b)
    en = len(a) * len(b) / (len(a) + len(b))
    root = math.sqrt(en)
    asymptotic = kolmogorov_sf((root + 0.12 + 0.11 / root) * d)
    # Far in the tail the exact count's cells that matter underflow even in long double (the
    # row's largest counts are ~1e300 times theirs); both p-values are ~0 there.
    if max(len(a), len(b)) <= KS_EXACT_N and asymptotic > 1e-9:
        return d, ks_exact_sf(d, len(a), len(b))
    return d, asymptotic


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) (series below a + 1, continued
    fraction above: Numerical Recipes' gser / gcf)."""
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_homogeneity(baseline: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of Pearson's chi-square test on the 2 x k table of counts."""
    table = np.vstack([baseline, window]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table.sum(axis=1).min() == 0:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return stat, gammaincc(dof / 2, stat / 2)


def numeric_drift(baseline: np.ndarray, window: np.ndarray) -> dict[str, Any]:
    if len(baseline) == 0 or len(window) == 0:
        return {"psi": None, "p_value": None, "ks_statistic": None}
    d, p = ks_2samp(baseline, window)
    return {"psi": psi_numbers(baseline, window), "p_value": p, "ks_statistic": d}


def category_drift(baseline: dict[str, int], window: dict[str, int]) -> dict[str, Any]:
    if not baseline or not window:
        return {"psi": None, "p_value": None, "chi2_statistic": None}
    cats = [v for v, _ in sorted(baseline.items(), key=lambda kv: (-kv[1], kv[0]))]
    cats = cats[:TOP_CATEGORIES]
    b = np.array([baseline.get(c, 0) for c in cats]
                 + [sum(baseline.values()) - sum(baseline.get(c, 0) for c in cats)], dtype=float)
    w = np.array([window.get(c, 0) for c in cats]
                 + [sum(window.values()) - sum(window.get(c, 0) for c in cats)], dtype=float)
    stat, p = chi2_homogeneity(b, w)
    return {"psi": psi_from_counts(b, w), "p_value": p, "chi2_statistic": stat}


# --- over the offline store ---------------------------------------------------------------------


def _window_source(root: str, group: str, start: dt.datetime, end: dt.datetime) -> str | None:
    paths = [p for part in list_partitions(root, group) if part.overlaps(start, end)
             for p in part.paths]
    return source_sql(paths, window_sql(start, end)) if paths else None


def _values(con: duckdb.DuckDBPyConnection, src: str | None, name: str, kind: str,
            present: set[str]) -> np.ndarray:
    if src is None or name not in present:
        return np.empty(0)
    v = value_sql(kind, name)
    with duckdb_errors("drift"):
        rel = con.sql(f"SELECT {v} AS v FROM {src} WHERE {v} IS NOT NULL")
        n = rel.aggregate("count(*)").fetchall()[0]
        if n is not None and int(n[0]) > MAX_SAMPLE:
            rel = con.sql(f"SELECT v FROM ({rel.sql_query()}) "
                          f"USING SAMPLE reservoir({MAX_SAMPLE} ROWS) REPEATABLE (42)")
        values: np.ndarray = np.asarray(rel.fetchnumpy()["v"], dtype=np.float64)
        return values


def _counts(con: duckdb.DuckDBPyConnection, src: str | None, name: str, present: set[str]
            ) -> dict[str, int]:
    if src is None or name not in present:
        return {}
    col = quote_ident(name)
    with duckdb_errors("drift"):
        rows = con.sql(f"SELECT {col}, count(*) FROM {src} WHERE {col} IS NOT NULL "
                       f"GROUP BY {col}").fetchall()
    return {str(v): int(c) for v, c in rows}


def _columns(con: duckdb.DuckDBPyConnection, src: str | None) -> set[str]:
    if src is None:
        return set()
    with duckdb_errors("drift"):
        return set(con.sql(f"SELECT * FROM {src} LIMIT 0").columns)


def drift(con: duckdb.DuckDBPyConnection, root: str, group: FeatureGroup,
          baseline: Sequence[dt.datetime], window: Sequence[dt.datetime],
          threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """`{feature: {"psi", "p_value", "drifted", ...}}` between two windows (module docstring);
    `con` may read the offline root."""
    check_window(baseline[0], baseline[1], "baseline")
    check_window(window[0], window[1], "window")
    limit = threshold if threshold is not None else (
        group.definition.drift_psi_threshold or DEFAULT_PSI_THRESHOLD)
    src_b = _window_source(root, group.name, baseline[0], baseline[1])
    src_w = _window_source(root, group.name, window[0], window[1])
    cols_b, cols_w = _columns(con, src_b), _columns(con, src_w)
    out: dict[str, dict[str, Any]] = {}
    for fd in group.definition.feature_definitions:
        name, kind = fd.feature_name, kind_of(fd.type())
        if kind == STRING:
            cb, cw = _counts(con, src_b, name, cols_b), _counts(con, src_w, name, cols_w)
            result = category_drift(cb, cw)
            result.update(test="chi2", baseline_count=sum(cb.values()), count=sum(cw.values()))
        else:
            vb = _values(con, src_b, name, kind, cols_b)
            vw = _values(con, src_w, name, kind, cols_w)
            result = numeric_drift(vb, vw)
            result.update(test="ks", baseline_count=len(vb), count=len(vw))
        psi = result["psi"]
        result["drifted"] = psi is not None and psi > limit
        result["threshold"] = limit
        out[name] = result
    return out
