"""Rendering a query result: JSON rows, CSV, Parquet, or a text table for a terminal.

Every type the offline store holds and DuckDB can return is rendered, none fails:

JSON values   numbers as numbers (integers of any size; NaN, Infinity, -Infinity as the strings
              "NaN", "Infinity", "-Infinity"), DECIMAL and HUGEINT as strings (exact), booleans,
              nulls, text; TIMESTAMP as ISO-8601 ("2023-11-14T22:13:20.5", with "+00:00" for
              TIMESTAMPTZ), DATE and TIME as ISO-8601, dates beyond years 1-9999 with as many digits
              as needed ("+20599-06-21", "-0005-01-01"), DuckDB's infinities as "infinity" /
              "-infinity"; INTERVAL as an ISO-8601 duration ("P1M2DT3.5S"); BLOB as base64; lists
              and vectors as arrays; STRUCT as an object; MAP as an object with its keys as text;
              UNION as its value.
Parquet       as DuckDB returns it, but for the types Parquet cannot hold (INTERVAL, UNION, and
              nested types holding them): those columns become text, an interval as an ISO-8601
              duration, anything else as its JSON text.
CSV           DuckDB's CSV writer (every type, lists and structs as DuckDB's text form).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb.sqltypes import DuckDBPyType

from tessera.core.errors import InvalidRequestError

ResultFormat = Literal["table", "csv", "parquet"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("table", "csv", "parquet")

_US_PER_DAY = 86_400_000_000
_DATE_INF = 2**31 - 1
_TS_INF = 2**63 - 1


# --- JSON ----------------------------------------------------------------------------------------


def json_rows(table: pa.Table) -> list[list[Any]]:
    """The table's rows as lists of JSON-ready values (see the module docstring)."""
    columns = [_json_column(table.column(i)) for i in range(table.num_columns)]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def json_result(table: pa.Table, row_count: int, truncated: bool) -> bytes:
    """The body of a JSON answer: columns, rows, the total row count, whether rows were cut."""
    body = {
        "columns": table.column_names,
        "rows": json_rows(table),
        "row_count": row_count,
        "truncated": truncated,
    }
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


_PLAIN = (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string, pa.types.is_boolean,
          pa.types.is_null)


def _json_column(col: pa.ChunkedArray) -> list[Any]:
    if any(check(col.type) for check in _PLAIN):
        plain: list[Any] = col.to_pylist()  # already JSON values
        return plain
    if _contains(col.type, pa.types.is_map):  # to_pylist makes pairs; an object is wanted
        return [_scalar_json(s) for chunk in col.chunks for s in chunk]
    try:
        return [_jsonable(v) for v in col.to_pylist()]
    except (OverflowError, ValueError, pa.ArrowException):
        # A value Python's datetime cannot hold (year > 9999, DuckDB's infinity): walk Arrow's
        # own values instead, slower, for this column only.
        return [_scalar_json(s) for chunk in col.chunks for s in chunk]


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else _nonfinite(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, pa.MonthDayNano):  # a named tuple: before lists and tuples
        return iso_interval(v.months, v.days, v.nanoseconds)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dt.timedelta):
        return iso_interval(0, 0, (v // dt.timedelta(microseconds=1)) * 1000)
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)


def _nonfinite(v: float) -> str:
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def iso_interval(months: int, days: int, nanoseconds: int) -> str:
    """An interval as an ISO-8601 duration, each part signed: P1M-2DT3.5S; zero is PT0S."""
    out = "P"
    if months:
        years, rest = divmod(abs(months), 12)
        sign = "-" if months < 0 else ""
        out += (f"{sign}{years}Y" if years else "") + (f"{sign}{rest}M" if rest else "")
    if days:
        out += f"{days}D"
    if nanoseconds:
        sign = "-" if nanoseconds < 0 else ""
        hours, rem = divmod(abs(nanoseconds), 3_600_000_000_000)
        minutes, rem = divmod(rem, 60_000_000_000)
        secs, frac = divmod(rem, 1_000_000_000)
        out += "T" + (f"{sign}{hours}H" if hours else "") + (f"{sign}{minutes}M" if minutes else "")
        if secs or frac:
            text = f"{secs}.{frac:09d}".rstrip("0").rstrip(".") if frac else str(secs)
            out += f"{sign}{text}S"
    return out if out != "P" else "PT0S"


def _civil(days: int) -> str:
    """Days since 1970-01-01 as an ISO-8601 date, any year (proleptic Gregorian)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    ytext = f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):04d}"
    return f"{ytext}-{month:02d}-{day:02d}"


_UNIT_US = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": 1}


def _timestamp_text(value: int, unit: str, tz: str | None) -> str:
    if value in (_TS_INF, -_TS_INF):
        return "infinity" if value > 0 else "-infinity"
    if unit == "ns":
        us, ns = divmod(value, 1000)
    else:
        us, ns = value * _UNIT_US[unit], 0
    days, rem = divmod(us, _US_PER_DAY)
    secs, micros = divmod(rem, 1_000_000)
    hh, rem_s = divmod(secs, 3600)
    mm, ss = divmod(rem_s, 60)
    text = f"{_civil(days)}T{hh:02d}:{mm:02d}:{ss:02d}"
    if micros or ns:
        text += f".{micros:06d}" + (f"{ns:03d}" if ns else "")
    return text + ("+00:00" if tz is not None else "")


def _scalar_json(s: pa.Scalar) -> Any:
    """One Arrow value as JSON, for the values `to_pylist` cannot convert."""
    if not s.is_valid:
        return None
    t = s.type
    if pa.types.is_date32(t) or pa.types.is_date64(t):
        days = s.cast(pa.int32()).as_py() if pa.types.is_date32(t) else (
            s.cast(pa.int64()).as_py() // 86_400_000
        )
        if abs(days) == _DATE_INF:
            return "infinity" if days > 0 else "-infinity"
        return _civil(days)
    if pa.types.is_timestamp(t):
        return _timestamp_text(s.cast(pa.int64()).as_py(), t.unit, t.tz)
    if pa.types.is_map(t):
        pairs = s.values
        if pairs is None:
            return {}
        return {str(_scalar_json(k)): _scalar_json(v)
                for k, v in zip(pairs.field(0), pairs.field(1), strict=True)}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [_scalar_json(x) for x in s.values]
    if pa.types.is_struct(t):
        return {t.field(i).name: _scalar_json(s[i]) for i in range(t.num_fields)}
    if pa.types.is_union(t) or pa.types.is_dictionary(t):
        return _scalar_json(s.value)
    try:
        return _jsonable(s.as_py())
    except (OverflowError, ValueError, pa.ArrowException):
        return str(s)


def _contains(t: pa.DataType, pred: Callable[[pa.DataType], bool]) -> bool:
    if pred(t):
        return True
    if pa.types.is_dictionary(t):
        return _contains(t.value_type, pred)
    return any(_contains(t.field(i).type, pred) for i in range(getattr(t, "num_fields", 0)))


# --- Parquet and CSV -----------------------------------------------------------------------------


def _parquet_unfit(t: pa.DataType) -> bool:
    return bool(pa.types.is_interval(t) or pa.types.is_union(t))


def parquet_ready(table: pa.Table) -> pa.Table:
    """`table` with the columns Parquet cannot hold turned into text (see the module docstring)."""
    for i, field in enumerate(table.schema):
        if not _contains(field.type, _parquet_unfit):
            continue
        values = _json_column(table.column(i))
        texts = [
            None if v is None else (v if isinstance(v, str) else json.dumps(v, allow_nan=False))
            for v in values
        ]
        table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(texts, pa.string()))
    return table


def parquet_writable_type(t: DuckDBPyType) -> str | None:
    """The type to cast a column of type `t` to before DuckDB's Parquet writer writes it, or
    None when `t` needs no cast: every fixed-size ARRAY in it made a LIST.

    DuckDB's writer (2.0, duckdb/duckdb#24731) writes a null ARRAY with one level entry per
    slot instead of one per row: DuckDB reads the file back, pyarrow refuses it ("Length spanned
    by list offsets ... larger than values array"). The file's schema does not change: Parquet
    has no fixed-size list, DuckDB writes an ARRAY as a LIST anyway.
    """
    return _without_arrays(t) if _has_array(t) else None


def _nested(t: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    if t.id not in ("array", "list", "struct", "map"):
        return []
    return [(str(name), child) for name, child in t.children
            if isinstance(child, DuckDBPyType)]


def _has_array(t: DuckDBPyType) -> bool:
    return t.id == "array" or any(_has_array(child) for _, child in _nested(t))


def _without_arrays(t: DuckDBPyType) -> str:
    children = _nested(t)
    if t.id in ("array", "list"):
        return _without_arrays(children[0][1]) + "[]"
    if t.id == "struct":
        fields = ", ".join(
            '"' + name.replace('"', '""') + '" ' + _without_arrays(child)
            for name, child in children
        )
        return f"STRUCT({fields})"
    if t.id == "map":
        return f"MAP({_without_arrays(children[0][1])}, {_without_arrays(children[1][1])})"
    return str(t)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(parquet_ready(table), buf)
    return buf.getvalue()


def csv_text(table: pa.Table, out_path: str | Path | None = None) -> str | None:
    """The table as CSV with a header: the text, or None once written to `out_path`."""
    # DuckDB writes every type (lists and vectors included, which Arrow's CSV writer refuses).
    # A database of its own, no query text from outside: only our COPY runs on it.
    target = Path(out_path) if out_path is not None else None
    tmp_dir = None
    if target is None:
        tmp_dir = tempfile.mkdtemp(prefix="tessera-csv-")
        target = Path(tmp_dir) / "result.csv"
    con = duckdb.connect(":memory:", config={"autoload_known_extensions": False,
                                             "autoinstall_known_extensions": False})
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("result", table)
        path = "'" + str(target).replace("'", "''") + "'"
        con.execute(f"COPY (SELECT * FROM result) TO {path} (FORMAT csv, HEADER)")
        return None if out_path is not None else target.read_text()
    finally:
        con.close()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


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
        return csv_text(table, out_path)
    if fmt == "parquet":
        if out_path is None:
            return parquet_bytes(table)
        pq.write_table(parquet_ready(table), str(out_path))
        return None
    raise InvalidRequestError(f"format '{fmt}' is not valid; allowed: {', '.join(RESULT_FORMATS)}")


_NUMERIC = re.compile(r"^-?[\d.]+(?:e[+-]?\d+)?$|^-?(?:inf|nan)$")


def render_text_table(table: pa.Table, *, max_rows: int | None = None) -> str:
    """An aligned text table, numbers right-aligned, nulls as NULL, and a row count footer."""
    shown = table if max_rows is None else table.slice(0, max_rows)
    names = table.column_names
    cells = [[_cell(v) for v in _json_column(col)] for col in shown.columns]
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


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, allow_nan=False) if isinstance(value, list | dict) else str(value)
