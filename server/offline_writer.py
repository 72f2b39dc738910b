"""The offline store's writer: history rows to append-only, Hive-partitioned Parquet files.

Files follow core/offline_layout.py. Each file is written under a dot-name, fsynced, renamed into
place and its directory fsynced, so readers never see a partial file and a file that exists is
complete after a crash. Names carry the commit sequence range, so writing the same range again
(a flush replayed after a crash) replaces files with identical ones instead of adding rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.core import offline_layout as layout
from tessera.core.errors import StorageError
from tessera.core.schema import CollectionType, FeatureGroup, show_name
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.history import HistoryRow

log = logging.getLogger(__name__)

US_PER_DAY = 86_400_000_000
RETIRED_DIR = ".retired"
UNNAMED_DIR = ".unnamed"
#: Linux file systems' NAME_MAX, in bytes.
_MAX_FOLDER_NAME_BYTES = 255


def folder_name_ok(name: str) -> bool:
    """Whether `name` can be one folder's name (whatever Tessera's name rule says)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return 0 < size <= _MAX_FOLDER_NAME_BYTES and name not in (".", "..") and not (
        "/" in name or "\0" in name
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` via a fsynced dot-file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=128 * 1024)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class ParquetOfflineWriter:
    """Turns history rows into Parquet files under `root`, one folder per feature group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows_written = 0
        self.files_written = 0
        self.lock = threading.Lock()  # one writer at a time per folder: flushes, moves, compaction
        root.mkdir(parents=True, exist_ok=True)

    # --- group folders -------------------------------------------------------------------------

    def folder(self, group: FeatureGroup, retired: bool) -> Path:
        """The group's folder: `<root>/<name>`, or `.retired/<name>.<id>` once deleted. A name
        no file system can hold (a group made under an older rule: past 255 bytes) gets
        `.unnamed/<id>` (`.retired/unnamed.<id>`), so its history still has a home."""
        gid = group.feature_group_id
        usable = folder_name_ok(f"{group.name}.{gid}" if retired else group.name)
        if retired:
            return self.root / RETIRED_DIR / (f"{group.name}.{gid}" if usable else f"unnamed.{gid}")
        if usable:
            return layout.group_dir(self.root, group.name)
        return self.root / UNNAMED_DIR / str(gid)

    def publish_group(self, group: FeatureGroup) -> None:
        """Write the group's `_group.json` (its schema, for readers with no server). All or
        nothing: on failure, a folder it made is removed; raises StorageError."""
        folder = self.folder(group, retired=False)
        target = folder / layout.GROUP_FILE
        tmp = folder / f".{layout.GROUP_FILE}.tmp"
        made = False
        try:
            made = not folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(group.model_dump_json(indent=2))
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
                if made:
                    folder.rmdir()
            raise StorageError(
                f"the offline store cannot publish feature group {show_name(group.name)}: "
                f"{exc.strerror or exc}"
            ) from exc

    def rename_group(self, old: FeatureGroup, new: FeatureGroup) -> None:
        """Move a renamed group's folder (history and all) to its new name and publish the new
        `_group.json`; all or nothing. Raises StorageError."""
        with self.lock:
            src, dst = self.folder(old, retired=False), self.folder(new, retired=False)
            moved = False
            try:
                if dst.exists():
                    raise StorageError(f"the offline store already has a folder {dst}")
                if src.is_dir():
                    os.rename(src, dst)
                    moved = True
                self.publish_group(new)
            except OSError as exc:
                self._move_back(dst, src, moved)
                raise StorageError(
                    f"the offline store cannot move {src} to {dst}: {exc.strerror or exc}"
                ) from exc
            except BaseException:
                self._move_back(dst, src, moved)
                raise

    @staticmethod
    def _move_back(dst: Path, src: Path, moved: bool) -> None:
        if moved:
            os.rename(dst, src)

    def retire_group(self, group: FeatureGroup) -> None:
        """Move a deleted group's history aside: a new group of the same name starts empty,
        and the old files stay readable under .retired/<name>.<id>/."""
        with self.lock:
            src = self.folder(group, retired=False)
            if src.is_dir():
                dst = self.folder(group, retired=True)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dst))

    # --- rows ----------------------------------------------------------------------------------

    def write(
        self,
        rows: Iterable[HistoryRow],
        first_seq: int,
        last_seq: int,
        groups: dict[int, tuple[FeatureGroup, bool]],
    ) -> int:
        """Write the rows of the commit range [first_seq, last_seq]; returns files written.
        `groups` maps each group id to its FeatureGroup and whether it is retired."""
        by_group: dict[int, list[HistoryRow]] = defaultdict(list)
        for row in rows:
            by_group[row.group_id].append(row)
        name = layout.part_file_name(first_seq, last_seq)
        files = 0
        with self.lock:
            for gid, group_rows in by_group.items():
                if gid not in groups:
                    log.error("history rows of unknown feature group id %d dropped", gid)
                    continue
                group, retired = groups[gid]
                folder = self.folder(group, retired)
                if not retired and not (folder / layout.GROUP_FILE).exists():
                    self.publish_group(group)
                by_day: dict[int, list[HistoryRow]] = defaultdict(list)
                for r in group_rows:
                    by_day[r.event_time_us // US_PER_DAY].append(r)
                for day, picked in sorted(by_day.items()):
                    table = rows_to_table(group, picked)
                    event_date = str(np.datetime64(day, "D"))
                    path = folder / f"{layout.EVENT_DATE}={event_date}" / name
                    write_parquet_atomically(table, path)
                    files += 1
                self.rows_written += len(group_rows)
        self.files_written += files
        return files


def rows_to_table(group: FeatureGroup, rows: list[HistoryRow]) -> pa.Table:
    """History rows of one group as an Arrow table of the group's offline schema."""
    schema = layout.arrow_schema(group)
    definitions = group.definition.feature_definitions
    columns: dict[str, list[Any]] = {fd.feature_name: [None] * len(rows) for fd in definitions}
    vector_dims = {
        fd.feature_name: fd.type().dimension
        for fd in definitions
        if fd.collection_type is CollectionType.VECTOR
    }
    for i, row in enumerate(rows):
        for fv in pb.Record.FromString(row.payload).features:
            column = columns.get(fv.feature_name)
            if column is None:
                continue  # not in this schema version: cannot happen, features are only added
            kind = fv.WhichOneof("value")
            if kind == "vector_value":
                column[i] = fv.vector_value
            elif kind in ("int_list", "float_list", "string_list"):
                column[i] = list(getattr(fv, kind).values)
            elif kind is not None:
                column[i] = getattr(fv, kind)
    arrays: list[pa.Array] = []
    for fd in definitions:
        name = fd.feature_name
        if name in vector_dims:
            arrays.append(_vector_array(columns[name], vector_dims[name] or 0))
        else:
            arrays.append(pa.array(columns[name], type=schema.field(name).type))
    ts = pa.timestamp("us", tz="UTC")
    arrays += [
        pa.array([r.write_time_us for r in rows], type=pa.int64()).cast(ts),
        pa.array([r.api_invocation_time_us for r in rows], type=pa.int64()).cast(ts),
        pa.array([r.is_deleted for r in rows], type=pa.bool_()),
        pa.array([r.event_time_us for r in rows], type=pa.int64()).cast(ts),
        pa.array([r.seq for r in rows], type=pa.int64()),
        pa.array([r.expires_at_us for r in rows], type=pa.int64()).cast(ts),
        pa.array([r.source for r in rows], type=pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _vector_array(values: list[bytes | None], dim: int) -> pa.Array:
    """Raw '<f4' vectors (or None) as a fixed-size list array, without a per-element loop."""
    mask = np.fromiter((v is None for v in values), bool, len(values))
    zero = b"\0" * (4 * dim)
    flat = np.frombuffer(b"".join(zero if v is None else v for v in values), dtype="<f4")
    return pa.FixedSizeListArray.from_arrays(
        pa.array(flat, type=pa.float32()), dim, mask=pa.array(mask)
    )
