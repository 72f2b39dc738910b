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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.core import offline_layout as layout
from tessera.core.errors import StorageError
from tessera.core.schema import CollectionType, CompiledSchema, FeatureGroup, show_name
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import history
from tessera.server import history_kernels as hk
from tessera.server.history import HEADER_BYTES, NO_EXPIRY, HistoryBatch, HistoryRow

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
        # The writer process publishes, the history process too when a flush finds no file:
        # a temporary name of each process's own.
        tmp = folder / f".{layout.GROUP_FILE}.{os.getpid()}.tmp"
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
        and the old files stay readable under .retired/<name>.<id>/. History flushed after the
        delete (the group known as retired) may be there already: the two are merged, file by
        file (names carry their commit ranges, so none collide). Again: nothing to do."""
        with self.lock:
            src = self.folder(group, retired=False)
            if not src.is_dir():
                return
            dst = self.folder(group, retired=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                shutil.move(str(src), str(dst))
                return
            for path in sorted(p for p in src.rglob("*") if p.is_file()):
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                _fsync_dir(target.parent)
            shutil.rmtree(src)

    # --- rows ----------------------------------------------------------------------------------

    def write(
        self,
        rows: HistoryBatch | Iterable[HistoryRow],
        first_seq: int,
        last_seq: int,
        groups: dict[int, tuple[FeatureGroup, bool]],
    ) -> int:
        """Write the rows of the commit range [first_seq, last_seq]; returns files written.
        `groups` maps each group id to its FeatureGroup and whether it is retired. One file per
        group and event date, its rows in commit order."""
        if not isinstance(rows, HistoryBatch):
            rows = _batch_of(list(rows))
        gids = rows.group_ids
        name = layout.part_file_name(first_seq, last_seq)
        files = 0
        with self.lock:
            for gid in dict.fromkeys(gids.tolist()):
                in_group = np.flatnonzero(gids == gid)
                if gid not in groups:
                    log.error("history rows of unknown feature group id %d dropped", gid)
                    continue
                group, retired = groups[gid]
                folder = self.folder(group, retired)
                if not retired and not (folder / layout.GROUP_FILE).exists():
                    self.publish_group(group)
                days = rows.event_time_us[in_group] // US_PER_DAY
                for day in np.unique(days).tolist():
                    table = batch_to_table(group, rows, in_group[days == day])
                    event_date = str(np.datetime64(day, "D"))
                    path = folder / f"{layout.EVENT_DATE}={event_date}" / name
                    write_parquet_atomically(table, path)
                    files += 1
                self.rows_written += len(in_group)
        self.files_written += files
        return files


def _batch_of(rows: list[HistoryRow]) -> HistoryBatch:
    return history.decode_batch(
        [r.seq for r in rows],
        [
            history.with_write_time(r.write_time_us, history.encode(
                r.group_id, r.api_invocation_time_us, r.event_time_us, r.expires_at_us,
                r.is_deleted, r.source or "", r.payload))
            for r in rows
        ],
    )


class _NeedsReferencePath(Exception):
    """The compiled decoder met something it leaves to protobuf."""


_FIELD_OF_ONEOF = {
    "int_value": hk.INT_VALUE, "float_value": hk.FLOAT_VALUE, "string_value": hk.STRING_VALUE,
    "int_list": hk.INT_LIST, "float_list": hk.FLOAT_LIST, "string_list": hk.STRING_LIST,
    "vector_value": hk.VECTOR_VALUE,
}
_INT32_MAX = (1 << 31) - 1


def batch_to_table(group: FeatureGroup, batch: HistoryBatch, picked: np.ndarray) -> pa.Table:
    """Rows `picked` of a batch (all of one group) as an Arrow table of the group's offline
    schema, decoded column-wise by the compiled kernels; the same table as `rows_to_table`,
    which it falls back to for payloads the kernels leave to protobuf."""
    try:
        return _compiled_table(group, batch, picked)
    except _NeedsReferencePath:
        return rows_to_table(group, batch.rows(picked))


def _ro(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.setflags(write=False)
    return v


def _compiled_table(group: FeatureGroup, batch: HistoryBatch, picked: np.ndarray) -> pa.Table:
    schema = layout.arrow_schema(group)
    specs = CompiledSchema.of(group).features
    definitions = group.definition.feature_definitions
    n = len(picked)
    buf = batch.buf
    names = [fd.feature_name.encode() for fd in definitions]
    name_offsets = np.zeros(len(names) + 1, np.int64)
    name_offsets[1:] = np.cumsum([len(x) for x in names])
    fields = np.array([_FIELD_OF_ONEOF[specs[fd.feature_name].oneof] for fd in definitions],
                      np.int8)
    kind = np.zeros((len(definitions), n), np.int8)
    vstart = np.zeros((len(definitions), n), np.int64)
    vlen = np.zeros((len(definitions), n), np.int64)
    failed = hk.scan(
        buf, _ro(batch.payload_starts[picked]), _ro(batch.ends[picked]),
        _ro(np.frombuffer(b"".join(names) or b"\0", np.uint8)), _ro(name_offsets), _ro(fields),
        kind, vstart, vlen,
    )
    if failed:
        raise _NeedsReferencePath
    arrays: list[pa.Array] = []
    for j, fd in enumerate(definitions):
        arrow_type = schema.field(fd.feature_name).type
        k, s, ln = _ro(kind[j]), _ro(vstart[j]), _ro(vlen[j])
        field = int(fields[j])
        if field == hk.INT_VALUE:
            ints, valid = hk.int_column(buf, k, s)
            arrays.append(pa.array(ints, pa.int64(), mask=~valid))
        elif field == hk.FLOAT_VALUE:
            bits, valid = hk.float_column(buf, k, s)
            arrays.append(pa.array(bits.view(np.float64), pa.float64(), mask=~valid))
        elif field == hk.STRING_VALUE:
            arrays.append(_string_array(*hk.bytes_column(buf, k, s, ln)))
        elif field in (hk.INT_LIST, hk.FLOAT_LIST):
            offsets, values, valid, bad = hk.number_list_column(
                buf, k, s, ln, int(field == hk.FLOAT_LIST))
            if bad or offsets[-1] > _INT32_MAX:
                raise _NeedsReferencePath
            child = (pa.array(values.view(np.float64), pa.float64()) if field == hk.FLOAT_LIST
                     else pa.array(values, pa.int64()))
            arrays.append(pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32)), child, type=arrow_type,
                mask=pa.array(~valid)))
        elif field == hk.STRING_LIST:
            list_offsets, str_offsets, data, valid, bad = hk.string_list_column(buf, k, s, ln)
            if bad or list_offsets[-1] > _INT32_MAX:
                raise _NeedsReferencePath
            child = _string_array(str_offsets, data, None)
            arrays.append(pa.ListArray.from_arrays(
                pa.array(list_offsets.astype(np.int32)), child, type=arrow_type,
                mask=pa.array(~valid)))
        else:
            dim = fd.type().dimension or 0
            data, valid, bad = hk.vector_column(buf, k, s, ln, 4 * dim)
            if bad:
                raise _NeedsReferencePath
            arrays.append(pa.FixedSizeListArray.from_arrays(
                pa.array(data.view("<f4"), type=pa.float32()), dim, mask=pa.array(~valid)))
    ts = pa.timestamp("us", tz="UTC")
    expires = batch.expires_at_us[picked]
    src_len = batch.source_lengths[picked]
    src_kind = (src_len > 0).astype(np.int8)
    arrays += [
        pa.array(batch.write_time_us[picked], type=pa.int64()).cast(ts),
        pa.array(batch.api_invocation_time_us[picked], type=pa.int64()).cast(ts),
        pa.array(batch.is_deleted[picked], type=pa.bool_()),
        pa.array(batch.event_time_us[picked], type=pa.int64()).cast(ts),
        pa.array(batch.seqs[picked], type=pa.int64()),
        pa.array(expires, type=pa.int64(), mask=expires == NO_EXPIRY).cast(ts),
        _string_array(*hk.bytes_column(
            buf, _ro(src_kind), _ro(batch.starts[picked] + HEADER_BYTES), _ro(src_len))),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _string_array(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """A string array over gathered UTF-8 (checked: the reference path decides otherwise)."""
    if offsets[-1] > _INT32_MAX:
        raise _NeedsReferencePath
    n = len(offsets) - 1
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    array = pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data), bitmap)
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        raise _NeedsReferencePath from None
    return array


def rows_to_table(group: FeatureGroup, rows: list[HistoryRow]) -> pa.Table:
    """History rows of one group as an Arrow table of the group's offline schema, decoded row by
    row with protobuf: the reference of `batch_to_table`, and its path for what its kernels
    leave to protobuf."""
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
