"""Query results render for every type DuckDB returns: strict JSON, Parquet and CSV (property
tests over values DuckDB itself makes)."""

from __future__ import annotations

import base64
import io
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core.sql_results import csv_text, iso_interval, json_result, parquet_bytes

MIN_US = -9_214_000_000_000_000_000  # DuckDB's timestamp range, about years -290308..294247
MAX_US = 9_214_000_000_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _strict(text: bytes) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _float_sql(x: float) -> str:
    return f"CAST('{x!r}' AS DOUBLE)" if not math.isfinite(x) else f"CAST({x!r} AS DOUBLE)"


row = st.fixed_dictionaries({
    "ts_us": st.integers(MIN_US, MAX_US),
    "double": st.floats(allow_nan=True, allow_infinity=True),
    "f32": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "blob": st.binary(max_size=16),
    "interval": st.tuples(st.integers(-1000, 1000), st.integers(-1000, 1000),
                          st.integers(-10**12, 10**12)),
    "decimal": st.decimals(min_value=-10**14, max_value=10**14, places=3, allow_nan=False),
    "huge": st.integers(-(2**127) + 1, 2**127 - 1),
    "special": st.sampled_from(["infinity", "-infinity", "epoch"]),
    "null": st.booleans(),
})


def _select(r: dict[str, Any]) -> str:
    m, d, us = r["interval"]
    ts = f"make_timestamp({r['ts_us']}::BIGINT)"
    cols = {
        "ts": ts,
        "tstz": f"CAST({ts} AS TIMESTAMPTZ)",
        "d": f"CAST({ts} AS DATE)",
        "special_d": f"DATE '{r['special']}'",
        "special_ts": f"TIMESTAMP '{r['special']}'",
        "x": _float_sql(r["double"]),
        "b": f"from_hex('{r['blob'].hex()}')",
        "iv": f"to_months({m}) + to_days({d}) + to_microseconds({us}::BIGINT)",
        "dec": f"CAST('{r['decimal']}' AS DECIMAL(18, 3))",
        "h": f"CAST('{r['huge']}' AS HUGEINT)",
        "lst": f"[{ts}, NULL]",
        "st": f"{{'iv': to_days({d}), 'b': from_hex('{r['blob'].hex()}'), 'x': {_float_sql(r['double'])}}}",
        "mp": f"MAP {{1: {_float_sql(r['double'])}}}",
        "v": f"CAST([{_float_sql(r['f32'])}, 1.5] AS FLOAT[2])",
        "u": "CAST(union_value(k := 1) AS UNION(k INTEGER, s VARCHAR))",
        "n": "NULL" if r["null"] else "CAST(NULL AS TIMESTAMP)",
    }
    return "SELECT " + ", ".join(f"{e} AS {c}" for c, e in cols.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row, min_size=1, max_size=3))
def test_every_duckdb_value_renders_as_strict_json_parquet_and_csv(rows: list[dict[str, Any]]) -> None:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    query = " UNION ALL ".join(_select(r) for r in rows)
    table = con.sql(query).to_arrow_table()
    years = [y for (y,) in con.sql(f"SELECT year(ts) FROM ({query})").fetchall()]

    body = _strict(json_result(table, table.num_rows, False))
    assert body["columns"] == table.column_names
    for r, out, year in zip(rows, body["rows"], years, strict=True):
        got = dict(zip(body["columns"], out, strict=True))
        if 1 <= year <= 9999:
            want = EPOCH + timedelta(microseconds=r["ts_us"])
            assert datetime.fromisoformat(got["ts"]).replace(tzinfo=UTC) == want
            assert datetime.fromisoformat(got["tstz"]) == want
            assert got["d"] == want.date().isoformat()
        else:
            sign = "-" if year < 0 else "+"
            assert got["ts"].startswith(f"{sign}{abs(year):04d}-"), (got["ts"], year)
        assert got["lst"][0] == got["ts"] and got["lst"][1] is None
        if r["special"] == "epoch":
            assert got["special_d"] == "1970-01-01" and got["special_ts"] == "1970-01-01T00:00:00"
        else:
            assert got["special_d"] == got["special_ts"] == r["special"]
        x = r["double"]
        want_x: Any = x if math.isfinite(x) else ("NaN" if math.isnan(x) else
                                                 ("Infinity" if x > 0 else "-Infinity"))
        assert got["x"] == want_x and got["st"]["x"] == want_x and got["mp"] == {"1": want_x}
        assert base64.b64decode(got["b"]) == r["blob"] == base64.b64decode(got["st"]["b"])
        m, d, us = r["interval"]
        assert got["iv"] == iso_interval(m, d, us * 1000)
        assert got["st"]["iv"] == iso_interval(0, d, 0)
        assert Decimal(got["dec"]) == r["decimal"]
        assert int(got["h"]) == r["huge"]
        assert got["u"] == 1 and got["n"] is None
        assert len(got["v"]) == 2

    back = pq.ParquetFile(io.BytesIO(parquet_bytes(table))).read()
    assert back.num_rows == table.num_rows
    assert back.column("iv").to_pylist() == [g[body["columns"].index("iv")] for g in body["rows"]]
    text = csv_text(table)
    assert text is not None and len(text.splitlines()) >= table.num_rows + 1


def test_iso_intervals() -> None:
    assert iso_interval(0, 0, 0) == "PT0S"
    assert iso_interval(14, 2, 3_500_000_000) == "P1Y2M2DT3.5S"
    assert iso_interval(-1, 0, -3_600_000_000_000) == "P-1MT-1H"
