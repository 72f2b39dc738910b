"""Opening Tessera's RocksDB: one DB per data directory, a column family per concern.

After a background error (disk full, I/O error) RocksDB refuses every write until it is resumed,
and rocksdict exposes no `Resume()`: `RocksDB.reopen` closes the DB and opens it again in the
process. So that a reopen is possible, nobody keeps a column family handle or an iterator across
calls: they ask `handle()` / the column family properties each time, and whoever iterates outside
the writer thread holds `quiesce` meanwhile (the reopen takes it too). Reads that race a reopen
get `rocksdict.DbClosedError`, which the store reports as a StorageError (retryable).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path

import rocksdict

from tessera.core.errors import StorageError

RECORDS = "records"  # group_id | record_id -> header + Record wire bytes
EXPIRY = "expiry"  # expires_at_us | group_id | record_id -> b"" (the TTL purge's index)
REGISTRY = "registry"  # feature group definitions
OUTBOX = "outbox"  # b"r" | seq -> history row, until flushed to Parquet; b"m/..." its marks
AGGREGATES = "aggregates"  # group_id | stream id | key text -> tile state (core/aggregation)
COLUMN_FAMILIES = ("default", RECORDS, EXPIRY, REGISTRY, OUTBOX, AGGREGATES)

log = logging.getLogger(__name__)


class _Open:
    """One open generation of the DB: the Rdict, its column family views and handles."""

    def __init__(self, path: Path, opts: rocksdict.Options) -> None:
        self.db = rocksdict.Rdict(
            str(path), opts, column_families={name: opts for name in COLUMN_FAMILIES}
        )
        self.views = {name: self.db.get_column_family(name) for name in COLUMN_FAMILIES[1:]}
        self.handles = {name: self.db.get_column_family_handle(name) for name in COLUMN_FAMILIES}

    def close(self) -> None:
        try:
            self.db.flush_wal(True)
        finally:
            for view in self.views.values():
                view.close()
            self.db.close()
            self.views.clear()
            self.handles.clear()


class RocksDB:
    """The open database and its column families (see the module docstring)."""

    def __init__(self, path: Path, opts: rocksdict.Options) -> None:
        self.path = path
        self._opts = opts
        self._open: _Open | None = self._open_now()
        #: Held by anyone iterating the DB outside the writer thread, and by `reopen`.
        self.quiesce = threading.RLock()
        self.reopens = 0

    def _open_now(self) -> _Open:
        try:
            return _Open(self.path, self._opts)
        except Exception as exc:  # rocksdict raises plain Exception for I/O and lock errors
            raise StorageError(f"cannot open the online store at {self.path}: {exc}") from exc

    def _current(self) -> _Open:
        current = self._open
        if current is None:
            raise StorageError("the online store is closed or being reopened; retry later")
        return current

    @property
    def db(self) -> rocksdict.Rdict:
        return self._current().db

    @property
    def records(self) -> rocksdict.Rdict:
        return self._current().views[RECORDS]

    @property
    def expiry(self) -> rocksdict.Rdict:
        return self._current().views[EXPIRY]

    @property
    def registry(self) -> rocksdict.Rdict:
        return self._current().views[REGISTRY]

    @property
    def outbox(self) -> rocksdict.Rdict:
        return self._current().views[OUTBOX]

    @property
    def aggregates(self) -> rocksdict.Rdict:
        return self._current().views[AGGREGATES]

    def handle(self, name: str) -> rocksdict.ColumnFamily:
        """A column family handle of the current generation: use it, never keep it."""
        return self._current().handles[name]

    def has_free_space(self, probe_bytes: int = 1 << 20) -> bool:
        """Whether `probe_bytes` can be written and synced in the DB's directory now."""
        probe = self.path / ".tessera-space-probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)

    def reopen(self) -> None:
        """Close the DB and open it again with the same options (clears a background error).

        Call it from the writer thread (no write in flight); readers racing it see a closed DB.
        Raises StorageError when the DB cannot be opened again; calling it again retries.
        """
        with self.quiesce:
            old, self._open = self._open, None
            if old is not None:
                try:
                    old.close()
                except Exception as exc:  # closing fails after a background error: expected
                    log.info("closing the online store before reopening it: %s", exc)
                del old
            gc.collect()  # the lock is released once the last reference to the DB is gone
            self._open = self._open_now()
            self.reopens += 1

    def close(self) -> None:
        """Sync the WAL and close. RocksDB releases its lock once every Python reference to the
        DB, its column families and their handles is gone."""
        current, self._open = self._open, None
        if current is not None:
            current.close()


def _options(block_cache_mb: int, write_buffer_mb: int) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(write_buffer_mb * 1024 * 1024)
    opts.set_max_background_jobs(2)
    opts.set_compression_type(rocksdict.DBCompressionType.lz4())
    table = rocksdict.BlockBasedOptions()
    # Bloom filters make misses cheap; the block cache keeps hot records decoded in memory.
    table.set_bloom_filter(10, False)
    table.set_block_cache(rocksdict.Cache(block_cache_mb * 1024 * 1024))
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


def open_rocksdb(path: Path, block_cache_mb: int = 512, write_buffer_mb: int = 64) -> RocksDB:
    """Open (or create) the DB at `path`.

    Every column family's options are passed explicitly: reopening with `Rdict(path, options)`
    alone silently takes the options stored in the directory, losing the bloom filter and cache.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot open the online store at {path}: {exc}") from exc
    return RocksDB(path, _options(block_cache_mb, write_buffer_mb))


def open_secondary(
    path: Path, secondary_path: Path, block_cache_mb: int = 512,
    families: tuple[str, ...] = COLUMN_FAMILIES,
) -> rocksdict.Rdict:
    """Open the DB at `path` as a RocksDB secondary instance (its own files in `secondary_path`):
    read-only, it sees the primary's writes after `try_catch_up_with_primary()`.

    `families`: the column families it opens ("default" among them). A catch-up replays only
    their WAL records, so a reader opens only what it reads: a serving process skips the outbox
    and the expiry index, which every put writes too. The sequence number still follows every
    commit (`latest_sequence_number()` counts the batches of the families not opened as well).

    Every column family gets the primary's options (without them a secondary takes the stored
    ones: no bloom filter, no block cache), plus two a secondary needs: table files stay open
    (`max_open_files=-1`: a file the primary compacts away stays readable until the next
    catch-up) and are opened on the calling thread (`max_file_opening_threads=1`: the default
    16 starts 15 threads per column family on every catch-up, ~5 ms of CPU for one with
    nothing to do, against ~0.06 ms).
    """
    opts = _options(block_cache_mb, write_buffer_mb=4)
    opts.set_max_open_files(-1)
    opts.set_max_file_opening_threads(1)
    try:
        secondary_path.mkdir(parents=True, exist_ok=True)
        return rocksdict.Rdict(
            str(path), opts, column_families={name: opts for name in families},
            access_type=rocksdict.AccessType.secondary(str(secondary_path)),
        )
    except Exception as exc:  # rocksdict raises plain Exception for I/O errors
        raise StorageError(f"cannot open the online store at {path} as a secondary: {exc}") from exc
