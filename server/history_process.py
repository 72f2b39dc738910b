"""The history process of `tessera serve --workers N` (the layout: server/supervisor.py): the
outbox -> Parquet flusher, out of the writer's interpreter, and the owner of the offline
store's Parquet files.

    writer process  --(RocksDB files: WAL, SSTs)-->  history process
      RocksDB primary: commits put the history           a RocksDB *secondary* of its own
      row in the outbox, same batch as the record        (<data_dir>/run/secondary-history),
                                                          caught up every tick (1 s) and
                    <--(writer.sock: OutboxIntent,        before each flush; the registry
                         TrimOutbox)--                    view read from it
                    --(history.sock: RetireGroup,  -->    Parquet: flushes, a deleted group's
                         CompactOffline)                  folder retired, compaction

Who owns what:
- The history process writes every Parquet file and moves partition and group folders
  (flushes, `RetireGroup` of a deleted group, `CompactOffline`): one process, so the offline
  writer's lock orders them as in the single process. The writer process still publishes a
  group's `_group.json` when it is created or updated (its registry hook), and never touches
  Parquet files.
- It never writes RocksDB. A flush (server/outbox.py) reads the range from its secondary and
  asks the writer to record the flush's intent before it writes the files, then to trim the
  range (delete it, move the flushed mark, clear the intent: one synced batch). The writer
  checks both against the marks (`OutboxMarks`), so a repeated or stale request changes
  nothing. After each, the secondary catches up, so the marks it reads are the writer's.
- Which group a row belongs to comes from the registry as stored in the same secondary
  (`RegistryView`), reloaded when its version moves after a catch-up: a group is created before
  any of its rows commit, and a deleted group stays readable as retired, so every row read has
  its group.
- The writer process's requests (history.sock, this module's `HistoryClient`): a group delete
  drops the group's records, then sends `RetireGroup` with the primary's seq after the drop;
  the history process catches up to it, flushes every row committed up to it (the deleted
  group's last rows included), moves the group's folder to `.retired/<name>.<id>` and answers.
  `POST /v1/feature-groups/{g}/compact` reaches the writer (CompactGroup), which resolves the
  group in its registry and sends `CompactOffline` here, where the flusher is.

Metrics (its endpoint <data_dir>/run/metrics/history.sock, gathered into /metrics):
`tessera_offline_rows_written`, `tessera_offline_flushes`, the offline store's storage errors
and degraded state. The outbox backlog gauge (`tessera_offline_outbox_pending_rows`) is the
writer's, which owns the outbox: it keeps growing, visibly, while this process is down.

What survives which crash:
- `kill -9` of the history process: the supervisor restarts it. An intent recorded before the
  kill is replayed with the same range (same file names and contents); a range without an
  intent was never written. Nothing committed is lost (the rows stay in the outbox until a
  trim), nothing is in Parquet twice. Meanwhile writes go on; the backlog waits in the outbox.
  A writer request in flight fails over: `RetireGroup` is sent again once the restarted process
  accepts (it is idempotent), `CompactOffline` fails with StorageError (UNAVAILABLE).
- `kill -9` of the writer: the history's requests fail (StorageError) and the flush is
  retried with backoff; the next one reads the marks afresh.
- SIGTERM (the supervisor stops it after the serving and consumer processes, before the
  writer): the flusher stops, catches up and flushes everything committed (every acknowledged
  write: the processes that acknowledged writes have stopped), then the process exits.

Run: `python -m tessera.server.history_process --settings FILE --ready-file F`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

import msgspec
from prometheus_client import Gauge

from tessera.core.errors import StorageError
from tessera.core.schema import FeatureGroup
from tessera.server import history, metrics
from tessera.server import writer_ipc as ipc
from tessera.server.compaction import CompactionResult, compact_group
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.outbox import (
    HistoryFlusher,
    last_row_seq,
    read_flushed,
    read_intent,
    read_rows,
)
from tessera.server.process_metrics import HISTORY, MetricsEndpoint, endpoint_path
from tessera.server.registry import VERSION, RegistryView
from tessera.server.rocksdb import OUTBOX, REGISTRY, open_secondary
from tessera.server.roles import ClosingRole, ReadyFileRole, RoleFailedError, Roles, run_child
from tessera.server.settings import Settings, run_dir
from tessera.server.writer_client import WriterClient

log = logging.getLogger("tessera.server.history_process")

SOCKET_NAME = "history.sock"
#: How long a writer request waits for the history process to accept (it may be restarting).
CONNECT_TIMEOUT_S = 60.0
_SECONDARY_CACHE_MB = 32  # the outbox is read once, sequentially: little to cache

T = TypeVar("T")


def socket_path(data_dir: Path) -> Path:
    """Where the history process of a data directory listens."""
    return run_dir(data_dir) / SOCKET_NAME


# --- the protocol of history.sock (frames and replies as on writer.sock: server/writer_ipc.py) --


class RetireGroup(msgspec.Struct, array_like=True, tag=1):
    """Flush every row committed up to `seq` (the primary's after the group's records were
    dropped), then move the deleted group's folder aside. Reply: `seq`."""

    id: int
    group: bytes  # FeatureGroup, `ipc.model_to_wire`
    seq: int


class CompactOffline(msgspec.Struct, array_like=True, tag=2):
    """Compact the group's partitions holding at least `min_files` files. Reply: `stats`, the
    `CompactionResult` fields."""

    id: int
    group: bytes
    min_files: int


HistoryRequest = RetireGroup | CompactOffline
_request_decoder = msgspec.msgpack.Decoder(HistoryRequest)


# --- the writer's side -------------------------------------------------------------------------


class HistoryClient:
    """The writer process's requests to the history process: one connection per request (they
    are rare: a group deleted, a compaction asked for)."""

    def __init__(self, path: Path, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.path = path
        self._connect_timeout_s = connect_timeout_s
        self._ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()

    def retire_group(self, group: FeatureGroup, seq: int, timeout_s: float = 600.0) -> None:
        """Flush history up to `seq` and retire the group's folder; sent again when the
        history process restarts meanwhile (idempotent). StorageError when it does not
        answer within the timeouts."""
        deadline = time.monotonic() + self._connect_timeout_s
        while True:
            try:
                self._call(lambda rid: RetireGroup(rid, ipc.model_to_wire(group), seq), timeout_s)
                return
            except _Lost as exc:
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"the history process did not retire the offline folder of the deleted "
                        f"group {group.name!r}: {exc}; it is retired at its next start") from exc
                time.sleep(0.1)

    def compact_group(self, group: FeatureGroup, min_files: int,
                      timeout_s: float = 3600.0) -> CompactionResult:
        try:
            reply = self._call(lambda rid: CompactOffline(rid, ipc.model_to_wire(group),
                                                          min_files), timeout_s)
        except _Lost as exc:
            raise StorageError(f"the history process did not compact: {exc}; retry") from exc
        try:
            return CompactionResult(**reply.stats)
        except TypeError as exc:  # a history process of another version
            raise StorageError(f"the history process answered an unreadable compaction "
                               f"result: {exc}") from exc

    def _call(self, make: Callable[[int], HistoryRequest], timeout_s: float) -> ipc.Reply:
        """Send one request and wait for its reply; _Lost when the connection failed (the
        request may or may not have run), the request's own error as it was raised there."""
        with self._lock:
            rid = next(self._ids)
        deadline = time.monotonic() + self._connect_timeout_s
        while True:  # connect, waiting for a history process (re)starting
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with ipc.reachable(self.path) as name:
                    sock.connect(name)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise _Lost(f"not reachable at {self.path} ({exc.strerror or exc})") from exc
                time.sleep(0.1)
        with sock:
            try:
                sock.settimeout(timeout_s)
                sock.sendall(ipc.frame(ipc.encoder.encode(make(rid))))
                body = next(iter(ipc.FrameReader(sock).frames()), None)
            except OSError as exc:
                raise _Lost(f"the connection failed ({exc})") from exc
        if body is None:
            raise _Lost("the connection closed before the reply")
        reply = ipc.reply_decoder.decode(body)
        if reply.error is not None:
            raise ipc.error_from_wire(reply.error)
        return reply


class _Lost(Exception):
    """The history process did not answer (down, restarting, or killed meanwhile)."""


class HistoryProcessHooks:
    """The writer process's `RegistryHooks` when history runs in its own process: a group's
    `_group.json` is published here; a deleted group's records are dropped here, its history
    flushed and its folder retired by the history process."""

    def __init__(self, store: RocksDBOnlineStore, offline: ParquetOfflineWriter,
                 history: HistoryClient) -> None:
        self._store, self._offline, self._history = store, offline, history

    def group_changed(self, group: FeatureGroup) -> None:
        self._offline.publish_group(group)

    def group_deleted(self, group: FeatureGroup) -> None:
        # Every write queued before the delete commits first (the drop is ordered after them);
        # the seq after it covers them and the registry's delete.
        self._store.drop_group(group.feature_group_id).result()
        self._history.retire_group(group, self._store.visible_seq())


# --- the history process's side ----------------------------------------------------------------


class SecondaryOutbox:
    """The outbox (and the registry) as a secondary of the writer's primary shows them; the
    marks written by the writer on request (server/outbox.py `Outbox`)."""

    def __init__(self, primary: Path, secondary: Path, writer: WriterClient,
                 timeout_s: float = 60.0) -> None:
        shutil.rmtree(secondary, ignore_errors=True)  # scratch: rebuilt at every start
        # Only the outbox and the registry: a catch-up replays only their WAL records, not the
        # records' and the tiles' (a third of the CPU per record of a secondary of every family).
        self._db = open_secondary(primary, secondary, _SECONDARY_CACHE_MB,
                                  ("default", OUTBOX, REGISTRY))
        self._outbox = self._db.get_column_family(OUTBOX)
        self._registry = self._db.get_column_family(REGISTRY)
        self._writer = writer
        self._timeout_s = timeout_s
        #: Held while a flush reads rows, and by every catch-up.
        self.quiesce = threading.RLock()
        self.view = RegistryView.load(self._registry)
        self.seq = 0
        self.catch_ups = 0
        self.refresh()

    def refresh(self) -> None:
        """Catch up with the primary; reload the registry view if it changed."""
        with self.quiesce:
            try:
                self._db.try_catch_up_with_primary()
                self.seq = int(self._db.latest_sequence_number())
                raw = self._registry.get(VERSION)
            except Exception as exc:  # rocksdict raises plain Exception
                raise StorageError(f"the history process's secondary cannot catch up: {exc}"
                                   ) from exc
            self.catch_ups += 1
            if (int.from_bytes(raw, "big") if isinstance(raw, bytes) else 0) != self.view.version:
                self.view = RegistryView.load(self._registry)

    def wait_for(self, seq: int) -> None:
        """Catch up until the view reflects the primary's commit `seq`."""
        deadline = time.monotonic() + self._timeout_s
        self.refresh()
        while self.seq < seq:
            if time.monotonic() > deadline:
                raise StorageError(f"the history process's secondary did not reach commit {seq} "
                                   f"within {self._timeout_s:.0f} s (at {self.seq})")
            time.sleep(0.005)
            self.refresh()

    def groups(self, group_id: int) -> tuple[FeatureGroup, bool] | None:
        return self.view.by_id(group_id)

    def last_seq(self) -> int:
        with self.quiesce:
            return max(last_row_seq(self._outbox), read_flushed(self._outbox))

    def flushed_seq(self) -> int:
        with self.quiesce:
            return read_flushed(self._outbox)

    def intent(self) -> tuple[int, int] | None:
        with self.quiesce:
            return read_intent(self._outbox)

    def record_intent(self, first: int, last: int) -> None:
        self._wait(self._writer.record_outbox_intent(first, last), "record a flush intent")
        self.refresh()

    def rows(self, first: int, last: int) -> history.HistoryBatch:
        with self.quiesce:
            return read_rows(self._outbox, first, last)

    def trim(self, first: int, last: int) -> None:
        self._wait(self._writer.trim_outbox(first, last), "trim the outbox")
        self.refresh()

    def _wait(self, fut: Future[T], what: str) -> T:
        try:
            return fut.result(self._timeout_s)
        except FutureTimeout as exc:
            raise StorageError(f"the writer process did not {what} within "
                               f"{self._timeout_s:.0f} s") from exc

    def close(self) -> None:
        with self.quiesce:
            self._outbox.close()
            self._registry.close()
            self._db.close()


class HistoryServer:
    """history.sock: the writer's requests (`RetireGroup`, `CompactOffline`), one thread per
    connection, one request at a time on each."""

    def __init__(self, path: Path, flusher: HistoryFlusher, outbox: SecondaryOutbox,
                 offline: ParquetOfflineWriter) -> None:
        self.path = path
        self._flusher, self._outbox, self._offline = flusher, outbox, offline
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._conns: list[tuple[socket.socket, threading.Thread]] = []
        self.name = "history socket"

    def handle(self, msg: HistoryRequest) -> ipc.Reply:
        group = ipc.model_from_wire(FeatureGroup, msg.group)
        if isinstance(msg, RetireGroup):
            self._outbox.wait_for(msg.seq)  # the drop and the registry's delete are visible
            with self._flusher.lock:  # no flush between the last one and the move
                self._flusher.flush_all()
                self._offline.retire_group(group)
            log.info("feature group %r deleted: its history is flushed and retired", group.name)
            return ipc.Reply(msg.id, self._outbox.seq)
        result = compact_group(self._offline, group, msg.min_files)
        return ipc.Reply(msg.id, stats=dataclasses.asdict(result))

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a killed predecessor
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # only the owner: the socket moves the offline folders
        try:
            with ipc.reachable(self.path) as name:
                listener.bind(name)
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,),
                                          name="tessera-history-accept", daemon=True)
        self._acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            thread = threading.Thread(target=self._serve, args=(sock,),
                                      name="tessera-history-conn", daemon=True)
            self._conns = [c for c in self._conns if c[1].is_alive()] + [(sock, thread)]
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                for body in ipc.FrameReader(sock).frames():
                    msg = _request_decoder.decode(body)
                    try:
                        reply = self.handle(msg)
                    except Exception as exc:
                        if not isinstance(exc, StorageError):
                            log.exception("history request %s failed", type(msg).__name__)
                        reply = ipc.Reply(msg.id, error=ipc.error_to_wire(exc))
                    sock.sendall(ipc.frame(ipc.encoder.encode(reply)))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.info("history connection closed: %s", exc)

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            await asyncio.to_thread(self._acceptor.join)
        for sock, _ in self._conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        for _, thread in self._conns:  # a request under way finishes (a compaction: bounded)
            await asyncio.to_thread(thread.join, 30.0)
        self.path.unlink(missing_ok=True)

    async def died(self) -> str:
        while self._acceptor is None or self._acceptor.is_alive():
            await asyncio.sleep(0.5)
        return "the history socket stopped accepting"


class FlusherRole:
    """The flusher: started after the secondary, stopped (a last flush of everything
    committed) before it closes."""

    name = "history flusher"

    def __init__(self, flusher: HistoryFlusher) -> None:
        self._flusher = flusher

    async def start(self) -> None:
        await asyncio.to_thread(self._flusher.start, True)

    async def stop(self) -> None:
        await asyncio.to_thread(self._flusher.stop)

    async def died(self) -> str:
        while self._flusher.running:
            await asyncio.sleep(0.5)
        return "the flusher thread exited"


async def serve(settings: Settings, ready_file: Path, stop: asyncio.Event) -> None:
    """Start the roles in order, run until `stop` or a role dies, stop them in reverse."""
    roles = Roles()
    died: str | None = None
    scratch = run_dir(settings.data_dir)
    try:
        writer = WriterClient(ipc.socket_path(settings.data_dir))
        await roles.start(ClosingRole("writer client", writer.close))
        outbox = await asyncio.to_thread(
            SecondaryOutbox, settings.data_dir / "online", scratch / "secondary-history", writer)
        await roles.start(ClosingRole("history secondary", outbox.close))
        offline = ParquetOfflineWriter(settings.offline_root)
        flusher = HistoryFlusher(outbox, offline, outbox.groups,
                                 interval_s=settings.offline_store.flush_interval_s,
                                 max_rows=settings.offline_store.flush_max_rows)
        await roles.start(FlusherRole(flusher))
        metrics.OFFLINE_ROWS.set_function(lambda: offline.rows_written)
        # Every process reports its own view of the registry (a gauge left at 0 would read as
        # a disagreement in /metrics): here, the one reloaded from the secondary.
        metrics.FEATURE_GROUPS.set_function(lambda: len(outbox.view.list()))
        metrics.FEATURE_GROUPS_QUARANTINED.set_function(lambda: len(outbox.view.quarantined()))
        # This process's own (the writer imports this module: it must not report it too).
        Gauge("tessera_offline_flushes", "Outbox ranges written to Parquet and trimmed since "
              "start.", registry=metrics.REGISTRY).set_function(lambda: flusher.flushes)
        await roles.start(HistoryServer(socket_path(settings.data_dir), flusher, outbox, offline))
        await roles.start(MetricsEndpoint(endpoint_path(scratch, HISTORY), metrics.REGISTRY))
        await roles.start(ReadyFileRole(ready_file))
        log.info("history process ready: flushing every %.1f s (or %d rows)",
                 settings.offline_store.flush_interval_s, settings.offline_store.flush_max_rows)
        dead = await roles.run_until(stop)
        if dead is not None:
            died = f"the {dead[0].name} died: {dead[1]}"
            log.error("%s: stopping the history process", died)
    finally:
        log.info("history process stopping: flushing every committed row to Parquet")
        failures = await roles.stop_all()
    if died is not None:
        raise RoleFailedError(died)
    if failures:
        raise RoleFailedError("stopped with errors: " + "; ".join(failures))
    log.info("history process stopped cleanly")


async def _main(settings: Settings, ready_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, ready_file, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the Tessera history process")
    parser.add_argument("--settings", type=Path, required=True, help="the settings, as JSON")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings.model_validate_json(args.settings.read_text())
    return run_child("history", lambda: _main(settings, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())

