"""The one DuckDB sandbox every SQL entry point runs in (the server's `POST /v1/sql`, the SDK's
`OfflineStore.sql`, the local `tessera sql`, SQL spines and the dataset builder).

A sandboxed database reads and writes files under its allowed directories only (the offline
store's root and DuckDB's own temporary folder): `read_text('/etc/passwd')`, `glob('/')`, a CSV
outside the root or a URL are refused with a PermissionException. It never installs or loads an
extension by itself, and its configuration is locked once set up, so a query cannot widen it.
Queries run under a `QueryGuard`: a time limit enforced by `interrupt()` from a timer, and a
`cancel()` another thread may call (an HTTP client that went away).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType

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
