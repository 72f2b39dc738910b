"""`SecondaryReader`: a serving process's read-only view of the online store, a RocksDB secondary
instance of the writer process's primary (server/writer_process.py).

A secondary sees the primary's writes (WAL included, flushed or not) only after a catch-up
(`try_catch_up_with_primary`). It catches up on a timer (`catch_up_interval_s`) and on demand:
`wait_visible(seq)` with a commit's seq (the token its acknowledgement carried) catches up at
once when reads do not reflect it yet. Concurrent waiters share catch-ups: while one runs, the
others wait for it, so N readers waiting for fresh writes cause one catch-up (two when the first
had started before their writes were acknowledged), not N.

After a catch-up the secondary's `latest_sequence_number()` equals the primary's for the same
state (tests/integration/test_writer_process.py checks it), so `visible_seq()` compares
directly with `Committed.seq`.

Cost and the default interval (benchmarks/writer_process_bench.py, 2 cores, loaded machine):
a catch-up with nothing to do costs ~0.06 ms of CPU in RocksDB with the options of
`open_secondary` (server/rocksdb.py; ~5 ms with RocksDB's default file-opening threads), and the
timer thread as a whole, per serving process, ~17% of a core at 1 ms, 5-8% at 5 ms, 4-5% at
10 ms, 2-3% at 20 ms (idle - under writes). Staleness without a token (ack -> visible, p50/p99):
2.0/4.8 ms at 5 ms, 4.7/9.8 ms at 10 ms, 9.8/20 ms at 20 ms. The default, 10 ms, bounds
token-less staleness to ~10 ms for ~4% of a core; a reader that needs its write passes the
token and waits only for an immediate catch-up.

Listeners (`add_listener`) run after each timer catch-up, on the timer thread: the registry
of a serving process (server/registry_client.py) compares one key there and reloads only when
the registry changed. `catch_up()` always reflects a catch-up started after it was called, so
a lookup that missed and forces one sees what was committed before the miss.

Reads decode stored values with the primary store's helper (server/online_store.py), so both
read the same bytes the same way. The secondary is never reopened: its column family views live
as long as it does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import rocksdict

from tessera.core.errors import StorageError
from tessera.server.online_store import _live as live_hit
from tessera.server.online_store import scan_records
from tessera.server.rocksdb import AGGREGATES, RECORDS, REGISTRY, open_secondary
from tessera.server.store import Hit, ScanPage

log = logging.getLogger(__name__)

#: The default catch-up interval (the module docstring says why).
CATCH_UP_INTERVAL_S = 0.010


def _read_error(exc: Exception) -> StorageError:
    return StorageError(f"the online store's secondary could not read: {exc}")


def _opened(cf: rocksdict.Rdict | None) -> rocksdict.Rdict:
    if cf is None:
        raise StorageError("this secondary reads only the registry (registry_only)")
    return cf


class SecondaryReader:
    """Reads of the online store from a secondary instance (see the module docstring)."""

    def __init__(self, primary_path: Path, secondary_path: Path,
                 catch_up_interval_s: float = CATCH_UP_INTERVAL_S,
                 block_cache_mb: int = 512, registry_only: bool = False) -> None:
        # Only what it reads: a catch-up then skips the outbox's and the expiry index's WAL
        # records (about half of a put's bytes with history on). `registry_only` (the consumer
        # process: it writes records, reads only schemas) skips the records' and tiles' too;
        # its record reads raise StorageError.
        families = ("default", REGISTRY) if registry_only else (
            "default", RECORDS, AGGREGATES, REGISTRY)
        self._db = open_secondary(primary_path, secondary_path, block_cache_mb, families)
        self._records = None if registry_only else self._db.get_column_family(RECORDS)
        self._aggregates = None if registry_only else self._db.get_column_family(AGGREGATES)
        self._registry = self._db.get_column_family(REGISTRY)
        self._listeners: list[Callable[[], object]] = []
        self._interval_s = catch_up_interval_s
        self._cond = threading.Condition()
        self._running = False  # a catch-up is under way (outside the lock)
        self._started = 0  # catch-ups started so far; also the number of the running one
        self._completed = 0  # the number of the last one done
        self._seq = 0
        self.catch_ups = 0  # how many ran (tests, metrics)
        self.catch_up_errors = 0
        self._stop = threading.Event()
        with self._cond:
            self._catch_up()
        self._timer = threading.Thread(target=self._run_timer, name="tessera-secondary",
                                       daemon=True)
        self._timer.start()

    # --- reads ---------------------------------------------------------------------------------

    def get(self, key: bytes, at_us: int) -> Hit | None:
        records = _opened(self._records)
        try:
            raw = records.get(key)
        except Exception as exc:
            raise _read_error(exc) from exc
        return live_hit(raw, at_us)

    def multi_get(self, keys: list[bytes], at_us: int) -> list[Hit | None]:
        records = _opened(self._records)
        try:
            raws = records.get(keys)  # type: ignore[arg-type]
        except Exception as exc:
            raise _read_error(exc) from exc
        return [live_hit(raw, at_us) for raw in raws]  # type: ignore[union-attr]

    def get_aggregates(self, keys: list[bytes]) -> list[bytes | None]:
        aggregates = _opened(self._aggregates)
        try:
            if len(keys) == 1:
                return [aggregates.get(keys[0])]
            return aggregates.get(keys)  # type: ignore[return-value, arg-type]
        except Exception as exc:
            raise _read_error(exc) from exc

    def scan(
        self, group_id: int, start_after: str | None, limit: int, at_us: int,
        include_deleted: bool = False,
    ) -> ScanPage:
        """`OnlineStore.scan` as of the last catch-up."""
        records = _opened(self._records)
        try:
            it = records.iter()
            try:
                return scan_records(it, group_id, start_after, limit, at_us, include_deleted)
            finally:
                del it
        except Exception as exc:
            raise _read_error(exc) from exc

    @property
    def registry(self) -> rocksdict.Rdict:
        """The registry column family as of the last catch-up (read-only; lives as long as the
        secondary)."""
        return self._registry

    # --- freshness -----------------------------------------------------------------------------

    def visible_seq(self) -> int:
        """The primary's sequence number as of the last catch-up: commits up to it are read."""
        return self._seq

    def catch_up(self) -> int:
        """Catch up now; the visible seq after it. Shared: one started after this call and
        finished (by another thread or the timer) counts, one already running does not."""
        with self._cond:
            entered = self._started
            while self._completed <= entered:
                if self._running:
                    self._cond.wait()
                else:
                    self._catch_up()
            return self._seq

    def add_listener(self, listener: Callable[[], object]) -> None:
        """Run `listener()` after each timer catch-up, on the timer thread (keep it short; an
        exception is logged)."""
        self._listeners.append(listener)

    def wait_visible(self, seq: int, timeout_s: float) -> bool:
        """Block until reads reflect commit `seq`, catching up at once (shared with concurrent
        waiters); False when `timeout_s` passed first (a seq never issued by this primary waits
        in vain: a secondary cannot tell it apart from one not yet committed)."""
        if self._seq >= seq:
            return True
        deadline = time.monotonic() + timeout_s
        with self._cond:
            entered = self._started  # catch-ups that started before this wait may predate seq
            while self._seq < seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self._running or self._completed > entered:
                    # one is under way, or one started after we came did not reach seq: the
                    # running one or the timer's next one notifies us
                    self._cond.wait(remaining)
                else:
                    self._catch_up()
            return True

    def _catch_up(self) -> None:
        """One catch-up; called and returns with the lock held, runs without it."""
        self._running = True
        self._started += 1
        mine = self._started
        self._cond.release()
        seq: int | None = None
        try:
            self._db.try_catch_up_with_primary()
            seq = int(self._db.latest_sequence_number())
        except Exception as exc:  # the primary's files moved under us: the next one retries
            self.catch_up_errors += 1
            log.warning("the secondary could not catch up with the primary: %s", exc)
        finally:
            self._cond.acquire()
            self.catch_ups += 1
            self._running = False
            self._completed = mine
            if seq is not None and seq > self._seq:
                self._seq = seq
            self._cond.notify_all()

    def _run_timer(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._cond:
                if not self._running:
                    self._catch_up()
            for listener in self._listeners:
                try:
                    listener()
                except Exception:
                    log.exception("a listener of the secondary's catch-ups failed")

    def close(self) -> None:
        """Stop catching up and close the secondary (again: a no-op)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._timer.join()
        for cf in (self._records, self._aggregates):
            if cf is not None:
                cf.close()
        self._registry.close()
        self._db.close()

