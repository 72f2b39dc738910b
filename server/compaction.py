"""Compaction of the offline store: merge a partition's small files into one, clustered by
(record id, event time, write order) so point-in-time joins read sorted runs.

The merged file is built in a hidden sibling folder, then swapped with the partition folder in one
atomic `renameat2(RENAME_EXCHANGE)`: a reader sees either all the old files or the merged one,
never both and never neither. The merge keeps every row and every column value, so no query
result changes. The flusher's lock is held meanwhile, so no new file lands in a swapped folder.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.core import offline_layout as layout
from tessera.core.schema import FeatureGroup
from tessera.server.offline_writer import ParquetOfflineWriter, _fsync_dir

log = logging.getLogger(__name__)

_PART = re.compile(r"^part-(\d{20})-(\d{20})\.parquet$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class CompactionResult:
    partitions_compacted: int
    files_before: int
    files_after: int
    rows: int


#: Compacts a group's partitions holding at least N files: in this process
#: (`local_compactor`), or in the writer process of --workers N (`WriterClient.compact_group`).
Compactor = Callable[[FeatureGroup, int], Awaitable[CompactionResult]]


def local_compactor(writer: ParquetOfflineWriter) -> Compactor:
    """Compaction in this process, which owns `writer` and its flusher (a thread each time)."""

    async def compact(group: FeatureGroup, min_files: int) -> CompactionResult:
        return await asyncio.to_thread(compact_group, writer, group, min_files)

    return compact


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2 exchange of {a} and {b}: {os.strerror(err)}")


def compact_group(
    writer: ParquetOfflineWriter, group: FeatureGroup, min_files: int = 2,
    memory_limit: str = "1GB",
) -> CompactionResult:
    """Compact every partition of `group` holding at least `min_files` files."""
    folder = writer.folder(group, retired=False)
    result = CompactionResult(0, 0, 0, 0)
    for partition in sorted(folder.glob(f"{layout.EVENT_DATE}=*")):
        _clean_leftovers(partition)
        with writer.lock:
            files = sorted(p for p in partition.glob("*.parquet") if _PART.match(p.name))
            if len(files) < min_files:
                continue
            rows = _merge(group, files, partition, memory_limit)
        result = CompactionResult(
            result.partitions_compacted + 1, result.files_before + len(files),
            result.files_after + 1, result.rows + rows,
        )
    return result


def _merge(group: FeatureGroup, files: list[Path], partition: Path, memory_limit: str) -> int:
    seqs = [tuple(int(x) for x in _PART.match(f.name).groups()) for f in files]  # type: ignore[union-attr]
    name = layout.part_file_name(min(s[0] for s in seqs), max(s[1] for s in seqs))
    staging = partition.with_name(f".{partition.name}.compact")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    schema = layout.arrow_schema(group)
    id_col = group.definition.record_identifier_feature_name
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": os.cpu_count() or 1})
    try:
        paths = [str(f) for f in files]
        reader = con.execute(
            "SELECT * FROM read_parquet($files, union_by_name=true) "
            f'ORDER BY "{id_col}", {layout.EVENT_TIME}, {layout.SEQ}',
            {"files": paths},
        ).to_arrow_reader(64 * 1024)
        if reader is None:
            raise RuntimeError("DuckDB returned no result for the merge query")
        rows = 0
        out = staging / name
        with open(out, "wb") as f:
            with pq.ParquetWriter(f, schema, compression="zstd") as pw:
                for batch in reader:
                    # Columns in the group's order and types (older files may lack new features).
                    cols = [
                        batch.column(batch.schema.get_field_index(field.name)).cast(field.type)
                        if field.name in batch.schema.names
                        else pa.nulls(batch.num_rows, type=field.type)
                        for field in schema
                    ]
                    pw.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
                    rows += batch.num_rows
            f.flush()
            os.fsync(f.fileno())
    finally:
        con.close()
    _fsync_dir(staging)
    exchange(staging, partition)  # staging now holds the old files
    _fsync_dir(partition.parent)
    shutil.rmtree(staging)
    return rows


def _clean_leftovers(partition: Path) -> None:
    """A crash mid-compaction leaves only a hidden staging folder: remove it."""
    shutil.rmtree(partition.with_name(f".{partition.name}.compact"), ignore_errors=True)
