"""The offline store's catalog: a DuckDB connection with one view per feature group.

The open counterpart of the Glue Data Catalog that SageMaker creates. Each group folder of the
offline store (see `offline_layout`) becomes a view named after the group:

    read_parquet('<root>/<group>/event_date=*/*.parquet', hive_partitioning, union_by_name)
    UNION ALL BY NAME  <an empty row set with every column `_group.json` declares>

The empty branch gives the view the group's declared columns and types even where no file holds
a column yet (a feature added since the last write), and a group with no files at all. The `sql()`
path runs one SELECT and nothing else; `format_result` renders a result for the CLI and HTTP.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from tessera.core import offline_layout as layout
from tessera.core.errors import FeatureGroupNotFoundError, InvalidRequestError, StorageError
from tessera.core.schema import NAME_PATTERN, CollectionType, FeatureGroup, FeatureType, ScalarType

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = "4GB"
ResultFormat = Literal["table", "csv", "parquet"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("table", "csv", "parquet")

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


@dataclass(frozen=True)
class _ViewState:
    group_json: str
    has_files: bool


class Catalog:
    """One DuckDB database whose views are the offline store's feature groups.

    `root` is a local path or a URI DuckDB can read (s3://... with the httpfs extension).
    DuckDB spills to `temp_directory` (a private temporary folder by default, removed on close)
    beyond `memory_limit`, so joins larger than RAM complete. With `restrict_files`, queries can
    read nothing but the offline store (for a catalog served over HTTP).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
        temp_directory: str | Path | None = None,
        threads: int | None = None,
        restrict_files: bool = False,
    ) -> None:
        text = str(root)
        if text.startswith("file://"):
            text = text[len("file://") :]
        self.root = text if "://" in text else os.path.abspath(text)
        if temp_directory is None:
            temp_directory = tempfile.mkdtemp(prefix="tessera-duckdb-")
            # DuckDB deletes its spill files but not the folder we made for them.
            self._cleanup = weakref.finalize(self, shutil.rmtree, temp_directory, True)
        self.temp_directory = str(temp_directory)
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._views: dict[str, _ViewState] = {}
        self._groups: dict[str, FeatureGroup] = {}
        settings = {
            "memory_limit": memory_limit,
            "temp_directory": self.temp_directory,
            "threads": threads or os.cpu_count() or 1,
            # Naive timestamps are UTC and TIMESTAMPTZ values come out in UTC.
            "TimeZone": "UTC",
            # Our SQL must never resolve a name to a Python variable of some caller's frame.
            "python_enable_replacements": False,
            # Footers are read at bind and at scan; files never change once renamed into place.
            "parquet_metadata_cache": True,
        }
        with duckdb_errors("offline store settings"):
            for name, value in settings.items():
                self._con.execute(f"SET GLOBAL {name} = {_literal(value)}")
            if restrict_files:
                dirs = ", ".join(
                    quote_literal(d.rstrip("/") + "/") for d in (self.root, self.temp_directory)
                )
                self._con.execute(f"SET allowed_directories = [{dirs}]")
                self._con.execute("SET enable_external_access = false")
                self._con.execute("SET lock_configuration = true")
        self.refresh()

    # --- groups ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up groups, schema versions and first files written since the last refresh.

        Views over a glob see new files by themselves; a view is rebuilt only when its group's
        `_group.json` changes or its first file appears (the empty view has no glob to follow).
        """
        pattern = f"{self.root}/*/{layout.GROUP_FILE}"
        with self._lock, duckdb_errors("offline store catalog"):
            rows = self._con.sql(
                f"SELECT filename, content FROM read_text({quote_literal(pattern)})"
            ).fetchall()
            found: dict[str, str] = {}
            for filename, content in rows:
                name = str(filename).replace("\\", "/").rsplit("/", 2)[-2]
                if NAME_PATTERN.match(name):  # skips hidden folders (compaction, retired groups)
                    found[name] = str(content)
            for name in set(self._views) - set(found):
                self._con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
                del self._views[name]
                del self._groups[name]
            for name, content in found.items():
                state = _ViewState(content, self._has_files(name))
                if self._views.get(name) == state:
                    continue
                try:
                    group = FeatureGroup.model_validate_json(content)
                except ValidationError as exc:
                    # One unreadable group must not hide the others; it is logged, and
                    # asking for it by name says it does not exist.
                    log.warning(
                        "skipping offline group %s: bad %s: %s", name, layout.GROUP_FILE, exc
                    )
                    continue
                self._con.execute(
                    f"CREATE OR REPLACE VIEW {quote_ident(name)} AS "
                    + self.group_source_sql(name, group, has_files=state.has_files)
                )
                self._views[name] = state
                self._groups[name] = group

    def _has_files(self, name: str) -> bool:
        glob = quote_literal(layout.parquet_glob(self.root, name))
        rows = self._con.sql(f"SELECT 1 FROM glob({glob}) LIMIT 1").fetchall()
        return bool(rows)

    def group_source_sql(self, name: str, group: FeatureGroup, *, has_files: bool) -> str:
        """The SELECT behind a group's view (see the module docstring)."""
        carrier = ", ".join(
            f"CAST(NULL AS {t}) AS {quote_ident(c)}" for c, t in declared_columns(group).items()
        )
        empty = f"SELECT {carrier} LIMIT 0"
        if not has_files:
            return empty
        glob = quote_literal(layout.parquet_glob(self.root, name))
        return (
            f"SELECT * FROM read_parquet({glob}, hive_partitioning = true, union_by_name = true) "
            f"UNION ALL BY NAME ({empty})"
        )

    def group_names(self) -> list[str]:
        """The feature groups of the store, sorted (as of the last refresh)."""
        return sorted(self._groups)

    def group(self, name: str) -> FeatureGroup:
        """A group's definition from its `_group.json`; FeatureGroupNotFoundError if none."""
        try:
            return self._groups[name]
        except KeyError:
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

    def sql(self, query: str) -> pa.Table:
        """Run one read-only query over the groups' views; the result as an Arrow table."""
        cur = self.cursor()
        try:
            check_select_only(cur, query)
            self.refresh()
            with duckdb_errors("sql"):
                table: pa.Table = cur.sql(query).to_arrow_table()
            return table
        finally:
            cur.close()

    def close(self) -> None:
        """Close the database and remove the temporary folder this catalog made."""
        self._con.close()
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return quote_literal(str(value))


# --- rendering results (the CLI and the HTTP endpoint) -----------------------------------------

_NUMERIC = re.compile(r"^-?[\d.]+(?:e[+-]?\d+)?$|^-?(?:inf|nan)$")


def format_result(
    table: pa.Table,
    fmt: ResultFormat,
    out_path: str | Path | None = None,
    *,
    max_rows: int | None = None,
) -> str | bytes | None:
    """Render a query result: a text `table` (for a terminal), `csv`, or `parquet`.

    With `out_path` the result is written there and None is returned; without it, "table" and
    "csv" return text and "parquet" returns the file's bytes. `max_rows` caps a text table only.
    """
    if fmt == "table":
        text = render_text_table(table, max_rows=max_rows)
        if out_path is None:
            return text
        Path(out_path).write_text(text)
        return None
    if fmt == "csv":
        return _csv(table, out_path)
    if fmt == "parquet":
        if out_path is None:
            buf = io.BytesIO()
            pq.write_table(table, buf)
            return buf.getvalue()
        pq.write_table(table, str(out_path))
        return None
    raise InvalidRequestError(f"format '{fmt}' is not valid; allowed: {', '.join(RESULT_FORMATS)}")


def _csv(table: pa.Table, out_path: str | Path | None) -> str | None:
    # DuckDB writes every type (lists and vectors included, which Arrow's CSV writer refuses).
    target = Path(out_path) if out_path is not None else None
    tmp_dir = None
    if target is None:
        tmp_dir = tempfile.mkdtemp(prefix="tessera-csv-")
        target = Path(tmp_dir) / "result.csv"
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("result", table)
        con.execute(
            f"COPY (SELECT * FROM result) TO {quote_literal(str(target))} (FORMAT csv, HEADER)"
        )
        return None if out_path is not None else target.read_text()
    finally:
        con.close()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def render_text_table(table: pa.Table, *, max_rows: int | None = None) -> str:
    """An aligned text table, numbers right-aligned, nulls as NULL, and a row count footer."""
    shown = table if max_rows is None else table.slice(0, max_rows)
    names = table.column_names
    cells = [[_cell(v) for v in col.to_pylist()] for col in shown.columns]
    widths = [max([len(n), *(len(c) for c in col)]) for n, col in zip(names, cells, strict=True)]
    right = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if r and _NUMERIC.match(v) else v.ljust(w)
            for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [rule, line(names), rule]
    out += [line([col[i] for col in cells]) for i in range(shown.num_rows)]
    out.append(rule)
    count = f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}"
    if shown.num_rows < table.num_rows:
        count += f", {shown.num_rows} shown"
    out.append(count + ")")
    return "\n".join(out) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)
