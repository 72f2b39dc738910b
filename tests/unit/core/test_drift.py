"""Drift (tessera.core.drift) against SciPy and NumPy references, and over offline files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from tessera.core.catalog import Catalog
from tessera.core.drift import (
    PSI_EPSILON,
    chi2_homogeneity,
    drift,
    gammaincc,
    ks_2samp,
    psi_numbers,
)
from tessera.core.errors import InvalidRequestError
from tests.offline_fixtures import make_group, write_history

DAY0 = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("n", "m"), [(5, 7), (40, 40), (60, 90), (300, 200), (2500, 3000),
                                      (12_000, 11_000)])
def test_ks_matches_scipy(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    for shift in (0.0, 0.05, 0.2, 1.0):
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
        d, p = ks_2samp(a, b)
        ref = stats.ks_2samp(a, b)
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        # Exact below 10,000 values per sample, asymptotic above (scipy: kstwo; here
        # Stephens' corrected Kolmogorov distribution).
        assert p == pytest.approx(ref.pvalue, abs=1e-9 if max(n, m) <= 10_000 else 5e-3)


def test_ks_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 300).astype(float), rng.integers(0, 6, 200).astype(float)
    d, p = ks_2samp(a, b)
    ref = stats.ks_2samp(a, b)
    assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, abs=1e-9)


def test_chi2_matches_scipy_contingency() -> None:
    base = np.array([500.0, 300.0, 150.0, 50.0])
    for window in (np.array([480.0, 310.0, 160.0, 45.0]), np.array([100.0, 300.0, 400.0, 0.0])):
        stat, p = chi2_homogeneity(base, window)
        table = np.vstack([base, window])
        table = table[:, table.sum(axis=0) > 0]
        ref = stats.chi2_contingency(table, correction=False)
        assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, abs=1e-12)


@pytest.mark.parametrize(("a", "x"), [(0.5, 0.1), (1.5, 3.0), (10.0, 2.0), (3.5, 40.0),
                                      (100.0, 120.0)])
def test_gammaincc_matches_scipy(a: float, x: float) -> None:
    assert gammaincc(a, x) == pytest.approx(special.gammaincc(a, x), rel=1e-10, abs=1e-300)


def test_psi_over_baseline_deciles() -> None:
    rng = np.random.default_rng(2)
    base, window = rng.normal(0, 1, 5000), rng.normal(0.5, 1, 4000)
    cuts = np.quantile(base, np.arange(1, 10) / 10)
    b = np.histogram(base, np.concatenate([[-np.inf], cuts, [np.inf]]))[0] / len(base)
    w = np.histogram(window, np.concatenate([[-np.inf], cuts, [np.inf]]))[0] / len(window)
    want = np.sum((w - b) * np.log(w / b))
    assert psi_numbers(base, window) == pytest.approx(want, rel=1e-9)
    assert psi_numbers(base, base) == 0.0
    # A constant baseline: two bins; a window all above it puts everything in the upper one.
    got = psi_numbers(np.full(100, 3.0), np.full(50, 7.0))
    assert got == pytest.approx(0.0)
    empty_bin = psi_numbers(np.full(100, 3.0), np.full(50, 1.0))
    # Shares (0, 1) and (1, 0): an empty bin's share counts as PSI_EPSILON.
    assert empty_bin == pytest.approx(2 * (1 - PSI_EPSILON) * np.log(1 / PSI_EPSILON))


def _write(root: Path, threshold: float | None = None) -> object:
    group = make_group("g", {"id": "String", "ts": "Fractional", "x": "Fractional",
                             "k": "String", "stable": "Integral", "l": "List[Integral]"})
    if threshold is not None:
        group = group.model_copy(update={"definition": group.definition.model_copy(
            update={"drift_psi_threshold": threshold})})
    rng = np.random.default_rng(4)
    rows = []
    for day, (mu, probs) in enumerate([(0.0, [.5, .3, .2]), (1.0, [.2, .3, .5])]):
        for i in range(600):
            rows.append({"id": str(i), "ts": (DAY0 + dt.timedelta(days=day)).timestamp() + i,
                         "x": float(rng.normal(mu, 1)),
                         "k": str(rng.choice(["a", "b", "c"], p=probs)),
                         "stable": int(rng.integers(0, 10)),
                         "l": [1] * int(rng.integers(0, 4))})
    write_history(root, group, rows)
    return group


def test_drift_between_two_days_of_offline_history(tmp_path: Path) -> None:
    group = _write(tmp_path)
    day1 = (DAY0, DAY0 + dt.timedelta(days=1))
    day2 = (DAY0 + dt.timedelta(days=1), DAY0 + dt.timedelta(days=2))
    with Catalog(tmp_path) as catalog:
        con = catalog.cursor()
        out = drift(con, catalog.root, group, day1, day2)  # type: ignore[arg-type]
        same = drift(con, catalog.root, group, day1, day1)  # type: ignore[arg-type]
        later = (DAY0 + dt.timedelta(days=9), DAY0 + dt.timedelta(days=10))
        empty = drift(con, catalog.root, group, day1, later)  # type: ignore[arg-type]
    assert out["x"]["drifted"] and out["x"]["psi"] > 0.2 and out["x"]["p_value"] < 1e-6
    assert out["k"]["drifted"] and out["k"]["test"] == "chi2" and out["k"]["p_value"] < 1e-6
    assert not out["stable"]["drifted"] and out["stable"]["p_value"] > 0.01
    assert not out["l"]["drifted"] and out["l"]["count"] == 600
    assert all(f["psi"] == pytest.approx(0.0) and not f["drifted"] for f in same.values())
    assert empty["x"] == {**empty["x"], "psi": None, "p_value": None, "drifted": False}


def test_group_threshold_overrides_the_default(tmp_path: Path) -> None:
    group = _write(tmp_path, threshold=50.0)
    with Catalog(tmp_path) as catalog:
        out = drift(catalog.cursor(), catalog.root, group,  # type: ignore[arg-type]
                    (DAY0, DAY0 + dt.timedelta(days=1)),
                    (DAY0 + dt.timedelta(days=1), DAY0 + dt.timedelta(days=2)))
    assert out["x"]["threshold"] == 50.0 and not out["x"]["drifted"]


def test_bad_windows_are_refused(tmp_path: Path) -> None:
    group = _write(tmp_path)
    with Catalog(tmp_path) as catalog, pytest.raises(InvalidRequestError, match="baseline"):
        drift(catalog.cursor(), catalog.root, group,  # type: ignore[arg-type]
              (DAY0, DAY0), (DAY0, DAY0 + dt.timedelta(days=1)))
