"""The one DuckDB sandbox every SQL entry point runs in (the server's `POST /v1/sql`, the SDK's
`OfflineStore.sql`, the local `tessera sql`, SQL spines and the dataset builder).

A sandboxed database reads and writes files under its allowed directories only (the offline
store's root and DuckDB's own temporary folder): `read_text('/etc/passwd')`, `glob('/')`, a CSV
outside the root or a URL are refused with a PermissionException. It never installs or loads an
extension by itself, and its configuration is locked once set up, so a query cannot widen it.
Queries run under a `QueryGuard`: a time limit enforced by `interrupt()` from a timer, and a
`cancel()` another thread may call (an HTTP client that went away).

The server's queries (`POST /v1/sql`) are also checked by `check_views_only` before they run:
DuckDB's own parse of the query (`json_serialize_sql`, the tree it then binds) is walked, and a
table function that reads files or the process's state (`read_parquet`, `read_csv`, `glob`,
`query`, `arrow_scan`, ...; everything not in `SERVER_TABLE_FUNCTIONS`) or a table name that
would be read as a file (`FROM 'x.parquet'`) is refused wherever it stands: a subquery, a CTE, a
lateral join, a lambda. That is what callers see; the allowed directories stay the boundary
underneath (a caller's database may reach only the folders of the groups it may read:
`Catalog(groups=...)`), so a construct the walk missed still reaches nothing more.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import duckdb
import pyarrow as pa

from tessera.core.errors import InvalidRequestError, TesseraError

#: The largest query text accepted by default (the server's `sql.max_query_bytes`): DuckDB parses
#: a statement holding the interpreter lock (~0.6 s for 220 KiB).
DEFAULT_MAX_QUERY_BYTES = 256 * 1024


class QueryTooLargeError(InvalidRequestError):
    """The query text is longer than the limit: HTTP 413."""

    http_status = 413


class ResultTooLargeError(InvalidRequestError):
    """The encoded result is larger than the limit: HTTP 422 (add a LIMIT or aggregate)."""


class QueryTimeoutError(TesseraError):
    """The query ran past its time limit and was interrupted: DEADLINE_EXCEEDED / HTTP 504."""

    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class QueryCancelledError(TesseraError):
    """The query was cancelled (its caller went away, or the server is stopping): HTTP 503."""

    grpc_code = "CANCELLED"
    http_status = 503


def check_query_size(query: str, max_bytes: int | None) -> None:
    """Refuse a query text longer than `max_bytes` (UTF-8) before DuckDB sees it."""
    if max_bytes is None:
        return
    size = len(query.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise QueryTooLargeError(
            f"sql: the query is {size} bytes, more than the limit of {max_bytes} bytes "
            "(sql.max_query_bytes); put long value lists in a feature group or a spine file"
        )


#: The table functions a server query may call: generators and the catalog's own metadata (what
#: `SHOW TABLES`, `DESCRIBE` and information_schema read), none of which reads a file, a Python
#: object or the process's state. Every other one is refused by `check_views_only`: the file
#: readers (read_parquet, parquet_scan, read_csv*, read_json*, read_text, read_blob, glob,
#: parquet_metadata, sniff_csv, read_duckdb), those that run SQL given as text (query,
#: query_table, json_execute_serialized_sql), Python's scans (arrow_scan, pandas_scan) and the
#: ones with side effects (checkpoint, enable_logging, ...).
SERVER_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_functions", "duckdb_keywords",
    "duckdb_schemas", "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info",
    "pragma_version", "pg_timezone_names", "icu_calendar_names",
})
#: Scalar functions refused as well (they run SQL given as text).
_REFUSED_SCALARS = frozenset({"json_execute_serialized_sql", "query", "query_table"})
#: A table name holding one of these is read as a file by DuckDB's replacement scans.
_FILE_NAME_CHARS = frozenset("./\\:")
_VIEWS_HINT = "query the feature groups' views (SHOW TABLES lists those you may read)"


def check_views_only(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """Refuse a query (one SELECT, already checked) that calls a table function outside
    `SERVER_TABLE_FUNCTIONS` or names a file as a table, wherever in the query; the names of
    the tables and views it refers to (CTE names included), in order.

    Raises InvalidRequestError ("Permission Error: ..."), or duckdb.Error when DuckDB cannot
    parse the query (the caller translates it)."""
    rows = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchall()
    names: list[str] = []

    def visit(node: dict[str, Any]) -> dict[str, Any]:
        # Called by the JSON parser for every object of the tree, wherever it stands (a walk
        # of our own over the parsed tree cost 0.8 s more on a 256 KiB query).
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in SERVER_TABLE_FUNCTIONS:
                raise InvalidRequestError(
                    f"sql: Permission Error: the table function {name}() is not available over "
                    f"SQL (no query reads files or the server's state); {_VIEWS_HINT}"
                )
        elif kind == "FUNCTION" and node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in _REFUSED_SCALARS:
                raise InvalidRequestError(
                    f"sql: Permission Error: the function {name}() is not available over SQL; "
                    f"{_VIEWS_HINT}"
                )
        elif kind in ("BASE_TABLE", "SHOW_REF"):
            name = str(node.get("table_name") or "")
            if _FILE_NAME_CHARS.intersection(name):
                raise InvalidRequestError(
                    f"sql: Permission Error: '{name}' names a file, and no query over SQL reads "
                    f"files; {_VIEWS_HINT}"
                )
            if name:
                names.append(name)
        return node

    tree = json.loads(str(rows[0][0]), object_hook=visit) if rows else {"error": True}
    if tree.get("error") or not isinstance(tree.get("statements"), list):
        raise InvalidRequestError(
            f"sql: the query cannot be checked, so it is not run: {tree.get('error_message', '')}"
        )
    return names


def _dir(path: str) -> str:
    return path.rstrip("/") + "/"


def sandbox_connection(
    allowed_directories: Iterable[str],
    *,
    settings: Mapping[str, object],
) -> duckdb.DuckDBPyConnection:
    """A new in-memory database that can reach files under `allowed_directories` only (local
    paths, made absolute, or URI prefixes), with `settings` applied, and its configuration locked.

    Set-up statements that need more (views) are run by the caller on the returned connection:
    creating a view is not a configuration change.
    """
    con, _ = sandbox_connections(allowed_directories, settings=settings)
    return con


def sandbox_connections(
    allowed_directories: Iterable[str],
    *,
    settings: Mapping[str, object],
    session_settings: Mapping[str, object] | None = None,
    sessions: int = 0,
) -> tuple[duckdb.DuckDBPyConnection, list[duckdb.DuckDBPyConnection]]:
    """`sandbox_connection`, and `sessions` more connections to the same database with
    `session_settings` applied before the configuration is locked.

    Some settings exist per connection only (DuckDB's progress tracking, which
    `query_progress()` reads) and a new cursor starts from the defaults: once the configuration
    is locked, only these connections have them.
    """
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # Our SQL must never resolve a name to a Python variable of some caller's frame.
            "python_enable_replacements": False,
        },
    )
    extra: list[duckdb.DuckDBPyConnection] = []
    try:
        for name, value in settings.items():
            con.execute(f"SET GLOBAL {name} = {sql_literal(value)}")
        for _ in range(sessions):
            extra.append(con.cursor())
            for name, value in (session_settings or {}).items():
                extra[-1].execute(f"SET SESSION {name} = {sql_literal(value)}")
        dirs = [_dir(d if "://" in d else os.path.abspath(d)) for d in allowed_directories]
        # Order matters: the list is fixed first, then external access is switched off (DuckDB
        # refuses to re-enable it while the database runs), then every setting is frozen.
        con.execute(f"SET allowed_directories = [{', '.join(sql_literal(d) for d in dirs)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        for c in extra:
            c.close()
        con.close()
        raise
    return con, extra


def sql_literal(value: object) -> str:
    """A Python bool, int or text as a SQL literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class QueryGuard:
    """Runs a cursor's statement under a time limit, and lets another thread cancel it.

        with QueryGuard(cur, timeout_s=60) as guard:
            table = cur.sql(query).to_arrow_table()

    On timeout the cursor is interrupted and QueryTimeoutError leaves the block; after
    `cancel()`, QueryCancelledError. DuckDB checks for an interrupt between its pipeline steps,
    so a running scan, join or sort stops within milliseconds.
    """

    def __init__(self, cur: duckdb.DuckDBPyConnection, timeout_s: float | None) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidRequestError(f"timeout_s must be positive, got {timeout_s}")
        self._cur = cur
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._reason: str | None = None  # "timeout" or "cancelled", once interrupted
        self._done = False
        self._timer: threading.Timer | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        """Interrupt the statement now (from any thread); no-op once the block has left."""
        with self._lock:
            if self._done or self._reason is not None:
                return
            self._reason = reason
            self._cur.interrupt()

    @property
    def interrupted(self) -> bool:
        return self._reason is not None

    def __enter__(self) -> QueryGuard:
        if self.timeout_s is not None:
            self._timer = threading.Timer(self.timeout_s, self.cancel, ("timeout",))
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if exc is None or self._reason is None:
            return
        # DuckDB raises InterruptException; through Arrow's stream interface it is an OSError.
        if not isinstance(exc, duckdb.InterruptException | OSError | pa.ArrowException):
            return
        if self._reason == "timeout":
            raise QueryTimeoutError(
                f"sql: the query ran longer than its time limit of {self.timeout_s:g} s and was "
                "stopped (sql.timeout_s); narrow it with WHERE or LIMIT, or aggregate"
            ) from exc
        raise QueryCancelledError(f"sql: the query was cancelled ({self._reason})") from exc
