"""Bulk import (backfill): a Parquet / CSV file, a DataFrame or an Arrow table into a group.

Every row is validated first, with the same rules and messages as PutRecord; if any row is bad,
the import stops before writing anything and reports the bad rows by number. Then rows go in
PutRecords batches: every row lands in the offline store's history (its `tessera_source` is
"import:<name>#<row>"), and the online store keeps the latest row per record id by event time.
An interrupted import can be run again: online, event-time ordering makes it idempotent; offline,
repeated rows carry the same source and the same values, so point-in-time results do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tessera.core.errors import InvalidRequestError
from tessera.core.records import validate_record
from tessera.core.schema import CompiledSchema
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb

if TYPE_CHECKING:
    import pyarrow as pa

    from tessera.client.sync import FeatureStoreClient

MAX_REPORTED_ERRORS = 50
_CHUNK = 10_000


@dataclass(frozen=True)
class ImportResult:
    rows: int
    written: int


def load_table(data: Any) -> tuple[pa.Table, str]:
    """An Arrow table and a name for it, from a path (.parquet / .csv), DataFrame or table."""
    import pyarrow as pa

    if isinstance(data, str | Path):
        path = Path(data)
        if not path.exists():
            raise InvalidRequestError(f"'{path}' does not exist")
        if path.suffix.lower() in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            opts = pacsv.ParseOptions(delimiter=delimiter)
            return pacsv.read_csv(path, parse_options=opts), path.name
        import pyarrow.parquet as pq

        return pq.read_table(path), path.name
    if isinstance(data, pa.Table):
        return data, "table"
    try:
        return pa.Table.from_pandas(data, preserve_index=False), "dataframe"
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(
            f"cannot import a {type(data).__name__}: give a Parquet/CSV path, a pandas "
            "DataFrame or a pyarrow Table"
        ) from exc


def _records(table: pa.Table) -> Iterator[tuple[int, pb.Record]]:
    row = 1
    for batch in table.to_batches(max_chunksize=_CHUNK):
        for values in batch.to_pylist():
            yield row, to_record(values)
            row += 1


def check_rows(schema: CompiledSchema, table: pa.Table) -> list[str]:
    """Every bad row's error (up to MAX_REPORTED_ERRORS), as 'row N: ...' (1-based)."""
    unknown = [c for c in table.column_names if c not in schema.features]
    if unknown:
        known = ", ".join(schema.features)
        return [f"column '{c}' is not a feature of '{schema.group_name}'; known: {known}"
                for c in unknown]
    errors: list[str] = []
    for row, record in _records(table):
        try:
            validate_record(schema, record, where=f"row {row}")
        except InvalidRequestError as exc:
            errors.append(exc.message)
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    return errors


def import_table(
    client: FeatureStoreClient,
    feature_group_name: str,
    data: Any,
    *,
    batch_size: int = 1000,
    progress: bool | None = None,
) -> ImportResult:
    """Validate every row, then write them all (see the module docstring)."""
    from tqdm import tqdm

    table, name = load_table(data)
    schema = CompiledSchema.from_description(client.describe_feature_group(feature_group_name))
    errors = check_rows(schema, table)
    if errors:
        more = " (first shown)" if len(errors) >= MAX_REPORTED_ERRORS else ""
        raise InvalidRequestError(
            f"{len(errors)} bad rows{more} in {name}; nothing was imported:\n  "
            + "\n  ".join(errors)
        )
    written = 0
    bar = tqdm(total=table.num_rows, unit="rows", desc=f"import {name}",
               disable=None if progress is None else not progress)  # None: only on a TTY
    try:
        pending: list[pb.Record] = []
        sources: list[str] = []
        for row, record in _records(table):
            pending.append(record)
            sources.append(f"import:{name}#{row}")
            if len(pending) >= batch_size:
                written += client.put_records(feature_group_name, pending, sources=sources)
                bar.update(len(pending))
                pending, sources = [], []
        if pending:
            written += client.put_records(feature_group_name, pending, sources=sources)
            bar.update(len(pending))
    finally:
        bar.close()
    return ImportResult(rows=table.num_rows, written=written)
