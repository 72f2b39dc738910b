"""`POST /v1/sql` runs its queries in worker processes, never in the serving process.

Why: DuckDB parses a statement holding the interpreter lock (`extract_statements` of a 220 KiB
query: ~0.6 s measured, and it grows faster than the text), and a Python process has one lock
for the gRPC handlers, the HTTP loop and the query. In a process of its own a query can hold its
own interpreter as long as it likes; the server's loop only waits on a socket. Each worker:

- opens the offline store's catalog (`Catalog`, the SQL sandbox) once and runs one query at a
  time: the time limit, the select-only check, the read and the encoding (json, csv, parquet)
  all happen there, and the encoded body comes back over a socket pair;
- is told to cancel a query whose HTTP client went away (it interrupts DuckDB);
- is killed when a query outlives its time limit by a grace period (a phase DuckDB does not
  interrupt) or when the server stops, and started again by the next query.

The protocol is pickled tuples over `multiprocessing.connection.Connection` (both ends are this
module): ("run", id, query, format, max_rows, max_result_bytes, timeout_s), ("cancel", id) ->
("ok", id, media_type, body) or ("error", id, http_status, class_name, message).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tessera.core.errors import InvalidRequestError, StorageError, TesseraError
from tessera.core.sql_sandbox import (
    QueryCancelledError,
    QueryTimeoutError,
    QueryTooLargeError,
    ResultTooLargeError,
)
from tessera.server.settings import SqlSettings

log = logging.getLogger(__name__)

MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
#: How long past its time limit a query may take to stop before its worker is killed.
KILL_GRACE_S = 5.0
#: Arrow data held while reading a csv or parquet result, as a multiple of max_result_bytes:
#: encoded results are smaller (Parquet compresses), so only a runaway result stops here.
_ARROW_FACTOR = 8
_ERRORS: dict[str, type[TesseraError]] = {
    cls.__name__: cls
    for cls in (QueryTooLargeError, ResultTooLargeError, QueryTimeoutError, QueryCancelledError)
}


@dataclass(frozen=True)
class WorkerConfig:
    root: str
    temp_directory: str
    memory_limit: str
    threads: int
    max_query_bytes: int


# --- the server's side ---------------------------------------------------------------------------


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        # DuckDB's spill files: a folder per process, removed with it.
        self.temp = Path(config.temp_directory) / f"worker-{uuid.uuid4().hex[:12]}"
        parent, child = socket.socketpair()
        args = [
            sys.executable, "-m", "tessera.server.sql_worker", "--fd", str(child.fileno()),
            "--root", config.root, "--temp-directory", str(self.temp),
            "--memory-limit", config.memory_limit, "--threads", str(config.threads),
            "--max-query-bytes", str(config.max_query_bytes),
        ]
        try:
            self.proc = subprocess.Popen(
                args, pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, close_fds=True
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.ids = itertools.count(1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()
        shutil.rmtree(self.temp, ignore_errors=True)


class SqlWorkers:
    """A pool of SQL worker processes (started on first use); `run` answers one query."""

    def __init__(
        self, config: WorkerConfig, *, workers: int, timeout_s: float, max_result_bytes: int
    ) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.max_result_bytes = max_result_bytes
        self._size = workers
        self._idle: asyncio.Queue[_Worker | None] | None = None
        self._all: set[_Worker] = set()
        self._closed = False

    @classmethod
    def for_settings(
        cls, offline_root: Path | str, temp_directory: Path | str, settings: SqlSettings
    ) -> SqlWorkers:
        """The pool `tessera serve` runs: its `sql` settings, spilling under `temp_directory`."""
        config = WorkerConfig(str(offline_root), str(temp_directory), settings.memory_limit,
                              settings.threads, settings.max_query_bytes)
        return cls(config, workers=settings.workers, timeout_s=settings.timeout_s,
                   max_result_bytes=settings.max_result_bytes)

    def _queue(self) -> asyncio.Queue[_Worker | None]:
        if self._idle is None:  # made on the loop that serves the requests
            self._idle = asyncio.Queue()
            for _ in range(self._size):
                self._idle.put_nowait(None)
        return self._idle

    async def run(
        self,
        query: str,
        fmt: str,
        max_rows: int,
        is_disconnected: Callable[[], Awaitable[bool]],
        timeout_s: float | None = None,
    ) -> tuple[str, bytes]:
        """The query's result encoded as `fmt`: (media type, body). Raises the query's error,
        QueryTimeoutError past the time limit, QueryCancelledError when the client went away or
        the server is stopping."""
        timeout = timeout_s or self.timeout_s
        start = time.monotonic()
        idle = self._queue()
        try:
            worker = await asyncio.wait_for(idle.get(), timeout)
        except TimeoutError:
            raise QueryTimeoutError(
                f"sql: no SQL worker became free within {timeout:g} s (sql.workers "
                f"= {self._size}); retry later"
            ) from None
        try:
            if self._closed:
                raise QueryCancelledError("sql: the server is stopping")
            if worker is None or not worker.alive():
                if worker is not None:
                    self._discard(worker)
                worker = _Worker(self.config)
                self._all.add(worker)
            remaining = max(timeout - (time.monotonic() - start), 0.001)
            reply = await self._exchange(
                worker, query, fmt, max_rows, remaining, is_disconnected
            )
        except asyncio.CancelledError:
            # The request itself was cancelled (its client went away): the query must not run
            # on unobserved, and its worker's reply would be read by the next query.
            if worker is not None:
                self._discard(worker)
                worker = None
            raise
        except BaseException:
            if worker is not None and not worker.alive():
                self._discard(worker)
                worker = None
            raise
        finally:
            idle.put_nowait(worker)
        return reply

    async def _exchange(
        self,
        worker: _Worker,
        query: str,
        fmt: str,
        max_rows: int,
        timeout: float,
        is_disconnected: Callable[[], Awaitable[bool]],
    ) -> tuple[str, bytes]:
        qid = next(worker.ids)
        request = ("run", qid, query, fmt, max_rows, self.max_result_bytes, timeout)
        try:
            await asyncio.to_thread(worker.conn.send, request)
        except OSError as exc:
            worker.kill()
            raise StorageError(f"sql: the SQL worker process is not running: {exc}") from exc
        received = asyncio.ensure_future(asyncio.to_thread(worker.conn.recv))
        kill_at = time.monotonic() + timeout + KILL_GRACE_S
        why: TesseraError | None = None
        while True:
            done, _ = await asyncio.wait({received}, timeout=0.2)
            if done:
                break
            if why is None and await is_disconnected():
                why = QueryCancelledError("sql: the client went away; the query was stopped")
                kill_at = min(kill_at, time.monotonic() + KILL_GRACE_S)
                await asyncio.to_thread(worker.conn.send, ("cancel", qid))
            if time.monotonic() > kill_at:
                # DuckDB did not stop in time (a phase it does not interrupt): end the process.
                log.warning("SQL worker %d killed: its query did not stop in time", worker.proc.pid)
                worker.kill()
                await asyncio.gather(received, return_exceptions=True)
                raise why or QueryTimeoutError(
                    f"sql: the query ran longer than its time limit of {timeout:g} s and was "
                    "stopped (sql.timeout_s)"
                )
        try:
            reply: tuple[Any, ...] = received.result()
        except (EOFError, OSError) as exc:
            if self._closed:
                raise QueryCancelledError("sql: the server is stopping") from exc
            raise StorageError(
                "sql: the SQL worker process stopped while running the query (killed, or out "
                "of memory); a new one serves the next query"
            ) from exc
        if reply[0] == "ok":
            return str(reply[2]), bytes(reply[3])
        _, _, status, name, message = reply
        raise _error(int(status), str(name), str(message))

    def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()

    def close(self) -> None:
        """Stop every worker now: a running query answers 503 (the server is stopping)."""
        self._closed = True
        for worker in list(self._all):
            self._discard(worker)


def _error(status: int, name: str, message: str) -> TesseraError:
    cls = _ERRORS.get(name)
    if cls is not None:
        return cls(message)
    if status == 422:
        return InvalidRequestError(message)
    err = TesseraError(message)
    err.http_status = status
    return err


# --- the worker's side ---------------------------------------------------------------------------


def _encode(
    catalog: Any, request: tuple[Any, ...], guards: dict[int, Any], max_query_bytes: int
) -> tuple[str, bytes]:
    import pyarrow as pa

    from tessera.core.sql_results import csv_text, json_result, parquet_bytes

    _, qid, query, fmt, max_rows, max_bytes, timeout_s = request
    kept: list[pa.RecordBatch] = []
    rows = held = 0
    with catalog.sql_reader(
        query,
        timeout_s=timeout_s,
        max_query_bytes=max_query_bytes,
        on_start=lambda g: guards.__setitem__(qid, g),
    ) as reader:
        schema = reader.schema
        for batch in reader:
            if fmt == "json":
                if rows < max_rows:
                    kept.append(batch.slice(0, max_rows - rows))
            else:
                kept.append(batch)
                held += batch.nbytes
                if held > max_bytes * _ARROW_FACTOR:
                    raise _too_large(f"more than {held} bytes in memory", max_bytes)
            rows += batch.num_rows
    table = pa.Table.from_batches(kept, schema=schema)
    if fmt == "json":
        body = json_result(table, rows, rows > max_rows)
    elif fmt == "csv":
        body = (csv_text(table) or "").encode()
    else:
        body = parquet_bytes(table)
    if len(body) > max_bytes:
        raise _too_large(f"{len(body)} bytes", max_bytes)
    return MEDIA_TYPES[fmt], body


def _too_large(size: str, limit: int) -> ResultTooLargeError:
    return ResultTooLargeError(
        f"sql: the result is {size}, more than the limit of {limit} bytes "
        "(sql.max_result_bytes); add a LIMIT, select fewer columns, or aggregate"
    )


def _serve(conn: Connection, catalog: Any, max_query_bytes: int) -> None:
    guards: dict[int, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if msg[0] != "run":
            continue  # a cancel for a query already answered
        qid = msg[1]
        result: list[tuple[Any, ...]] = []

        def work(request: tuple[Any, ...] = msg, out: list[tuple[Any, ...]] = result) -> None:
            try:
                media, body = _encode(catalog, request, guards, max_query_bytes)
                out.append(("ok", request[1], media, body))
            except TesseraError as exc:
                out.append(("error", request[1], exc.http_status, type(exc).__name__,
                            exc.message))
            except Exception as exc:  # noqa: BLE001  (reported to the server, which logs it)
                traceback.print_exc()
                out.append(("error", request[1], 500, type(exc).__name__,
                            f"sql: internal error in the SQL worker: {type(exc).__name__}"))

        thread = threading.Thread(target=work, name=f"tessera-sql-{qid}", daemon=True)
        thread.start()
        while thread.is_alive():
            try:
                if conn.poll(0.05):
                    other = conn.recv()
                    if other[0] == "cancel" and other[1] == qid and qid in guards:
                        guards[qid].cancel("the client went away")
            except (EOFError, OSError):
                if qid in guards:
                    guards[qid].cancel("the server went away")
                thread.join(KILL_GRACE_S)
                return
        guards.pop(qid, None)
        try:
            conn.send(result[0])
        except (BrokenPipeError, OSError):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera-sql-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--temp-directory", required=True)
    parser.add_argument("--memory-limit", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-query-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s sql-worker %(message)s")
    conn = Connection(args.fd)
    # Queries are batch work: the serving process (GetRecord, probes) gets the CPU first, and
    # by default one core is left to it.
    with contextlib.suppress(OSError):
        os.nice(5)
    threads = args.threads or max(1, (os.cpu_count() or 1) - 1)
    from tessera.core.catalog import Catalog

    Path(args.temp_directory).mkdir(parents=True, exist_ok=True)
    catalog = Catalog(args.root, memory_limit=args.memory_limit,
                      temp_directory=args.temp_directory, threads=threads)
    try:
        _serve(conn, catalog, args.max_query_bytes)
    finally:
        catalog.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
