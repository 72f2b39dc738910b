"""Feature statistics of the offline store: per feature, over a half-open event-time window.

What is counted: every history row whose event time lies in [start, end) and that is not a
delete marker, i.e. every put written for that window (a record id written three times counts
three times). That is the population whose shift drift detection watches: what producers wrote,
not the latest value per id. `count` is the number of non-null values, `nulls` the rows whose
value is null (a feature added after a row was written reads as null in it).

Per type:
- numbers (Integral, Fractional): count, nulls, distinct, min, max, mean, stddev (sample,
  n - 1; null below 2 values), quantiles p01 p05 p25 p50 p75 p95 p99 and a histogram of
  `HISTOGRAM_BINS` equal bins over [min, max] (bin i is [e_i, e_i+1), the last one closed; a
  constant column has one bin [v, v]). NaN counts as a value of a Fractional but is left out of
  min/max/mean/stddev/quantiles/histogram, which see finite and infinite values... (see `_num`).
- strings: count, nulls, distinct, `top` (the ten most frequent values -> count).
- lists and sets: count, nulls and length stats (min/max/mean/stddev of the number of elements)
  with a histogram over lengths.
- vectors: count, nulls and the L2 norm's min/max/mean/stddev/quantiles and histogram.

Caching (the `StatisticsEngine`): the window's rows come partition by partition (`event_date`
folders). A partition wholly inside the window is summarised once and the summary kept, keyed by
its files (names, sizes, modification times): a flush or a compaction changes them and the
summary is recomputed. A partition the window cuts is read with the event-time filter and not
kept. Summaries merge exactly for count, nulls, min, max, mean and the sum of squared deviations
(Chan et al.'s pairwise update). What does not merge exactly:
- quantiles: each summary keeps a sample of its partition's values, taken in the summary pass:
  the rows whose commit sequence hashes below a threshold (a Bernoulli sample of ~`SAMPLE_ROWS`
  rows of the partition's files, the same rows at every call); a partition whose files hold no
  more rows keeps them all. When every
  partition of the window kept all its rows the quantiles are exact (linear interpolation, as
  NumPy's default); otherwise they come from the samples, each value weighted by its
  partition's values per sampled value: approximate, a rank error of about 1/sqrt(SAMPLE_ROWS)
  (~1%) (`quantiles_exact` says which). An exact quantile grid per partition was measured at
  ~1.7 s of CPU per million values (DuckDB's list `quantile_cont` over 1001 ranks): too slow;
- distinct: DuckDB's HyperLogLog (`approx_count_distinct`, ~2% error) over the whole window at
  each call, not cached: DuckDB does not expose its sketch to merge, and one pass costs ~6 ns
  per value (measured), against ~140 ns for an exact mergeable k-minimum-values sketch;
- top strings: each summary keeps its partition's `TOP_KEPT` most frequent values; a merged count
  is exact when no partition had more distinct values than that (`top_exact`);
- the histogram needs the window's min and max first. For a window of whole partitions the
  Parquet footers' statistics give a number's min and max before any row is read, and the
  summary pass counts the histogram too; where they differ from the min and max that pass
  finds (a column without statistics, infinities), and for lengths and norms, the counts are
  a second pass. Counts are exact either way and kept per partition and edges: the same window
  asked again reads nothing.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from tessera.core import offline_layout as layout
from tessera.core.catalog import duckdb_errors, quote_ident, quote_literal
from tessera.core.errors import InvalidRequestError
from tessera.core.schema import CollectionType, FeatureGroup, FeatureType, ScalarType

HISTOGRAM_BINS = 20
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95,
             "p99": 0.99}
SAMPLE_ROWS = 10_000
TOP_SHOWN = 10
TOP_KEPT = 1000
_CACHE_ENTRIES = 4096
#: What the kept summaries' quantile samples may hold in all (each partition keeps up to
#: SAMPLE_ROWS values per numeric feature: 80 KB): the least recently used go beyond it.
SUMMARY_CACHE_BYTES = 256 * 1024 * 1024

NUMBER, STRING, LIST, VECTOR = "number", "string", "list", "vector"


def kind_of(ftype: FeatureType) -> str:
    """How a feature is summarised: its numbers, its strings, its lists' lengths, its norms."""
    if ftype.collection is CollectionType.VECTOR:
        return VECTOR
    if ftype.collection is not None:
        return LIST
    return STRING if ftype.scalar is ScalarType.STRING else NUMBER


def value_sql(kind: str, column: str) -> str:
    """The SQL of the number a feature's statistics describe (None for strings)."""
    col = quote_ident(column)
    if kind == NUMBER:
        return f"(CASE WHEN isfinite(CAST({col} AS DOUBLE)) THEN CAST({col} AS DOUBLE) END)"
    if kind == LIST:
        return f"CAST(len({col}) AS DOUBLE)"
    if kind == VECTOR:
        # Not list_dot_product: it raises on a null vector instead of answering null.
        return f"sqrt(list_sum(list_transform(CAST({col} AS DOUBLE[]), lambda x: x * x)))"
    raise ValueError(kind)


def parse_time(text: str, what: str) -> dt.datetime:
    """An ISO 8601 time as an aware UTC datetime (naive means UTC); InvalidRequestError names
    `what` and the value otherwise."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            f"{what}: '{text}' is not an ISO 8601 time (e.g. 2026-01-31 or "
            "2026-01-31T12:00:00Z)") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def check_window(start: dt.datetime, end: dt.datetime, what: str = "window") -> None:
    if start >= end:
        raise InvalidRequestError(
            f"{what}: start {start.isoformat()} must be before end {end.isoformat()} "
            "(the window is [start, end))")


# --- summaries ----------------------------------------------------------------------------------


@dataclass
class Summary:
    """One feature's mergeable statistics over some rows (see the module docstring)."""

    kind: str
    count: int = 0
    nulls: int = 0
    n: int = 0  # values the moments describe (finite numbers, lengths, norms)
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    min: float | None = None
    max: float | None = None
    samples: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (n, sampled values)
    complete: bool = True  # the samples hold every value
    top: Counter[str] = field(default_factory=Counter)
    top_complete: bool = True

    def merge(self, other: Summary) -> None:
        self.count += other.count
        self.nulls += other.nulls
        if other.n:
            n = self.n + other.n
            delta = other.mean - self.mean
            self.mean += delta * other.n / n
            self.m2 += other.m2 + delta * delta * self.n * other.n / n
            o_min = other.min if other.min is not None else math.inf
            o_max = other.max if other.max is not None else -math.inf
            self.min = o_min if self.min is None else min(self.min, o_min)
            self.max = o_max if self.max is None else max(self.max, o_max)
            self.n = n
            self.samples.extend(other.samples)
            self.complete = self.complete and other.complete
        self.top.update(other.top)
        self.top_complete = self.top_complete and other.top_complete


def merged_quantiles(samples: Sequence[tuple[int, np.ndarray]], complete: bool,
                     probs: np.ndarray) -> np.ndarray:
    """Quantiles of the union of partitions: exact (NumPy's linear interpolation) when the
    samples hold every value, else from the samples weighted by values per sampled value."""
    values = np.concatenate([v for _, v in samples])
    if complete:
        exact: np.ndarray = np.quantile(values, probs)
        return exact
    weights = np.concatenate([np.full(len(v), n / len(v)) for n, v in samples if len(v)])
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    cum = np.cumsum(weights)
    ranks = (cum - weights / 2) / cum[-1]  # mid-point ranks
    approx: np.ndarray = np.interp(probs, ranks, values)
    return approx


def histogram_edges(lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> list[float]:
    if lo == hi:
        return [lo, hi]
    return [float(e) for e in np.linspace(lo, hi, bins + 1)]


def bucket_sql(expr: str, lo: float, hi: float, bins: int) -> str:
    """The bin of `expr` among `bins` equal bins over [lo, hi], the last closed."""
    if lo == hi:
        return "0"
    scale = repr(bins / (hi - lo))
    return f"least(CAST(floor(({expr} - {lo!r}) * {scale}) AS BIGINT), {bins - 1})"


def render(summary: Summary, distinct: int | None, histogram: list[int] | None,
           edges: list[float] | None) -> dict[str, Any]:
    """The JSON of one feature's statistics."""
    out: dict[str, Any] = {"type": summary.kind, "count": summary.count, "nulls": summary.nulls}
    if summary.kind == STRING:
        top = sorted(summary.top.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SHOWN]
        out.update(distinct=distinct or 0, top=dict(top), top_exact=summary.top_complete)
        return out
    n = summary.n
    stats: dict[str, Any] = {
        "min": summary.min if n else None,
        "max": summary.max if n else None,
        "mean": summary.mean if n else None,
        "stddev": math.sqrt(summary.m2 / (n - 1)) if n > 1 else None,
        "quantiles": None,
    }
    if n:
        qs = merged_quantiles(summary.samples, summary.complete,
                              np.array(list(QUANTILES.values())))
        stats["quantiles"] = {k: float(v) for k, v in zip(QUANTILES, qs, strict=True)}
        stats["quantiles_exact"] = summary.complete
    stats["histogram"] = {"edges": edges or [], "counts": histogram or []}
    if summary.kind == NUMBER:
        out.update(stats, distinct=distinct or 0)
    elif summary.kind == LIST:
        out["length"] = stats
    else:
        out["norm"] = stats
    return out


# --- partitions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """One `event_date` folder of a group: its day and its files (the cache key)."""

    day: dt.date
    files: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns)

    @property
    def paths(self) -> list[str]:
        return [f[0] for f in self.files]

    def within(self, start: dt.datetime, end: dt.datetime) -> bool:
        first = dt.datetime(self.day.year, self.day.month, self.day.day, tzinfo=dt.UTC)
        return start <= first and first + dt.timedelta(days=1) <= end

    def overlaps(self, start: dt.datetime, end: dt.datetime) -> bool:
        first = dt.datetime(self.day.year, self.day.month, self.day.day, tzinfo=dt.UTC)
        return first < end and start < first + dt.timedelta(days=1)


def list_partitions(root: str | Path, group: str) -> list[Partition]:
    """The group's partitions with their Parquet files (temporaries, dot files, left out)."""
    folder = layout.group_dir(Path(root), group)
    out: list[Partition] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    prefix = f"{layout.EVENT_DATE}="
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            day = dt.date.fromisoformat(entry.name[len(prefix):])
        except ValueError:
            continue
        files = []
        for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if f.name.endswith(".parquet") and not f.name.startswith(".") \
                    and f.is_file(follow_symlinks=False):
                st = f.stat(follow_symlinks=False)
                files.append((f.path, st.st_size, st.st_mtime_ns))
        if files:
            out.append(Partition(day, tuple(files)))
    return out


# --- the engine ---------------------------------------------------------------------------------


class StatisticsEngine:
    """Computes statistics over a group's offline files with DuckDB, caching per partition.

    `connect` returns a DuckDB connection that may read the offline root (the catalog's
    sandboxed `cursor` in the server); each call takes its own, so calls may run in threads."""

    def __init__(self, root: str | Path, connect: Callable[[], duckdb.DuckDBPyConnection]
                 ) -> None:
        self.root = str(root)
        self._connect = connect
        self._lock = threading.Lock()
        self._summaries: OrderedDict[tuple[Any, ...], dict[str, Summary]] = OrderedDict()
        self._histograms: OrderedDict[tuple[Any, ...], dict[str, list[int]]] = OrderedDict()
        self._columns: OrderedDict[tuple[Any, ...], set[str]] = OrderedDict()
        self._summary_bytes = 0
        #: Partitions summarised (read) and taken from the cache since start: benchmarks, tests.
        self.computed = 0
        self.cached = 0

    def statistics(self, group: FeatureGroup, start: dt.datetime, end: dt.datetime
                   ) -> dict[str, dict[str, Any]]:
        """`{feature: statistics}` over the rows of [start, end) (module docstring)."""
        check_window(start, end)
        features = {fd.feature_name: kind_of(fd.type())
                    for fd in group.definition.feature_definitions}
        parts = [p for p in list_partitions(self.root, group.name) if p.overlaps(start, end)]
        totals = {name: Summary(kind) for name, kind in features.items()}
        if not parts:
            return {name: render(t, 0, None, None) for name, t in totals.items()}
        window = window_sql(start, end)
        con = self._connect()
        try:
            pieces = [(p, None if p.within(start, end) else window) for p in parts]
            # Whole partitions only: the files' footers give each number's min and max before
            # any row is read, so the summary pass counts its histogram too (one pass instead
            # of two); used only where they equal the min and max the pass then finds.
            guess = {} if any(w for _, w in pieces) else footer_ranges(
                con, [p for part in parts for p in part.paths],
                [n for n, k in features.items() if k == NUMBER])
            for part, where in pieces:
                for name, s in self._summary(con, part, features, where, guess).items():
                    totals[name].merge(s)
            distinct = self._distinct(con, parts, features, window)
            ranges = {name: (float(t.min), float(t.max)) for name, t in totals.items()
                      if t.kind != STRING and t.n and t.min is not None and t.max is not None}
            counts = self._histograms_of(con, pieces, features, ranges)
            return {name: render(t, distinct.get(name),
                                 counts.get(name), histogram_edges(*ranges[name])
                                 if name in ranges else None)
                    for name, t in totals.items()}
        finally:
            con.close()

    # --- caches ------------------------------------------------------------------------------

    def _cached(self, cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...]) -> Any:
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
            return hit

    def _keep(self, cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...],
              value: Any) -> None:
        with self._lock:
            if cache is self._summaries:
                old = cache.pop(key, None)
                self._summary_bytes += _sample_bytes(value) - (
                    0 if old is None else _sample_bytes(old))
            cache[key] = value
            while len(cache) > _CACHE_ENTRIES or (
                    cache is self._summaries and self._summary_bytes > SUMMARY_CACHE_BYTES
                    and len(cache) > 1):
                _, dropped = cache.popitem(last=False)
                if cache is self._summaries:
                    self._summary_bytes -= _sample_bytes(dropped)

    def columns(self, con: duckdb.DuckDBPyConnection, part: Partition) -> set[str]:
        key = part.files
        hit = self._cached(self._columns, key)
        if hit is None:
            hit = file_columns(con, part.paths)
            self._keep(self._columns, key, hit)
        return set(hit)

    def _summary(self, con: duckdb.DuckDBPyConnection, part: Partition, features: dict[str, str],
                 where: str | None, guess: dict[str, tuple[float, float]]
                 ) -> dict[str, Summary]:
        key = (part.files, tuple(sorted(features.items())))
        if where is None:
            hit = self._cached(self._summaries, key)
            if hit is not None:
                self.cached += 1
                return _copy(hit)
        spec = [(n, features[n], lo, hi) for n, (lo, hi) in guess.items()]
        result, hists = summarise(con, part.paths, features, where, self.columns(con, part),
                                  spec)
        self.computed += 1
        if where is None:
            self._keep(self._summaries, key, _copy(result))
            for (name, kind, lo, hi), counts in zip(spec, hists, strict=True):
                self._keep(self._histograms, (part.files, name, kind, lo, hi), counts)
        return result

    def _histograms_of(self, con: duckdb.DuckDBPyConnection,
                       pieces: Iterable[tuple[Partition, str | None]], features: dict[str, str],
                       ranges: dict[str, tuple[float, float]]) -> dict[str, list[int]]:
        spec = sorted((name, features[name], lo, hi) for name, (lo, hi) in ranges.items())
        totals = {name: np.zeros(_bins(lo, hi), dtype=np.int64)
                  for name, (lo, hi) in ranges.items()}
        for part, where in pieces:
            missing = spec
            if where is None:  # a whole partition: each feature's counts may be kept already
                missing = []
                for item in spec:
                    hit = self._cached(self._histograms, (part.files, *item))
                    if hit is None:
                        missing.append(item)
                    else:
                        totals[item[0]] += np.asarray(hit, dtype=np.int64)
            if not missing:
                continue
            got = partition_histograms(con, part.paths, missing, where, self.columns(con, part))
            for item in missing:
                if where is None:
                    self._keep(self._histograms, (part.files, *item), got[item[0]])
                totals[item[0]] += np.asarray(got[item[0]], dtype=np.int64)
        return {name: [int(c) for c in t] for name, t in totals.items()}

    def _distinct(self, con: duckdb.DuckDBPyConnection, parts: Sequence[Partition],
                  features: dict[str, str], window: str) -> dict[str, int]:
        present: set[str] = set()
        for part in parts:
            present |= self.columns(con, part)
        names = [n for n, k in features.items() if k in (NUMBER, STRING) and n in present]
        if not names:
            return {}
        exprs = [f"approx_count_distinct({_distinct_sql(features[n], n)})" for n in names]
        src = source_sql([p for part in parts for p in part.paths], window)
        with duckdb_errors("statistics"):
            row = con.sql(f"SELECT {', '.join(exprs)} FROM {src}").fetchall()[0]
        return {n: int(v or 0) for n, v in zip(names, row, strict=True)}


def _sample_bytes(summaries: dict[str, Summary]) -> int:
    return sum(v.nbytes for s in summaries.values() for _, v in s.samples)


def _distinct_sql(kind: str, name: str) -> str:
    return quote_ident(name) if kind == STRING else value_sql(kind, name)


def _copy(summaries: dict[str, Summary]) -> dict[str, Summary]:
    """A copy a merge may change (the cache keeps its own)."""
    return {name: Summary(s.kind, s.count, s.nulls, s.n, s.mean, s.m2, s.min, s.max,
                          list(s.samples), s.complete, Counter(s.top), s.top_complete)
            for name, s in summaries.items()}


def window_sql(start: dt.datetime, end: dt.datetime) -> str:
    col = quote_ident(layout.EVENT_TIME)
    return (f"{col} >= {quote_literal(start.isoformat())}::TIMESTAMPTZ AND "
            f"{col} < {quote_literal(end.isoformat())}::TIMESTAMPTZ")


def source_sql(paths: Sequence[str], where: str | None) -> str:
    """The rows of some files a statistic counts: puts (no delete markers), in the window."""
    files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
    cond = f"NOT {quote_ident(layout.IS_DELETED)}"
    if where:
        cond += f" AND {where}"
    return (f"(SELECT * FROM read_parquet({files}, union_by_name = true, "
            f"hive_partitioning = false) WHERE {cond})")


def file_columns(con: duckdb.DuckDBPyConnection, paths: Sequence[str]) -> set[str]:
    files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
    with duckdb_errors("statistics"):
        rel = con.sql(f"SELECT * FROM read_parquet({files}, union_by_name = true) LIMIT 0")
    return set(rel.columns)


def summarise(con: duckdb.DuckDBPyConnection, paths: Sequence[str], features: dict[str, str],
              where: str | None, present: set[str],
              histograms: Sequence[tuple[str, str, float, float]] = ()
              ) -> tuple[dict[str, Summary], list[list[int]]]:
    """Each feature's Summary over the files' rows (in the window `where`, if given), and the
    counts of `histograms` ((name, kind, lo, hi): equal bins over [lo, hi]) in the same pass."""
    src = source_sql(paths, where)
    # The values are projected once, then aggregated: an expression repeated in five
    # aggregates is evaluated five times (~2x the CPU, measured).
    proj = ["1 AS tessera_row"]
    exprs = ["count(*)"]
    numeric: list[str] = []
    for i, (name, kind) in enumerate(features.items()):
        if name not in present:
            continue
        if kind == STRING:
            proj.append(f"{quote_ident(name)} IS NOT NULL AS p{i}")
            exprs.append(f"count_if(p{i})")
            continue
        proj += [f"{quote_ident(name)} IS NOT NULL AS p{i}", f"{value_sql(kind, name)} AS v{i}"]
        exprs += [f"count_if(p{i})", f"count(v{i})", f"avg(v{i})", f"var_pop(v{i}) * count(v{i})",
                  f"min(v{i})", f"max(v{i})"]
        numeric.append(name)
    # The quantile sample: a row is in it when the hash of its commit sequence falls below a
    # threshold (a Bernoulli sample of ~SAMPLE_ROWS, the same rows at every call), taken in the
    # same pass as the moments.
    share = SAMPLE_ROWS / max(file_rows(con, paths), 1)
    complete = share >= 1.0
    sampled = "TRUE" if complete else \
        f"hash({quote_ident(layout.SEQ)}) < {int(share * 2.0**64)}::UBIGINT"
    proj.append(f"{sampled} AS tessera_sampled")
    exprs += [f"list(v{i}) FILTER (WHERE tessera_sampled AND v{i} IS NOT NULL)"
              for i, (name, kind) in enumerate(features.items())
              if name in present and kind != STRING]
    index = {name: i for i, name in enumerate(features)}
    for name, _, lo, hi in histograms:
        v = f"v{index[name]}"
        exprs.append(f"histogram({bucket_sql(v, lo, hi, _bins(lo, hi))}) FILTER "
                     f"(WHERE {v} IS NOT NULL)" if name in present else "NULL")
    src_proj = f"(SELECT {', '.join(proj)} FROM {src})"
    with duckdb_errors("statistics"):
        first = con.sql(f"SELECT {', '.join(exprs)} FROM {src_proj}").fetchall()[0]
    rows = int(first[0])
    out: dict[str, Summary] = {}
    i = 1
    for name, kind in features.items():
        s = out[name] = Summary(kind)
        if name not in present:
            s.nulls = rows
            continue
        s.count = int(first[i] or 0)
        s.nulls = rows - s.count
        i += 1
        if kind == STRING:
            if s.count:
                s.top, s.top_complete = _top(con, src, name)
            continue
        n, mean, m2, lo, hi = first[i:i + 5]
        i += 5
        if n:
            s.n, s.mean, s.m2, s.min, s.max = int(n), float(mean), float(m2 or 0.0), \
                float(lo), float(hi)
    for name, values in zip(numeric, first[i:i + len(numeric)], strict=True):
        s = out[name]
        if s.n:
            s.samples = [(s.n, np.sort(np.asarray(values or [], dtype=np.float64)))]
            s.complete = complete
    hists = []
    for (_, _, lo, hi), hist in zip(histograms, first[i + len(numeric):], strict=True):
        counts = [0] * _bins(lo, hi)
        for b, c in (hist or {}).items():
            if 0 <= int(b) < len(counts):
                counts[int(b)] += int(c)
        hists.append(counts)
    return out, hists


def _bins(lo: float, hi: float) -> int:
    return 1 if lo == hi else HISTOGRAM_BINS


def footer_ranges(con: duckdb.DuckDBPyConnection, paths: Sequence[str], names: Sequence[str]
                  ) -> dict[str, tuple[float, float]]:
    """Each column's min and max by the files' Parquet statistics, where every row group of
    every file that has the column carries them."""
    if not names or not paths:
        return {}
    files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
    cols = ", ".join(quote_literal(n) for n in names)
    with duckdb_errors("statistics"):
        rows = con.sql(
            f"SELECT path_in_schema, min(TRY_CAST(stats_min_value AS DOUBLE)), "
            f"max(TRY_CAST(stats_max_value AS DOUBLE)), "
            f"bool_and(stats_min_value IS NOT NULL AND stats_max_value IS NOT NULL) "
            f"FROM parquet_metadata({files}) WHERE path_in_schema IN ({cols}) "
            f"GROUP BY path_in_schema").fetchall()
    return {str(n): (float(lo), float(hi)) for n, lo, hi, ok in rows
            if ok and lo is not None and hi is not None
            and math.isfinite(lo) and math.isfinite(hi)}


def file_rows(con: duckdb.DuckDBPyConnection, paths: Sequence[str]) -> int:
    """The rows of some Parquet files, from their footers."""
    files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
    with duckdb_errors("statistics"):
        row = con.sql(f"SELECT sum(num_rows) FROM parquet_file_metadata({files})").fetchall()
    return int(row[0][0] or 0) if row else 0


def _top(con: duckdb.DuckDBPyConnection, src: str, name: str) -> tuple[Counter[str], bool]:
    col = quote_ident(name)
    with duckdb_errors("statistics"):
        rows = con.sql(
            f"SELECT {col}, count(*) AS c FROM {src} WHERE {col} IS NOT NULL GROUP BY {col} "
            f"ORDER BY c DESC, {col} LIMIT {TOP_KEPT + 1}").fetchall()
    return Counter({str(v): int(c) for v, c in rows[:TOP_KEPT]}), len(rows) <= TOP_KEPT


def partition_histograms(con: duckdb.DuckDBPyConnection, paths: Sequence[str],
                         spec: Sequence[tuple[str, str, float, float]], where: str | None,
                         present: set[str]) -> dict[str, list[int]]:
    """Per feature of `spec` (name, kind, lo, hi): counts of its values in equal bins over
    [lo, hi] (one bin when lo == hi), in one pass over the files."""
    out = {name: [0] * (1 if lo == hi else HISTOGRAM_BINS) for name, _, lo, hi in spec}
    asked = [(name, kind, lo, hi) for name, kind, lo, hi in spec if name in present]
    if not asked:
        return out
    proj = ", ".join(f"{value_sql(kind, name)} AS v{i}"
                     for i, (name, kind, _, _) in enumerate(asked))
    exprs = [f"histogram({bucket_sql(f'v{i}', lo, hi, len(out[name]))}) "
             f"FILTER (WHERE v{i} IS NOT NULL)"
             for i, (name, _, lo, hi) in enumerate(asked)]
    with duckdb_errors("statistics"):
        row = con.sql(f"SELECT {', '.join(exprs)} FROM "
                      f"(SELECT {proj} FROM {source_sql(paths, where)})").fetchall()[0]
    for (name, *_), hist in zip(asked, row, strict=True):
        for b, c in (hist or {}).items():
            if 0 <= int(b) < len(out[name]):
                out[name][int(b)] += int(c)
    return out
