"""The offline store's catalog: a DuckDB connection with one view per feature group.

The open counterpart of the Glue Data Catalog that SageMaker creates. Each group folder of the
offline store (see `offline_layout`) becomes a view named after the group:

    read_parquet('<root>/<group>/event_date=*/*.parquet', hive_partitioning, union_by_name)
    UNION ALL BY NAME  <an empty row set with every column `_group.json` declares>

The empty branch gives the view the group's declared columns and types even where no file holds
a column yet (a feature added since the last write), and a group with no files at all. The `sql()`
path runs one SELECT and nothing else, in the SQL sandbox (`tessera.core.sql_sandbox`): files
outside the offline root and its temporary folder cannot be read. `tessera.core.sql_results`
renders a result for the CLI and HTTP.

One group never takes down the others: a group whose view cannot be built (an unreadable
`_group.json`, two columns DuckDB sees as one name, a folder name differing from another group's
only in case, which DuckDB's case-insensitive names would resolve to the other's view, a
symbolic link in its folder or partitions) is left out, logged once and listed by `broken()`;
every other group keeps its view. Symbolic links are refused because DuckDB follows them while
its allowed_directories compares path strings: a link planted under the root could read any
file of the host.

A catalog of some groups only (`groups=`, the server's SQL for a caller who may read those) is
a database of its own: the other groups have no view in it, so no name, CTE, subquery or
metadata function resolves to them, and its allowed directories are those groups' folders, so
no path reaches another group's files either.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from tessera.core import offline_layout as layout
from tessera.core.errors import FeatureGroupNotFoundError, InvalidRequestError, StorageError
from tessera.core.schema import NAME_PATTERN, CollectionType, FeatureGroup, FeatureType, ScalarType
from tessera.core.sql_results import RESULT_FORMATS as RESULT_FORMATS
from tessera.core.sql_results import ResultFormat as ResultFormat
from tessera.core.sql_results import format_result as format_result
from tessera.core.sql_results import render_text_table as render_text_table
from tessera.core.sql_sandbox import (
    DEFAULT_MAX_QUERY_BYTES,
    QueryGuard,
    check_query_size,
    check_views_only,
    sandbox_connections,
)

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = "4GB"
DEFAULT_BATCH_ROWS = 65_536
#: Per-connection settings of the `session()` connections: DuckDB tracks a statement's progress
#: (read from another thread with `query_progress()`) without printing it.
PROGRESS_SETTINGS = {
    "enable_progress_bar": True,
    "enable_progress_bar_print": False,
    "progress_bar_time": 0,
}

_SCALAR_SQL = {
    ScalarType.INTEGRAL: "BIGINT",
    ScalarType.FRACTIONAL: "DOUBLE",
    ScalarType.STRING: "VARCHAR",
}
_SYSTEM_SQL = {
    layout.WRITE_TIME: "TIMESTAMPTZ",
    layout.API_INVOCATION_TIME: "TIMESTAMPTZ",
    layout.IS_DELETED: "BOOLEAN",
    layout.EVENT_TIME: "TIMESTAMPTZ",
    layout.SEQ: "BIGINT",
    layout.EXPIRES_AT: "TIMESTAMPTZ",
    layout.SOURCE: "VARCHAR",
}


def quote_ident(name: str) -> str:
    """`name` as a SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_type(ftype: FeatureType, *, stored: bool = False) -> str:
    """The DuckDB type of a feature: as declared, or (`stored`) as DuckDB reads it from Parquet,
    where a fixed-size Vector comes back as a variable-length FLOAT[] list."""
    if ftype.collection is CollectionType.VECTOR:
        return "FLOAT[]" if stored else f"FLOAT[{ftype.dimension}]"
    scalar = _SCALAR_SQL[ftype.scalar]
    return scalar if ftype.collection is None else f"{scalar}[]"


def declared_columns(group: FeatureGroup) -> dict[str, str]:
    """Every column of the group's offline files with its stored DuckDB type, partition included."""
    cols = {
        fd.feature_name: sql_type(fd.type(), stored=True)
        for fd in group.definition.feature_definitions
    }
    cols.update(_SYSTEM_SQL)
    cols[layout.EVENT_DATE] = "DATE"
    return cols


@contextmanager
def duckdb_errors(what: str) -> Iterator[None]:
    """Translate DuckDB's exceptions into Tessera's, the one place this adapter does so."""
    try:
        yield
    except (duckdb.IOException, duckdb.HTTPException) as exc:
        raise StorageError(f"{what}: cannot read or write a file: {exc}") from exc
    except duckdb.OutOfMemoryException as exc:
        raise StorageError(f"{what}: out of memory (raise memory_limit): {exc}") from exc
    except (
        duckdb.ParserException,
        duckdb.BinderException,
        duckdb.CatalogException,
        duckdb.ConversionException,
        duckdb.InvalidInputException,
        duckdb.PermissionException,
        duckdb.OutOfRangeException,
        duckdb.NotImplementedException,
    ) as exc:
        raise InvalidRequestError(f"{what}: {exc}") from exc


def check_select_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse anything but one read-only query (SELECT, WITH ... SELECT, VALUES, FROM ...)."""
    with duckdb_errors("sql"):
        statements = con.extract_statements(query)
    if len(statements) != 1:
        raise InvalidRequestError(
            f"sql: send exactly one statement, got {len(statements)}; allowed: one SELECT query"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise InvalidRequestError(
            f"sql: {kind.name} statements are not allowed; the catalog is read-only: "
            "send one SELECT query"
        )


def group_not_found(name: str, known: list[str]) -> FeatureGroupNotFoundError:
    """FeatureGroupNotFoundError whose message lists the groups that do exist."""
    err = FeatureGroupNotFoundError(name)
    err.message = f"{err.message}; known: {', '.join(known) or '(none)'}"
    err.args = (err.message,)
    return err


class UnknownTableError(InvalidRequestError):
    """A query names a table or view the catalog does not have; `names`: those of its names
    that are no view here (a server maps a name its caller may not read to a 403)."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


@dataclass(frozen=True)
class _ViewState:
    group_json: str
    has_files: bool


class Catalog:
    """One sandboxed DuckDB database whose views are the offline store's feature groups.

    `root` is a local path or a URI DuckDB can read. DuckDB spills to `temp_directory` (a
    private temporary folder by default, removed on close) beyond `memory_limit`, so joins
    larger than RAM complete. Queries read nothing but files under `root` and `temp_directory`
    (see `tessera.core.sql_sandbox`), whoever runs them. `groups`: only these groups have views
    and only their folders (and `temp_directory`) can be read; None: every group of `root`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
        temp_directory: str | Path | None = None,
        threads: int | None = None,
        preserve_insertion_order: bool = True,
        progress_sessions: int = 0,
        groups: Collection[str] | None = None,
    ) -> None:
        text = str(root)
        if text.startswith("file://"):
            text = text[len("file://") :]
        self.root = text if "://" in text else os.path.abspath(text)
        if temp_directory is None:
            temp_directory = tempfile.mkdtemp(prefix="tessera-duckdb-")
            # DuckDB deletes its spill files but not the folder we made for them.
            self._cleanup = weakref.finalize(self, shutil.rmtree, temp_directory, True)
        self.temp_directory = os.path.abspath(str(temp_directory))
        self.only: frozenset[str] | None = None if groups is None else frozenset(groups)
        readable = [self.root] if self.only is None else [
            _join(self.root, name) for name in sorted(self.only)
        ]
        settings = {
            "memory_limit": memory_limit,
            "temp_directory": self.temp_directory,
            "threads": threads or os.cpu_count() or 1,
            # Naive timestamps are UTC and TIMESTAMPTZ values come out in UTC.
            "TimeZone": "UTC",
            # Footers are read at bind and at scan; files never change once renamed into place.
            "parquet_metadata_cache": True,
            # Off for the dataset builder's catalog: its join needs no order (the rows are
            # read back sorted); kept, the join took ~20% longer (1M x 10M, 2 cores: median
            # 5.6 s vs 4.7 s).
            "preserve_insertion_order": preserve_insertion_order,
        }
        with duckdb_errors("offline store settings"):
            self._con, sessions = sandbox_connections(
                [*readable, self.temp_directory],
                settings=settings,
                session_settings=PROGRESS_SETTINGS,
                sessions=progress_sessions,
            )
        self._sessions = sessions  # free connections with DuckDB's progress tracking on
        self._lock = threading.Lock()
        self._views: dict[str, _ViewState] = {}
        self._groups: dict[str, FeatureGroup] = {}
        self._broken: dict[str, tuple[str | None, str]] = {}  # name -> (_group.json, reason)
        self._scanned: dict[str, tuple[int, list[str]]] = {}  # folder -> (mtime, its links)
        self.refresh()

    # --- groups ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up groups, schema versions and first files written since the last refresh.

        Views over a glob see new files by themselves; a view is rebuilt only when its group's
        `_group.json` changes or its first file appears (the empty view has no glob to follow).
        Never raises for one group: a group whose view cannot be built is listed by `broken()`.
        """
        found = self._read_group_files()
        with self._lock:
            for name in set(self._views) - set(found):
                self._drop(name)
            for name in set(self._broken) - set(found):
                del self._broken[name]
            parsed: dict[str, FeatureGroup | str] = {}
            for name, content in found.items():
                parsed[name] = self._parse(name, content)
            # DuckDB resolves names case-insensitively: of groups named alike but for case, the
            # oldest keeps the view; the others would read its data, so they are broken.
            owners: dict[str, str] = {}
            for name in sorted(parsed, key=lambda n: (_created(parsed[n]), n)):
                item, content = parsed[name], found[name]
                if isinstance(item, str) or not isinstance(content, str):
                    self._mark_broken(name, content, str(item))
                    continue
                key = name.lower()
                if key in owners:
                    self._mark_broken(
                        name, content,
                        f"its name differs from group '{owners[key]}' only in case; SQL names "
                        "are case-insensitive, so it has no view of its own",
                    )
                    continue
                if self._build(name, item, content):
                    owners[key] = name

    def _read_group_files(self) -> dict[str, str | Exception]:
        """Each group folder's `_group.json` text (or why it cannot be read), by folder name."""
        out: dict[str, str | Exception] = {}
        if "://" in self.root:
            folders = ["*"] if self.only is None else sorted(self.only)
            cur = self.cursor()
            try:
                files: list[tuple[object]] = []
                for folder in folders:
                    pattern = quote_literal(f"{self.root}/{folder}/{layout.GROUP_FILE}")
                    with duckdb_errors("offline store catalog"):
                        files += cur.sql(f"SELECT file FROM glob({pattern})").fetchall()
                for (filename,) in files:
                    name = str(filename).rsplit("/", 2)[-2]
                    if _hidden(name) or not self._visible(name):
                        continue
                    try:
                        rows = cur.sql(
                            f"SELECT content FROM read_text({quote_literal(str(filename))})"
                        ).fetchall()
                        out[name] = str(rows[0][0]) if rows else ""
                    except duckdb.Error as exc:
                        out[name] = exc
            finally:
                cur.close()
            return out
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise StorageError(f"offline store catalog: cannot list {self.root}: {exc}") from exc
        for entry in entries:
            if _hidden(entry.name) or not self._visible(entry.name):
                continue
            path = Path(entry.path, layout.GROUP_FILE)
            if entry.is_symlink():  # checked first: never read a file through a planted link
                if entry.is_dir():
                    out[entry.name] = UnsafePathError([entry.path])
                continue
            if not entry.is_dir() or not os.path.lexists(path):
                continue
            unsafe = self._unsafe_paths(entry.path)
            if unsafe:
                out[entry.name] = UnsafePathError(unsafe)
                continue
            try:
                out[entry.name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                out[entry.name] = exc
        return out

    def _visible(self, name: str) -> bool:
        return self.only is None or name in self.only

    def _unsafe_paths(self, folder: str) -> list[str]:
        """The paths of a group folder DuckDB could be led outside the root by: symbolic links
        (DuckDB follows them, and its allowed_directories compares path strings only) and
        anything resolving outside the root, down to the Parquet files of its partitions."""
        real_root = os.path.realpath(self.root) + os.sep
        found: list[str] = []
        if not os.path.realpath(folder).startswith(real_root):
            return [folder]
        try:
            with os.scandir(folder) as entries:
                children = list(entries)
            recent = time.time_ns() - 2_000_000_000
            for entry in children:
                if entry.is_symlink():
                    found.append(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    # A folder's listing changes only with its mtime: a partition unchanged
                    # since the last refresh is not listed again (~25 us each otherwise).
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                    cached = self._scanned.get(entry.path)
                    if cached is not None and cached[0] == mtime:
                        found += cached[1]
                        continue
                    with os.scandir(entry.path) as inner:
                        links = [e.path for e in inner if e.is_symlink()]
                    if mtime < recent:  # a change within the same clock tick stays visible
                        self._scanned[entry.path] = (mtime, links)
                    found += links
        except OSError as exc:
            raise StorageError(f"offline store catalog: cannot list {folder}: {exc}") from exc
        return sorted(found)

    def _parse(self, name: str, content: str | Exception) -> FeatureGroup | str:
        """The group, or the reason it cannot have a view."""
        if isinstance(content, UnsafePathError):
            return str(content)
        if isinstance(content, Exception):
            return f"cannot read {layout.GROUP_FILE}: {content}"
        if not NAME_PATTERN.fullmatch(name):
            return f"the folder name is not a feature group name ({NAME_PATTERN.pattern})"
        if name in self._views and self._views[name].group_json == content:
            return self._groups[name]
        try:
            group = FeatureGroup.model_validate_json(content)
        except ValueError as exc:  # pydantic's ValidationError, or bad JSON
            return f"bad {layout.GROUP_FILE}: {exc}"
        seen: dict[str, str] = {}
        for column in declared_columns(group):
            other = seen.setdefault(column.lower(), column)
            if other != column:  # SQL would see one (ambiguous) column
                return (f"columns '{other}' and '{column}' are one name to SQL "
                        "(names are case-insensitive)")
        return group

    def _build(self, name: str, group: FeatureGroup, content: str) -> bool:
        """Create or keep the group's view; False (and the group broken) when it cannot be."""
        try:
            state = _ViewState(content, self._has_files(name))
            if self._views.get(name) == state:
                return True
            self._con.execute(
                f"CREATE OR REPLACE VIEW {quote_ident(name)} AS "
                + self.group_source_sql(name, group, has_files=state.has_files)
            )
        except (duckdb.Error, OSError, ValueError, KeyError) as exc:
            self._mark_broken(name, content, f"its view cannot be built: {exc}")
            return False
        self._views[name] = state
        self._groups[name] = group
        self._broken.pop(name, None)
        return True

    def _mark_broken(self, name: str, content: str | Exception, reason: str) -> None:
        if name in self._views:
            self._drop(name)
        text = content if isinstance(content, str) else None
        if self._broken.get(name) != (text, reason):
            log.error("offline group '%s' has no SQL view, the others are not affected: %s",
                      name, reason)
        self._broken[name] = (text, reason)

    def _drop(self, name: str) -> None:
        # A view of the same name but for case belongs to another group now: keep it.
        if not any(n != name and n.lower() == name.lower() for n in self._views):
            self._con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
        del self._views[name]
        del self._groups[name]

    def _has_files(self, name: str) -> bool:
        if "://" not in self.root:
            folder = os.path.join(glob.escape(self.root), name)
            local = os.path.join(folder, f"{layout.EVENT_DATE}=*", "*.parquet")
            return next(glob.iglob(local), None) is not None
        pattern = layout.parquet_glob(self.root, name)
        rows = self._con.sql(f"SELECT 1 FROM glob({quote_literal(pattern)}) LIMIT 1").fetchall()
        return bool(rows)

    def group_source_sql(self, name: str, group: FeatureGroup, *, has_files: bool) -> str:
        """The SELECT behind a group's view (see the module docstring)."""
        carrier = ", ".join(
            f"CAST(NULL AS {t}) AS {quote_ident(c)}" for c, t in declared_columns(group).items()
        )
        empty = f"SELECT {carrier} LIMIT 0"
        if not has_files:
            return empty
        glob_sql = quote_literal(layout.parquet_glob(self.root, name))
        return (
            f"SELECT * FROM read_parquet({glob_sql}, hive_partitioning = true, "
            f"union_by_name = true) UNION ALL BY NAME ({empty})"
        )

    def group_names(self) -> list[str]:
        """The feature groups of the store that have a view, sorted (as of the last refresh)."""
        return sorted(self._groups)

    def broken(self) -> dict[str, str]:
        """The groups left without a view at the last refresh: name -> reason."""
        return {name: reason for name, (_, reason) in sorted(self._broken.items())}

    def group(self, name: str) -> FeatureGroup:
        """A group's definition from its `_group.json`; FeatureGroupNotFoundError if none,
        StorageError if its view cannot be built."""
        try:
            return self._groups[name]
        except KeyError:
            if name in self._broken:
                raise StorageError(
                    f"offline group '{name}' cannot be read: {self._broken[name][1]}"
                ) from None
            raise group_not_found(name, self.group_names()) from None

    def has_files(self, name: str) -> bool:
        """Whether the group had any offline file at the last refresh."""
        self.group(name)
        return self._views[name].has_files

    # --- queries -----------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the catalog's database (its views, its settings): one per
        thread or per query, since a DuckDB connection runs one query at a time."""
        return self._con.cursor()

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own, with DuckDB's progress tracking on when one of the
        `progress_sessions` made before the configuration was locked is free (else a plain
        cursor, whose `query_progress()` is -1). Its temporary tables and views are dropped
        when the block leaves."""
        with self._lock:
            con = self._sessions.pop() if self._sessions else None
        if con is None:
            cur = self.cursor()
            try:
                yield cur
            finally:
                cur.close()
            return
        reusable = False
        try:
            yield con
            reusable = True
        finally:
            if reusable:
                reusable = _drop_temporary(con)
            if reusable:
                with self._lock:
                    self._sessions.append(con)
            else:
                con.close()

    @contextmanager
    def sql_reader(
        self,
        query: str,
        *,
        timeout_s: float | None = None,
        max_query_bytes: int | None = DEFAULT_MAX_QUERY_BYTES,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        on_start: Callable[[QueryGuard], None] | None = None,
        views_only: bool = False,
    ) -> Iterator[pa.RecordBatchReader]:
        """Run one read-only query over the groups' views; its rows as a stream of batches,
        read within the block. `timeout_s` bounds the query's run, reading included
        (QueryTimeoutError); `on_start` receives the guard another thread may `cancel()`.
        `views_only` (the server's queries): no table function that reads files or the
        process's state, no file named as a table (`sql_sandbox.check_views_only`), and a name
        that is no view here raises UnknownTableError."""
        check_query_size(query, max_query_bytes)
        cur = self.cursor()
        try:
            guard = QueryGuard(cur, timeout_s)
            if on_start is not None:
                on_start(guard)
            with guard:
                check_select_only(cur, query)
                names: list[str] = []
                if views_only:
                    with duckdb_errors("sql"):
                        names = check_views_only(cur, query)
                self.refresh()
                with self._unknown_tables(names), self._explain_broken(), duckdb_errors("sql"):
                    reader = cur.sql(query).to_arrow_reader(batch_rows)
                yield reader
        finally:
            cur.close()

    def sql(
        self,
        query: str,
        *,
        timeout_s: float | None = None,
        max_query_bytes: int | None = DEFAULT_MAX_QUERY_BYTES,
    ) -> pa.Table:
        """Run one read-only query over the groups' views; the result as an Arrow table."""
        with self.sql_reader(query, timeout_s=timeout_s, max_query_bytes=max_query_bytes) as r:
            table: pa.Table = r.read_all()
        return table

    @contextmanager
    def _unknown_tables(self, names: list[str]) -> Iterator[None]:
        """A query that failed naming one of `names` that is no view here: UnknownTableError."""
        try:
            yield
        except InvalidRequestError as exc:
            if not isinstance(exc.__cause__, duckdb.CatalogException):
                raise
            views = {n.lower() for n in self._views}
            text = exc.message.lower()
            missing = [n for n in dict.fromkeys(names) if n.lower() not in views
                       and f"name {n.lower()} does not exist" in text]
            if not missing:
                raise
            raise UnknownTableError(exc.message, missing) from exc.__cause__

    @contextmanager
    def _explain_broken(self) -> Iterator[None]:
        """A query naming a broken group says why that group has no view."""
        try:
            yield
        except InvalidRequestError as exc:
            text = exc.message.lower()
            why = [f"group '{n}' has no view: {r}" for n, r in self.broken().items()
                   if f'"{n.lower()}"' in text or f" {n.lower()} " in text]
            if why:
                exc.message = f"{exc.message}; {'; '.join(why)}"
                exc.args = (exc.message,)
            raise

    def close(self) -> None:
        """Close the database and remove the temporary folder this catalog made."""
        for con in self._sessions:
            con.close()
        self._con.close()
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_temporary(con: duckdb.DuckDBPyConnection) -> bool:
    """Drop a connection's temporary tables and views (registered Arrow data included);
    False when it cannot be (the connection is then closed, not reused)."""
    try:
        for kind, name in con.sql(
            "SELECT 'TABLE', table_name FROM duckdb_tables() WHERE temporary UNION ALL "
            "SELECT 'VIEW', view_name FROM duckdb_views() WHERE temporary AND NOT internal"
        ).fetchall():
            con.execute(f"DROP {kind} IF EXISTS temp.{quote_ident(str(name))}")
    except duckdb.Error:
        return False
    return True


class UnsafePathError(Exception):
    """A group folder holds symbolic links (or paths resolving outside the root): the catalog
    gives it no view, so no query reads through them."""

    def __init__(self, paths: list[str]) -> None:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        super().__init__(
            f"it holds symbolic links, which the catalog does not follow: {shown}; "
            "replace them with the files themselves"
        )
        self.paths = paths


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if "://" in root else os.path.join(root, name)


def _hidden(name: str) -> bool:
    """Folders that are no group: compaction's work folders and retired groups."""
    return name.startswith((".", "_"))


def _created(item: FeatureGroup | str) -> float:
    return item.creation_time if isinstance(item, FeatureGroup) else math.inf
