"""The writer process: the one owner of the online store's RocksDB primary.

Where it sits (the "every core" layout, DESIGN.md "Processes"):

    serving process 1..N  --(Unix socket <data_dir>/writer.sock)-->  writer process
      gRPC + HTTP: parse, validate, encode            group commit: ordering rules, outbox,
      reads: RocksDB *secondary* (server/secondary.py) aggregation tiles, one fsync per batch
      writes: WriterClient (server/writer_client.py)   RocksDB *primary* (<data_dir>/online)

Who owns what:
- The writer process alone opens `<data_dir>/online` as the RocksDB primary, and hosts
  everything that writes it: `RocksDBOnlineStore` (server/online_store.py: every mutation of
  records, expiry index, outbox and aggregates goes through its single group-commit writer
  thread; requests from every connection feed that one thread, so writes of all serving
  processes share WriteBatches and fsyncs), the `FeatureGroupRegistry` (every create, update,
  delete; its hooks publish a group's offline folder and drop a deleted group's records), the
  TTL purger, and the outbox's marks. Under the supervisor (`--history-process`) the history
  process (server/history_process.py) flushes the outbox to Parquet: it asks this process to
  record each flush's intent and to trim the flushed range (`OutboxIntent`, `TrimOutbox`,
  checked against the marks: server/outbox.py `OutboxMarks`), and this process sends it a
  deleted group's retirement (after dropping its records) and the compactions asked for
  (`CompactGroup`), over <data_dir>/run/history.sock. Run on its own (tests, by hand) the
  writer keeps the flusher as a thread (server/outbox.py, server/store_hooks.py) and compacts
  itself, under the flusher's lock.
- Its metrics (group commits, the outbox backlog, TTL purge, storage errors, late aggregate
  events; offline rows when it flushes itself) are served on its metrics endpoint,
  <data_dir>/run/metrics/writer.sock, which the serving process answering /metrics reads
  (server/process_metrics.py).
- Serving and consumer processes never write RocksDB. They send `Submit` / `DropGroup` /
  `PurgeExpired` and the registry requests (`CreateFeatureGroup`, `UpdateFeatureGroup`,
  `DeleteFeatureGroup`, `QuarantinedGroups`) over the socket (protocol: server/writer_ipc.py),
  and read from their own secondary instance, which catches up with the primary on a timer or
  on demand (`wait_visible`); their registry is a `RemoteRegistry` (server/registry_client.py)
  over that secondary.
- The socket carries writes and their acknowledgements only: per request, one result per op
  (True / False / the TesseraError that refused it) and the primary's sequence number after the
  commit, the token a reader passes to `wait_visible` for read-your-writes. Many requests may be
  in flight on one connection; replies carry the request id. A registry request's reply carries
  the group (JSON) and the seq after the change.
- The history process's `OutboxIntent` and `TrimOutbox` run on a thread of their own (one
  synced write each, in order); their reply carries the seq after the write.

Start-up, in order (roles, server/roles.py): the online store (RocksDB, the writer thread);
the registry and every group's offline folder published (a failing one quarantined); the
history flusher when it flushes itself (it first flushes what the last run left); the TTL
purger; the metrics endpoint; the socket (ready once it accepts). Shutdown (SIGTERM /
SIGINT, or a role died) stops them in reverse: the socket stops accepting and reading, every
request already received is answered (queued writes committed), then the purger stops, the
flusher (if here) writes every committed row to Parquet, and RocksDB closes (WAL synced). Exit
status 1 when start-up failed, a role died or a stop failed.

Settings: `--settings FILE`, the `Settings` as JSON (`settings.model_dump_json()`), written by
the supervisor (`tessera serve --workers N`), which built them from the environment and flags:
the writer reads no environment of its own. Without it, `--data-dir` and the online store flags
(tests, a writer run by hand) with the other settings at their defaults. `--lazy-kernels`
(tests) loads the aggregation kernels at the first commit that needs them.
`--history-process` (the supervisor's): history is flushed by the history process.

What survives which crash:
- `kill -9` of the writer process: a write is acknowledged only after its WriteBatch is synced
  to the WAL, with its outbox row and aggregate tiles in the same batch, so every acknowledged
  write is on disk, in the outbox exactly once. Writes in flight at the kill are lost or
  committed, unacknowledged either way; clients see their connection drop and fail those
  requests with StorageError (UNAVAILABLE: the caller retries, and the ordering rules make a
  retried put idempotent). A restarted writer reopens the primary and replays the WAL.
- `kill -9` of a serving process: nothing durable is lost; its in-flight requests are still
  committed by the writer (the replies go nowhere). Its secondary directory is scratch.
- SIGTERM (or SIGINT): the writer stops accepting, finishes every request already received,
  acknowledges them, flushes history (if it flushes itself; the supervisor stops the history
  process first, which flushes it through this process), then closes RocksDB (WAL synced) and
  removes its socket.
- `kill -9` during a flush: the flush's intent is durable; the restarted flusher (this
  process's, or the history process's) replays it with the same range (same file names and
  contents): every acknowledged put reaches Parquet exactly once. A history request in flight
  at the kill fails; the history process retries its flush from the marks as they are.

Run: `python -m tessera.server.writer_process --settings FILE` (or `--data-dir DIR`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from tessera.core.aggregation.plan import AggregationPlan
from tessera.core.errors import InvalidRequestError, StorageError
from tessera.core.schema import FeatureGroupDefinition, FeatureGroupUpdate
from tessera.server import metrics
from tessera.server import writer_ipc as ipc
from tessera.server.aggregates import ensure_kernels
from tessera.server.compaction import compact_group
from tessera.server.history_process import HistoryClient, HistoryProcessHooks
from tessera.server.history_process import socket_path as history_socket_path
from tessera.server.offline_writer import ParquetOfflineWriter
from tessera.server.online_store import RocksDBOnlineStore, TtlPurger
from tessera.server.outbox import OutboxFlusher, OutboxMarks
from tessera.server.process_metrics import WRITER, MetricsEndpoint, endpoint_path
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.roles import (
    HistoryRole,
    OnlineStoreRole,
    RoleFailedError,
    Roles,
    TtlPurgeRole,
)
from tessera.server.settings import Settings, run_dir
from tessera.server.store import Committed
from tessera.server.store_hooks import StoreHooks, publish_groups

log = logging.getLogger(__name__)

_EOF = object()  # a connection's reader is done: its sender finishes what is in flight and stops


class _Connection:
    """One client: a reader thread decoding requests into the store, a sender thread encoding
    replies (never the store's writer thread: a slow client must not stall commits)."""

    def __init__(self, server: WriterServer, sock: socket.socket) -> None:
        self._server = server
        self.sock = sock
        self._replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._in_flight = 0
        self._lock = threading.Lock()
        #: This connection's aggregation plans, by the client's numbers (writer_ipc.WirePlan).
        self._plans: dict[int, tuple[str, AggregationPlan]] = {}
        self.reader = threading.Thread(target=self._read, name="tessera-writer-conn-read",
                                       daemon=True)
        self.sender = threading.Thread(target=self._send, name="tessera-writer-conn-send",
                                       daemon=True)

    def start(self) -> None:
        self.sender.start()
        self.reader.start()

    def _answer_later(self, request_id: int, fut: Future[Any]) -> None:
        with self._lock:
            self._in_flight += 1
        fut.add_done_callback(lambda f: self._replies.put((request_id, f)))

    def _read(self) -> None:
        store = self._server.store
        try:
            for body in ipc.FrameReader(self.sock).frames():
                msg = ipc.request_decoder.decode(body)
                if isinstance(msg, ipc.Submit):
                    try:
                        ops = ipc.decode_ops(msg, self._plans)
                    except Exception as exc:  # a plan this connection never sent: a client bug
                        failed: Future[Any] = Future()
                        failed.set_exception(exc)
                        self._answer_later(msg.id, failed)
                        continue
                    self._server.requests += 1
                    self._answer_later(msg.id, store.submit(ops))
                elif isinstance(msg, ipc.DropGroup):
                    self._server.requests += 1
                    self._answer_later(msg.id, store.drop_group(msg.group_id))
                elif isinstance(msg, ipc.PurgeExpired):
                    self._answer_later(
                        msg.id, self._server.purger.submit(store.purge_expired, msg.at_us,
                                                           msg.limit))
                elif isinstance(msg, ipc.CompactGroup):  # long: apart from everything else
                    self._answer_later(msg.id, self._server.compactions.submit(
                        self._server.compact_group, msg))
                elif isinstance(msg, ipc.OutboxIntent | ipc.TrimOutbox):  # the history's
                    self._answer_later(msg.id, self._server.history_ops.submit(
                        self._server.outbox_request, msg))
                elif isinstance(msg, ipc.Stats):
                    stats: Future[Any] = Future()
                    stats.set_result(self._server.stats())
                    self._answer_later(msg.id, stats)
                else:  # a registry request: apart, a delete waits for its records' drop
                    self._server.requests += 1
                    self._answer_later(msg.id, self._server.registry_ops.submit(
                        self._server.registry_request, msg))
        except (OSError, ValueError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.info("writer connection closed: %s", exc)
        finally:
            self._replies.put(_EOF)

    def _reply(self, request_id: int, fut: Future[Any]) -> bytes:
        exc = fut.exception()
        if exc is not None:
            return ipc.frame(ipc.encoder.encode(ipc.Reply(request_id,
                                                          error=ipc.error_to_wire(exc))))
        result = fut.result()
        if isinstance(result, Committed):
            reply = ipc.Reply(request_id, result.seq, ipc.results_to_wire(result.results))
        elif isinstance(result, ipc.Reply):  # a registry request's
            result.id = request_id
            reply = result
        elif isinstance(result, dict):
            reply = ipc.Reply(request_id, stats=result)
        else:  # purge_expired: its commits are before the primary's latest seq
            reply = ipc.Reply(request_id, self._server.store.visible_seq(), count=int(result))
        return ipc.frame(ipc.encoder.encode(reply))

    def _safe_reply(self, request_id: int, fut: Future[Any]) -> bytes:
        try:
            return self._reply(request_id, fut)
        except Exception as exc:  # never leave a request unanswered: the client would wait
            log.exception("encoding the reply to request %d failed", request_id)
            return ipc.frame(ipc.encoder.encode(ipc.Reply(request_id,
                                                          error=ipc.error_to_wire(exc))))

    def _send(self) -> None:
        reader_done = False
        alive = True
        while True:
            item = self._replies.get()
            out: list[bytes] = []
            while True:  # answer everything ready in one send
                if item is _EOF:
                    reader_done = True
                else:
                    out.append(self._safe_reply(*item))
                try:
                    item = self._replies.get_nowait()
                except queue.Empty:
                    break
            with self._lock:
                self._in_flight -= len(out)
                finished = reader_done and self._in_flight == 0
            if alive and out:
                try:
                    self.sock.sendall(b"".join(out))
                except OSError:
                    alive = False  # the client is gone; its writes are committed regardless
            if finished:
                break
        self.sock.close()


class WriterServer:
    """Serves a `RocksDBOnlineStore` and its `FeatureGroupRegistry` to any number of clients on
    a Unix socket."""

    def __init__(self, store: RocksDBOnlineStore, path: Path,
                 registry: FeatureGroupRegistry | None = None,
                 offline: ParquetOfflineWriter | None = None,
                 marks: OutboxMarks | None = None,
                 history: HistoryClient | None = None) -> None:
        self.store = store
        self.path = path
        self.registry = registry
        self.offline = offline
        #: The outbox's marks, written for the history process (OutboxIntent, TrimOutbox).
        self.marks = marks
        #: The history process, when history runs there: compactions are sent to it.
        self.history = history
        #: The history process's intents and trims: one synced write each, in order.
        self.history_ops = ThreadPoolExecutor(1, thread_name_prefix="tessera-writer-history")
        #: Compactions run for seconds or minutes (they take the flusher's lock per partition):
        #: one at a time, apart from the registry's and the purger's threads.
        self.compactions = ThreadPoolExecutor(1, thread_name_prefix="tessera-writer-compact")
        #: purge_expired blocks until its commit: run apart, so the connection keeps reading.
        self.purger = ThreadPoolExecutor(1, thread_name_prefix="tessera-writer-purge")
        #: Registry mutations block (a sync write, the offline folder, a delete's drop and
        #: flush): one thread, apart from the connections (the registry serializes them anyway).
        self.registry_ops = ThreadPoolExecutor(1, thread_name_prefix="tessera-writer-registry")
        self.requests = 0
        self._conns: list[_Connection] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)  # a socket left by a killed writer (the DB lock is ours)
        old_umask = os.umask(0o077)  # only the owner may connect: the socket writes the store
        try:
            with ipc.reachable(path) as name:
                self._listener.bind(name)
        finally:
            os.umask(old_umask)
        self._listener.listen(128)
        self._closing = False
        #: False once the acceptor stopped (by `stop`, or died).
        self.accepting = True
        self._acceptor = threading.Thread(target=self._accept, name="tessera-writer-accept",
                                          daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def stats(self) -> dict[str, int]:
        return {"commits": self.store.commits, "committed_ops": self.store.committed_ops,
                "requests": self.requests, "seq": self.store.visible_seq()}

    def compact_group(self, msg: ipc.CompactGroup) -> dict[str, int]:
        """Run one compaction (on `compactions`) where the flusher is: in the history process
        when there is one, else here (the single process's `compact_group`); its result's
        counts."""
        if self.registry is None or self.offline is None:
            raise StorageError("this writer process serves no offline store")
        group = self.registry.describe(ipc.name_from_wire(msg.name))
        if self.history is not None:
            return dataclasses.asdict(self.history.compact_group(group, msg.min_files))
        return dataclasses.asdict(compact_group(self.offline, group, msg.min_files))

    def outbox_request(self, msg: ipc.OutboxIntent | ipc.TrimOutbox) -> ipc.Reply:
        """Record a flush's intent or trim its range (on `history_ops`), checked against the
        marks (server/outbox.py `OutboxMarks`); the reply's seq is the primary's after it."""
        if self.marks is None:
            raise StorageError("this writer process keeps its history flusher to itself")
        if isinstance(msg, ipc.OutboxIntent):
            self.marks.record_intent(msg.first, msg.last, self.store.last_seq)
        else:
            self.marks.trim(msg.first, msg.last)
        return ipc.Reply(0, self.store.visible_seq())

    def registry_request(self, msg: ipc.Request) -> ipc.Reply:
        """Run one registry request (on `registry_ops`); its reply, id filled in later. The
        seq is the primary's after the change: a secondary at it reflects the change."""
        registry = self.registry
        if registry is None:
            raise StorageError("this writer process serves no feature group registry")
        try:
            if isinstance(msg, ipc.CreateFeatureGroup):
                group = registry.create(ipc.model_from_wire(FeatureGroupDefinition,
                                                            msg.definition))
                return ipc.Reply(0, self.store.visible_seq(), group=ipc.model_to_wire(group))
            if isinstance(msg, ipc.UpdateFeatureGroup):
                group = registry.update(ipc.name_from_wire(msg.name),
                                        ipc.model_from_wire(FeatureGroupUpdate, msg.update))
                return ipc.Reply(0, self.store.visible_seq(), group=ipc.model_to_wire(group))
            if isinstance(msg, ipc.DeleteFeatureGroup):
                registry.delete(ipc.name_from_wire(msg.name))
                return ipc.Reply(0, self.store.visible_seq())
            if isinstance(msg, ipc.QuarantinedGroups):
                marks = {ipc.name_to_wire(name): ipc.name_to_wire(reason)
                         for name, reason in registry.quarantined().items()}
                return ipc.Reply(0, self.store.visible_seq(), marks=marks)
        except (ValidationError, json.JSONDecodeError) as exc:  # validated by the sender
            raise InvalidRequestError(f"invalid feature group request: {exc}") from exc
        raise InvalidRequestError(f"not a registry request: {type(msg).__name__}")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                self.accepting = False
                return  # closed by stop()
            if self._closing:
                sock.close()
                return
            conn = _Connection(self, sock)
            self._conns = [c for c in self._conns if c.sender.is_alive()] + [conn]
            conn.start()

    def stop(self) -> None:
        """Stop accepting and reading; answer every request already received (the store
        drains its queue); close the connections. The caller then closes the store and DB."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join()
        self.path.unlink(missing_ok=True)
        conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RD)
        for conn in conns:
            conn.reader.join()
        self.purger.shutdown(wait=True)
        self.history_ops.shutdown(wait=True)
        self.compactions.shutdown(wait=True)  # a compaction running finishes, then history
        self.registry_ops.shutdown(wait=True)  # a delete's drop goes through the store
        self.store.close()  # commits and acknowledges everything queued
        for conn in conns:
            conn.sender.join()


class WriterServerRole:
    """The socket: started last, stopped first (stop accepting, answer every request already
    received, drain the store's queue)."""

    name = "writer socket"

    def __init__(self, server: WriterServer) -> None:
        self._server = server

    async def start(self) -> None:
        self._server.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._server.stop)

    async def died(self) -> str:
        while self._server.accepting:
            await asyncio.sleep(0.5)
        return "the writer socket stopped accepting"


async def serve(settings: Settings, stop: asyncio.Event, warm_kernels: bool = True,
                history_process: bool = False) -> None:
    """Start the roles in order, serve until `stop` is set or a role dies, stop them in reverse
    (the module docstring); raises RoleFailedError when a role died or a stop failed, always
    after stopping every started role. `history_process`: history runs in the history process
    (server/history_process.py), not in a flusher thread here."""
    roles = Roles()
    died: tuple[str, str] | None = None
    try:
        online = await roles.start(OnlineStoreRole(
            settings.data_dir / "online",
            block_cache_mb=settings.online_store.block_cache_mb,
            write_buffer_mb=settings.online_store.write_buffer_mb,
            max_commit_records=settings.online_store.max_commit_records,
        ))
        rocks, store = online.rocks, online.store
        registry = FeatureGroupRegistry(rocks)
        offline = ParquetOfflineWriter(settings.offline_root)
        marks = OutboxMarks(rocks)
        history: HistoryClient | None = None
        if history_process:
            history = HistoryClient(history_socket_path(settings.data_dir))
            registry.hooks = HistoryProcessHooks(store, offline, history)
        else:
            flusher = OutboxFlusher(
                rocks, store, offline, registry.by_id,
                interval_s=settings.offline_store.flush_interval_s,
                max_rows=settings.offline_store.flush_max_rows,
            )
            registry.hooks = StoreHooks(store, offline, flusher)
        await asyncio.to_thread(publish_groups, registry, offline)
        if warm_kernels:  # in the background: the first commit with aggregates waits for them
            threading.Thread(target=ensure_kernels, name="tessera-kernels", daemon=True).start()
        if history is None:
            await roles.start(HistoryRole(flusher, store))
        purger = TtlPurger(store, settings.online_store.ttl_purge_interval_s,
                           settings.online_store.ttl_purge_batch)
        await roles.start(TtlPurgeRole(purger))
        # Scraped by the serving process answering /metrics (server/process_metrics.py), with
        # what this process counts itself: too-late aggregate events, storage errors.
        metrics.FEATURE_GROUPS.set_function(lambda: len(registry.list()))
        metrics.FEATURE_GROUPS_QUARANTINED.set_function(lambda: len(registry.quarantined()))
        metrics.GROUP_COMMITS.set_function(lambda: store.commits)
        metrics.GROUP_COMMIT_OPS.set_function(lambda: store.committed_ops)
        metrics.TTL_PURGED.set_function(lambda: purger.purged)
        # The outbox is this process's: its backlog shows here, whoever flushes it.
        metrics.OUTBOX_PENDING.set_function(lambda: max(0, store.last_seq - marks.flushed_seq()))
        if history is None:  # else the history process counts them
            metrics.OFFLINE_ROWS.set_function(lambda: offline.rows_written)
        await roles.start(MetricsEndpoint(
            endpoint_path(run_dir(settings.data_dir), WRITER), metrics.REGISTRY))
        if stop.is_set():
            return
        server = WriterServer(store, ipc.socket_path(settings.data_dir), registry, offline,
                              marks if history is not None else None, history)
        await roles.start(WriterServerRole(server))
        log.info("writer process ready on %s", server.path)
        dead = await roles.run_until(stop)
        if dead is not None:
            died = (dead[0].name, dead[1])
            log.error("the %s died (%s): stopping the writer process", *died)
    finally:
        log.info("writer process stopping: draining queued writes, flushing history")
        failures = await roles.stop_all()
    if died is not None:
        raise RoleFailedError(f"the {died[0]} died: {died[1]}")
    if failures:
        raise RoleFailedError("stopped with errors: " + "; ".join(failures))
    log.info("writer process stopped cleanly")


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings: the JSON file the supervisor wrote (`--settings`), or built from the
    flags (tests, a writer run by hand). The environment is not read: only the CLI builds
    settings from it, and it passes them whole."""
    if args.settings is not None:
        return Settings.model_validate_json(args.settings.read_text())
    if args.data_dir is None:
        raise SystemExit("writer process: --settings FILE or --data-dir DIR is required")
    return Settings.model_validate({
        "data_dir": args.data_dir,
        "online_store": {"block_cache_mb": args.block_cache_mb,
                         "write_buffer_mb": args.write_buffer_mb,
                         "max_commit_records": args.max_commit_records},
    })


async def _main(settings: Settings, warm_kernels: bool, history_process: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop, warm_kernels, history_process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--settings", type=Path, default=None,
                        help="a JSON file of Settings (Settings.model_dump_json()); when given, "
                             "the other options are ignored")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--block-cache-mb", type=int, default=512)
    parser.add_argument("--write-buffer-mb", type=int, default=64)
    parser.add_argument("--max-commit-records", type=int, default=20_000)
    parser.add_argument("--lazy-kernels", action="store_true",
                        help="load the aggregation kernels at the first commit that needs them")
    parser.add_argument("--history-process", action="store_true",
                        help="history is flushed by the history process (the supervisor's "
                             "layout), not by a thread of this process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args)
    try:
        asyncio.run(_main(settings, warm_kernels=not args.lazy_kernels,
                          history_process=args.history_process))
    except Exception:
        log.exception("the writer process failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
