"""Point-in-time training datasets, read straight from the offline store: no server needed.

    from tessera.client import OfflineStore
    off = OfflineStore("tessera-data/offline")
    ds = off.dataset(spine, timestamp="ts", features={"users": ["clicks", "ctr"]})
    ds.to_parquet("train.parquet")          # or ds.to_arrow(), ds.to_pandas()
    off.sql("SELECT count(*) FROM users")   # the catalog's views, read-only

DuckDB runs the join (see `tessera.core.pit`); results stream out as Arrow record batches, and
DuckDB spills to disk beyond `memory_limit`, so a spine larger than memory still completes when
written with `to_parquet`. DuckDB, pyarrow, pandas and tqdm are the `tessera[offline]` extra: they
are imported when an OfflineStore is made, so `import tessera.client` never needs them.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from tessera.core.errors import InvalidRequestError

if TYPE_CHECKING:
    import duckdb
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the dev tools
    import pyarrow as pa

    from tessera.core.catalog import Catalog
    from tessera.core.pit import PointInTimeQuery
    from tessera.core.schema import FeatureGroup
    from tessera.core.statistics import StatisticsEngine

    #: A spine: a DataFrame, an Arrow table, a Parquet file (path or glob), or a SELECT query
    #: over the catalog's views (a string starting with SELECT, WITH, FROM, VALUES or '(').
    SpineInput: TypeAlias = pd.DataFrame | pa.Table | str | Path
    _AggregateTable: TypeAlias = Callable[
        [duckdb.DuckDBPyConnection, PointInTimeQuery, str], pa.Table
    ]

__all__ = ["Dataset", "OfflineStore"]

DEFAULT_BATCH_ROWS = 131_072
_SPINE_SOURCE = "__tessera_spine_source"
_SPINE_FILE = "__tessera_spine_file"
_RESULT = "__tessera_result"
_AGGREGATES = "__tessera_aggregates"
_COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "uncompressed")
_PERCENT_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"
_PROGRESS_SESSIONS = 2  # builds at once with DuckDB's percentage; more run without it
_SQL_START = ("select", "with", "from", "values", "(")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class OfflineStore:
    """The offline store at `root` (a path or URI): point-in-time datasets and read-only SQL.

    `memory_limit` bounds DuckDB's memory (it spills to `temp_directory` beyond it, a private
    temporary folder by default); `threads` defaults to the CPU count. `progress` shows a progress
    bar while a dataset is read (None: only when stderr is a terminal).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        memory_limit: str = "4GB",
        temp_directory: str | Path | None = None,
        threads: int | None = None,
        progress: bool | None = None,
    ) -> None:
        from tessera.core.catalog import Catalog

        self.catalog: Catalog = Catalog(
            root, memory_limit=memory_limit, temp_directory=temp_directory, threads=threads
        )
        self._builder_args: dict[str, Any] = {
            "memory_limit": memory_limit, "temp_directory": temp_directory, "threads": threads
        }
        self._builder: Catalog | None = None
        self._stats: StatisticsEngine | None = None
        self.progress = progress

    @property
    def builder_catalog(self) -> Catalog:
        """The dataset builder's own sandboxed database, made on first use: the same views and
        limits as `catalog`, but without insertion order (its join is read back sorted) and with
        connections that track DuckDB's progress, both set before its configuration is locked."""
        if self._builder is None:
            from tessera.core.catalog import Catalog

            self._builder = Catalog(
                self.catalog.root,
                preserve_insertion_order=False,
                progress_sessions=_PROGRESS_SESSIONS,
                **self._builder_args,
            )
        return self._builder

    def group_names(self) -> list[str]:
        """The feature groups of the store, sorted."""
        self.catalog.refresh()
        return self.catalog.group_names()

    def group(self, name: str) -> FeatureGroup:
        """A group's definition as its `_group.json` holds it."""
        self.catalog.refresh()
        return self.catalog.group(name)

    def sql(self, query: str, *, timeout_s: float | None = None) -> pa.Table:
        """Run one read-only SELECT over the catalog's views (one per group); an Arrow table.

        The query runs in the SQL sandbox (`tessera.core.sql_sandbox`): it reads the offline
        store and nothing else on the host. `timeout_s` stops it after that long
        (QueryTimeoutError); the query text is at most 256 KiB (QueryTooLargeError).
        """
        return self.catalog.sql(query, timeout_s=timeout_s)

    def dataset(
        self,
        spine: SpineInput,
        *,
        timestamp: str,
        features: Mapping[str, Sequence[str] | None] | Sequence[str],
        on: Mapping[str, str] | str | None = None,
        as_of: datetime | float | str | None = None,
        prefix_group: bool = False,
    ) -> Dataset:
        """A point-in-time dataset: for each spine row, each group's features as they were at
        the row's `timestamp` (latest event time <= it; deleted or expired rows read as null).

        `features` maps a group to feature names, plain features or the group's aggregation
        features (None, or a plain list of group names: every feature but the record identifier
        and event time, then every aggregation feature). `on` names the spine column holding
        each group's record ids (default: the group's record identifier name). `as_of` ignores
        writes after that moment (a datetime, naive = UTC; epoch seconds; or ISO-8601),
        reproducing a dataset as it could have been built then. `prefix_group` names the
        feature columns `<group>__<feature>`.

        An aggregation feature is what GetRecord returned at the row's timestamp (see
        `tessera.core.aggregation`): over the group's events (every put, not only the latest
        per record) committed by then, for the row's record id, whether or not a live record
        is found; or, keyed by a feature, for that feature's value in the row the join picks
        (null when there is none). They need the Numba kernels (`tessera[aggregation]`) and
        are computed in memory (`tessera.core.aggregation.dataset`), the plain features still
        streaming and spilling as without them.
        Nothing runs until a `to_*` method; each run reads the store as it is then.
        """
        from tessera.core import pit

        if isinstance(features, str):
            raise InvalidRequestError(
                f"features must map groups to feature names, e.g. {{'{features}': [...]}}"
            )
        builder = self.builder_catalog
        builder.refresh()
        wanted: Mapping[str, Sequence[str] | None] = (
            features if isinstance(features, Mapping) else dict.fromkeys(features)
        )
        groups = {name: builder.group(name) for name in wanted}
        source = _SpineSource.of(spine, self.catalog, builder)
        columns = source.columns
        names = [n for n, _ in columns]
        reserved = [n for n in names if n.startswith(pit.INTERNAL_PREFIX)]
        if reserved:
            raise InvalidRequestError(
                f"spine column '{reserved[0]}' uses the reserved prefix '{pit.INTERNAL_PREFIX}'"
            )
        selections = pit.select_groups(
            groups,
            {name: builder.has_files(name) for name in wanted},
            wanted,
            on,
            names,
            timestamp,
        )
        query = pit.PointInTimeQuery(
            spine_relation=source.relation,
            spine_columns=tuple(columns),
            timestamp=timestamp,
            groups=selections,
            as_of_us=_as_of_us(as_of),
            prefix_group=prefix_group,
        )
        pit.check_output_names(query)
        pit.timestamp_us_sql(timestamp, dict(columns)[timestamp])  # refuses a bad type now
        if query.has_aggregations:
            _aggregation_kernels()  # refuses a missing extra now
        return Dataset(builder, source, query, self.progress)

    def statistics(self, group: str, start: datetime | str, end: datetime | str
                   ) -> pd.DataFrame:
        """Feature statistics of `group`'s history rows with event time in [start, end), computed
        here with DuckDB (tessera.core.statistics): one row per feature (`statistics_frame`).
        Whole days' summaries are kept by this store for later calls."""
        from tessera.core.statistics import StatisticsEngine

        if self._stats is None:
            self._stats = StatisticsEngine(self.catalog.root, self.catalog.cursor)
        start_t, end_t = _window_times(start, end, "")
        return statistics_frame(self._stats.statistics(self.group(group), start_t, end_t))

    def drift(self, group: str, *, baseline: tuple[datetime | str, datetime | str],
              window: tuple[datetime | str, datetime | str]) -> pd.DataFrame:
        """Drift of `window` from `baseline` per feature (tessera.core.drift: PSI, KS or
        chi-square p-value, drifted), computed here: one row per feature (`drift_frame`)."""
        from tessera.core.drift import drift

        b = _window_times(*baseline, "baseline_")
        w = _window_times(*window, "")
        con = self.catalog.cursor()
        try:
            return drift_frame(drift(con, self.catalog.root, self.group(group), b, w))
        finally:
            con.close()

    def close(self) -> None:
        """Close the DuckDB databases and remove their temporary folders."""
        self.catalog.close()
        if self._builder is not None:
            self._builder.close()

    def __enter__(self) -> OfflineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Dataset:
    """A point-in-time dataset, not yet computed: read it with `to_arrow`, `to_pandas`,
    `to_parquet` or `to_batches`. Spine rows come out once each, in the spine's order."""

    def __init__(
        self,
        catalog: Catalog,
        source: _SpineSource,
        query: PointInTimeQuery,
        progress: bool | None,
    ) -> None:
        self._catalog = catalog
        self._source = source
        self.query = query
        self.progress = progress

    @property
    def sql(self) -> str:
        """The DuckDB query that builds the dataset (for reading and debugging); aggregation
        features are computed apart from it and are not among its columns."""
        return self.query.sql()

    @property
    def columns(self) -> list[str]:
        """The dataset's columns: the spine's, then the features."""
        return self.query.output_names()

    def to_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The rows as Arrow record batches, streamed: memory stays bounded whatever the size."""
        from tqdm import tqdm

        from tessera.core.catalog import duckdb_errors
        from tessera.core.errors import StorageError

        show = self._show_progress()
        with self._joined(show) as (cur, total):
            with duckdb_errors("dataset"):
                reader = cur.sql(self._read_sql()).to_arrow_reader(batch_rows)
            with tqdm(total=total, unit="rows", desc="dataset", disable=not show) as bar:
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    except OSError as exc:  # DuckDB's error, through Arrow's stream interface
                        raise StorageError(f"dataset: {exc}") from exc
                    bar.update(batch.num_rows)
                    yield batch

    def to_arrow(self) -> pa.Table:
        """The dataset as one Arrow table."""
        import pyarrow as pa

        batches = list(self.to_batches())
        return pa.Table.from_batches(
            batches, schema=batches[0].schema if batches else self.schema()
        )

    def to_pandas(self) -> pd.DataFrame:
        """The dataset as a pandas DataFrame (a null integer feature makes a float column)."""
        df: pd.DataFrame = self.to_arrow().to_pandas()
        return df

    def to_parquet(self, path: str | Path, *, compression: str = "zstd") -> int:
        """Write the dataset to one Parquet file (DuckDB's parallel writer, streaming, in spine
        order); the number of rows written. `path` may be any URI DuckDB can write."""
        from tessera.core.catalog import duckdb_errors, quote_literal
        from tessera.core.sql_results import parquet_writable_type

        if compression.lower() not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression '{compression}' is not valid; allowed: {', '.join(_COMPRESSIONS)}"
            )
        show = self._show_progress()
        # The sandbox writes under its temporary folder only: the file is made there, then
        # moved to `path` (a rename on the same file system).
        tmp = Path(self._catalog.temp_directory) / f"dataset-{uuid.uuid4().hex}.parquet"
        try:
            with self._joined(show) as (cur, _):
                target = quote_literal(str(tmp))
                options = f"FORMAT parquet, COMPRESSION {compression}"
                with duckdb_errors("dataset"):
                    # Vectors (fixed-size arrays) are written as lists: DuckDB's writer spoils
                    # a null array for other readers (see `parquet_writable_type`).
                    rel = cur.sql(self._read_sql())
                    casts = {
                        name: cast
                        for name, t in zip(rel.columns, rel.types, strict=True)
                        if (cast := parquet_writable_type(t)) is not None
                    }
                with duckdb_errors("dataset"), _statement_progress(cur, show, "writing"):
                    select = self._read_sql(casts)
                    done = cur.sql(f"COPY ({select}) TO {target} ({options})")
                    rows = int(done.fetchall()[0][0]) if done is not None else 0
            _move_out(tmp, str(path))
            return rows
        finally:
            tmp.unlink(missing_ok=True)

    def schema(self) -> pa.Schema:
        """The Arrow schema of the result, without computing it."""
        from tessera.core.catalog import duckdb_errors

        cur = self._catalog.cursor()
        try:
            with duckdb_errors("dataset"):
                self._source.prepare(cur, bind_only=True)
                sql = self.query.schema_sql()
                schema: pa.Schema = cur.sql(sql).limit(0).to_arrow_table().schema
                self._source.release(cur)
                return schema
        finally:
            cur.close()

    def _show_progress(self) -> bool:
        return self.progress if self.progress is not None else sys.stderr.isatty()

    def _read_sql(self, casts: Mapping[str, str] | None = None) -> str:
        """The joined rows (and aggregation features) read back in spine order, the columns
        of `casts` cast to their type."""
        aggregates = _AGGREGATES if self.query.has_aggregations else None
        return self.query.read_sql(_RESULT, aggregates, casts)

    @contextmanager
    def _joined(self, show: bool) -> Iterator[tuple[duckdb.DuckDBPyConnection, int | None]]:
        """A cursor whose temporary table holds the joined rows, unordered, and the spine's
        row count when known. Two steps, each of which DuckDB spills to disk: this join, then
        the table read back in spine order (see `PointInTimeQuery.unordered_sql`)."""
        from tessera.core.catalog import duckdb_errors

        with self._catalog.session() as cur:
            with duckdb_errors("dataset"):
                total = self._source.prepare(cur)
                # The builder's database keeps no insertion order: the join runs in parallel.
                with _statement_progress(cur, show, "joining"):
                    cur.execute(f"CREATE TEMP TABLE {_RESULT} AS {self.query.unordered_sql()}")
                self._source.release(cur)
                if self.query.has_aggregations:
                    aggregate_table = _aggregation_kernels()
                    cur.register(_AGGREGATES, aggregate_table(cur, self.query, _RESULT))
            yield cur, total  # the session drops the temporary tables when it leaves


class _SpineSource:
    """Where the spine's rows come from, and how one cursor of the builder's database is made
    ready to read them with their order as ROW_COLUMN: Arrow data gets a row-number column; a
    single Parquet file has DuckDB's file_row_number. A glob or a query is first written, in
    order, to one Parquet file by the SQL catalog (whose database keeps insertion order; the
    builder's does not), then read as a single file: on disk, so a large spine needs no memory.
    """

    def __init__(
        self,
        relation: str,
        columns: list[tuple[str, str]],
        arrow: pa.Table | None,
        setup: str | None,
        catalogs: tuple[Catalog, Catalog] | None = None,
    ) -> None:
        self.relation = relation
        self.columns = columns
        self._arrow = arrow
        self._setup = setup  # the SELECT the SQL catalog writes to a file
        self._catalogs = catalogs  # (SQL catalog, builder's catalog)
        self._written: dict[int, Path] = {}  # id of a cursor -> the file prepared for it
        self._keep: object = None  # removes the spine's links in the sandbox when collected

    @classmethod
    def of(cls, spine: SpineInput, catalog: Catalog, builder: Catalog) -> _SpineSource:
        import pyarrow as pa

        from tessera.core.catalog import check_select_only, duckdb_errors, quote_literal
        from tessera.core.pit import ROW_COLUMN

        table: pa.Table | None = None
        if type(spine).__module__.split(".")[0] == "pandas" and hasattr(spine, "columns"):
            # A DataFrame, recognised without importing pandas.
            table = pa.Table.from_pandas(spine, preserve_index=False)
        elif isinstance(spine, pa.RecordBatch):
            table = pa.Table.from_batches([spine])
        elif isinstance(spine, pa.Table):
            table = spine
        if table is not None:
            import numpy as np

            rows = pa.chunked_array([np.arange(table.num_rows, dtype=np.int64)], pa.int64())
            source = cls(_SPINE_SOURCE, [], table.append_column(ROW_COLUMN, rows), None)
        elif isinstance(spine, str) and spine.lstrip().lower().startswith(_SQL_START):
            cur = catalog.cursor()
            try:
                check_select_only(cur, spine)
            finally:
                cur.close()
            source = cls._copied(f"SELECT * FROM ({spine})", catalog, builder)
        elif isinstance(spine, str | Path) and "://" in str(spine):
            import pyarrow.dataset as pads

            # The sandbox reaches no URI: pyarrow reads the spine, in file order.
            table = pads.dataset(str(spine), format="parquet").to_table()
            return cls.of(table, catalog, builder)
        elif isinstance(spine, str | Path):
            globbed = any(ch in str(spine) for ch in "*?[")
            reader = catalog if globbed else builder
            path, globbed, keep = _sandboxed_spine(str(spine), reader.temp_directory)
            if globbed:
                select = f"SELECT * FROM read_parquet({quote_literal(path)})"
                source = cls._copied(select, catalog, builder)
            else:
                source = cls(_file_rows(path), [], None, None)
            source._keep = keep
        else:
            raise InvalidRequestError(
                f"spine of type {type(spine).__name__} is not supported; allowed: a pandas "
                "DataFrame, a pyarrow Table, a Parquet path, or a SELECT query string"
            )
        cur = builder.cursor()
        try:
            with duckdb_errors("spine"):
                source.prepare(cur, bind_only=True)
                rel = cur.sql(f"SELECT * FROM {source.relation}")
                source.columns = [
                    (n, t.id)
                    for n, t in zip(rel.columns, rel.types, strict=True)
                    if n != ROW_COLUMN
                ]
                source.release(cur)
        finally:
            cur.close()
        return source

    @classmethod
    def _copied(cls, select: str, catalog: Catalog, builder: Catalog) -> _SpineSource:
        return cls(f"(SELECT * FROM {_SPINE_FILE})", [], None, select, (catalog, builder))

    def release(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Free what `prepare` holds on `cur` once the join has read it."""
        if self._setup is not None:
            cur.execute(f"DROP VIEW IF EXISTS {_SPINE_FILE}")
        written = self._written.pop(id(cur), None)
        if written is not None:
            written.unlink(missing_ok=True)

    def prepare(self, cur: duckdb.DuckDBPyConnection, *, bind_only: bool = False) -> int | None:
        """Make the spine readable on `cur`; the number of spine rows when known cheaply."""
        if self._arrow is not None:
            cur.register(_SPINE_SOURCE, self._arrow)
            return int(self._arrow.num_rows)
        if self._setup is not None:
            self.release(cur)
            path = self._written[id(cur)] = self._write(bind_only)
            cur.execute(f"CREATE OR REPLACE TEMP VIEW {_SPINE_FILE} AS {_file_rows(str(path))}")
            return int(cur.sql(f"SELECT count(*) FROM {_SPINE_FILE}").fetchall()[0][0])
        if bind_only:
            return None
        rows = cur.sql(f"SELECT count(*) FROM {self.relation}").fetchall()[0][0]
        return int(rows)  # from the Parquet footer: no data is read

    def _write(self, bind_only: bool) -> Path:
        """Run the spine's SELECT in the SQL catalog, in its order, to a new Parquet file in
        the builder's temporary folder (a new name each time: DuckDB caches footers by path)."""
        import shutil

        from tessera.core.catalog import quote_literal

        assert self._setup is not None and self._catalogs is not None
        catalog, builder = self._catalogs
        name = f"spine-{uuid.uuid4().hex}.parquet"
        made = Path(catalog.temp_directory) / name
        catalog.refresh()
        cur = catalog.cursor()
        try:
            limit = " LIMIT 0" if bind_only else ""
            cur.execute(f"COPY ({self._setup}{limit}) TO {quote_literal(str(made))} "
                        "(FORMAT parquet, COMPRESSION zstd)")
        finally:
            cur.close()
        target = Path(builder.temp_directory) / name
        if target != made:
            shutil.move(str(made), str(target))
        return target


def _file_rows(path: str) -> str:
    """A single Parquet file's rows with their position as ROW_COLUMN."""
    from tessera.core.catalog import quote_literal
    from tessera.core.pit import ROW_COLUMN

    return (
        f"(SELECT * EXCLUDE (file_row_number), file_row_number AS {ROW_COLUMN} "
        f"FROM read_parquet({quote_literal(path)}, file_row_number = true))"
    )


def _sandboxed_spine(path: str, temp_directory: str) -> tuple[str, bool, object]:
    """A spine file (or glob) as a path the sandbox may read: the files are hard-linked (copied
    across file systems) into a folder of its temporary directory, in the glob's sorted order.
    The path DuckDB reads, whether it is a glob, and an object whose collection removes them."""
    import glob
    import shutil
    import weakref

    matches = sorted(glob.glob(path, recursive=True)) if any(ch in path for ch in "*?[") else [path]
    matches = [m for m in matches if Path(m).is_file()]
    if not matches:
        raise InvalidRequestError(
            f"spine '{path}' is not a Parquet file that exists, nor a query (a query "
            "starts with SELECT, WITH, FROM, VALUES or '(')"
        )
    folder = Path(temp_directory) / f"spine-{uuid.uuid4().hex}"
    folder.mkdir()
    holder = _SpineFiles()
    weakref.finalize(holder, shutil.rmtree, str(folder), True)
    for i, src in enumerate(matches):
        dst = folder / f"{i:06d}.parquet"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    if len(matches) == 1 and not any(ch in path for ch in "*?["):
        return str(folder / "000000.parquet"), False, holder
    return str(folder / "*.parquet"), True, holder


class _SpineFiles:
    """Owns a spine's links in the sandbox; they are removed when it is collected."""


def _move_out(tmp: Path, target: str) -> None:
    """Move a file the sandbox wrote to where the caller asked for it (a path or a URI)."""
    if "://" in target:
        import pyarrow.fs as pafs

        pafs.copy_files(str(tmp), target)
        return
    import shutil

    shutil.move(str(tmp), target)


def _aggregation_kernels() -> _AggregateTable:
    """`tessera.core.aggregation.dataset.aggregate_table`, which loads Numba."""
    try:
        from tessera.core.aggregation.dataset import aggregate_table
    except ImportError as exc:
        raise ImportError(
            f"aggregation features need the aggregation kernels ({exc}); "
            "install tessera[aggregation]"
        ) from exc
    return aggregate_table


@contextmanager
def _statement_progress(cur: duckdb.DuckDBPyConnection, show: bool, desc: str) -> Iterator[None]:
    """A progress bar (in percent) for the statement `cur` runs meanwhile: DuckDB reports its
    progress to another thread through query_progress()."""
    if not show:
        yield
        return
    from tqdm import tqdm

    done = threading.Event()

    def poll() -> None:
        # The builder's sessions track progress (set before the sandbox's lock); a plain
        # cursor's query_progress() is -1: the bar then shows the time elapsed only.
        with tqdm(total=100, desc=desc, unit="%", bar_format=_PERCENT_BAR) as bar:
            while not done.wait(0.2):
                pct = cur.query_progress()
                if pct > bar.n:
                    bar.update(pct - bar.n)
                else:
                    bar.refresh()
            bar.update(100 - bar.n)

    thread = threading.Thread(target=poll, name="tessera-dataset-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _as_of_us(value: Any) -> int | None:  # Any: datetime, pandas Timestamp, number or text
    """`as_of` as epoch microseconds, floored: write_time <= as_of at microsecond precision."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int((value - _EPOCH) // _US)
    if isinstance(value, bool):
        raise InvalidRequestError(f"as_of: {value!r} is not a time")
    if isinstance(value, int | float):
        return round(value * 1_000_000)
    if isinstance(value, str):
        from tessera.core import eventtime

        return eventtime.parse(value, "as_of")
    raise InvalidRequestError(
        f"as_of: {type(value).__name__} is not a time; allowed: a datetime, epoch seconds, "
        "or an ISO-8601 string"
    )


# --- statistics and drift as DataFrames (the OfflineStore's and the HTTP clients') --------------

_STAT_COLUMNS = ("min", "max", "mean", "stddev")


def _window_times(start: datetime | str, end: datetime | str, prefix: str
                  ) -> tuple[datetime, datetime]:
    from tessera.core.statistics import check_window, parse_time

    times = [parse_time(t, f"{prefix}{what}") if isinstance(t, str)
             else t.replace(tzinfo=UTC) if t.tzinfo is None else t
             for t, what in ((start, "start"), (end, "end"))]
    check_window(times[0], times[1], prefix.rstrip("_") or "window")
    return times[0], times[1]


def window_params(start: datetime | str, end: datetime | str, prefix: str = "") -> dict[str, str]:
    """A window as the HTTP routes' query parameters (ISO 8601; naive datetimes are UTC)."""
    return {f"{prefix}{what}": t if isinstance(t, str) else
            (t.replace(tzinfo=UTC) if t.tzinfo is None else t).isoformat()
            for t, what in ((start, "start"), (end, "end"))}


def statistics_frame(features: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Statistics (the `features` of GET .../statistics) as a DataFrame, one row per feature:
    type, count, nulls, distinct, min, max, mean, stddev, p01..p99, quantiles_exact,
    histogram_edges, histogram_counts, top; `of` says what the numbers describe (value, or the
    length of a list, the norm of a vector)."""
    import pandas as pd

    rows = []
    for name, f in features.items():
        row: dict[str, Any] = {"feature": name, "type": f["type"], "count": f["count"],
                               "nulls": f["nulls"], "distinct": f.get("distinct")}
        stats = f.get("length") or f.get("norm") or f
        row["of"] = "length" if "length" in f else "norm" if "norm" in f else "value"
        for col in _STAT_COLUMNS:
            row[col] = stats.get(col)
        for q, v in (stats.get("quantiles") or {}).items():
            row[q] = v
        row["quantiles_exact"] = stats.get("quantiles_exact")
        hist = stats.get("histogram") or {}
        row["histogram_edges"] = hist.get("edges")
        row["histogram_counts"] = hist.get("counts")
        row["top"] = f.get("top")
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature") if rows else pd.DataFrame()


def drift_frame(features: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Drift (the `features` of GET .../drift) as a DataFrame, one row per feature: psi,
    p_value, drifted, threshold, test (ks or chi2), baseline_count, count."""
    import pandas as pd

    rows = [{"feature": name, **{k: v for k, v in f.items()}} for name, f in features.items()]
    return pd.DataFrame(rows).set_index("feature") if rows else pd.DataFrame()
