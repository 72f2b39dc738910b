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

Who asks matters (issue 12): a caller sees the views of the groups it may read and nothing
else. An admin (everyone, with authentication off) queries the catalog of every group; any
other caller's query runs in a catalog of the groups it may read (`Catalog(groups=...)`: a
database of its own, whose views and allowed directories are those groups' only), kept per
set of groups (the last `_KEPT_CATALOGS`), and a name it may not read answers 403 naming the
group, whether or not that group exists (as everywhere else: the permission is checked before
existence, so a 403 tells nothing about which groups exist). No caller, admin included, may
call a table function that reads files (`sql_sandbox.check_views_only`).

The protocol is pickled tuples over `multiprocessing.connection.Connection` (both ends are this
module): ("run", id, query, format, max_rows, max_result_bytes, timeout_s, reader),
("cancel", id) -> ("ok", id, media_type, body) or ("error", id, http_status, class_name,
message, group). `reader` is None for an admin, else (principal name, its permission strings);
`group` names the group of a SqlPermissionDeniedError (None otherwise), for the audit line.
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
from typing import TYPE_CHECKING, Any

from tessera.core.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    StorageError,
    TesseraError,
)
from tessera.core.sql_sandbox import (
    QueryCancelledError,
    QueryTimeoutError,
    QueryTooLargeError,
    ResultTooLargeError,
)
from tessera.server.auth.permissions import (
    LOCAL,
    Action,
    Principal,
    denied_message,
    parse_permissions,
)
from tessera.server.settings import SqlSettings

if TYPE_CHECKING:
    from tessera.core.catalog import Catalog

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


class SqlPermissionDeniedError(PermissionDeniedError):
    """A query names a group its caller may not read: 403 naming `group`."""

    def __init__(self, message: str, group: str | None = None) -> None:
        super().__init__(message)
        self.group = group


_ERRORS: dict[str, type[TesseraError]] = {
    cls.__name__: cls
    for cls in (QueryTooLargeError, ResultTooLargeError, QueryTimeoutError, QueryCancelledError,
                SqlPermissionDeniedError)
}
#: Catalogs of some groups a worker keeps (one per set of readable groups), least recently
#: used dropped first: each is a DuckDB database with its own threads and footer cache.
_KEPT_CATALOGS = 4
#: A caller's query: None (an admin: every group), or its name and permission strings.
Reader = tuple[str, tuple[str, ...]] | None


def reader_of(principal: Principal) -> Reader:
    """What a worker needs to know of who asks (None: an admin, who reads every group)."""
    if principal.is_admin:
        return None
    return principal.name, tuple(str(p) for p in principal.permissions)


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
        principal: Principal = LOCAL,
    ) -> tuple[str, bytes]:
        """The query's result encoded as `fmt`: (media type, body), over the views of the
        groups `principal` may read. Raises the query's error (PermissionDeniedError naming a
        group it may not read), QueryTimeoutError past the time limit, QueryCancelledError when
        the client went away or the server is stopping."""
        reader = reader_of(principal)
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
                worker, query, fmt, max_rows, remaining, is_disconnected, reader
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
        reader: Reader = None,
    ) -> tuple[str, bytes]:
        qid = next(worker.ids)
        request = ("run", qid, query, fmt, max_rows, self.max_result_bytes, timeout, reader)
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
        _, _, status, name, message, group = reply
        err = _error(int(status), str(name), str(message))
        if isinstance(err, SqlPermissionDeniedError):
            err.group = group
        raise err

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


class _Catalogs:
    """A worker's catalogs: every group's (for admins), and one per set of groups some
    callers may read, made on first use."""

    def __init__(self, root: str, temp_directory: str, memory_limit: str, threads: int) -> None:
        self._root = root
        self._memory_limit = memory_limit
        self._threads = threads
        self._temp = Path(temp_directory)
        self.full = self._make(None, self._temp)
        self._some: dict[frozenset[str], tuple[Catalog, Path]] = {}  # LRU order
        self._principals: dict[tuple[str, tuple[str, ...]], Principal] = {}
        self._folders = itertools.count(1)

    def _make(self, groups: frozenset[str] | None, temp: Path) -> Catalog:
        from tessera.core.catalog import Catalog

        return Catalog(self._root, memory_limit=self._memory_limit, temp_directory=temp,
                       threads=self._threads, groups=groups)

    def principal(self, reader: Reader) -> Principal:
        if reader is None:
            return LOCAL
        principal = self._principals.get(reader)
        if principal is None:
            name, perms = reader
            principal = Principal(name, parse_permissions(perms))
            if len(self._principals) >= 256:
                self._principals.clear()
            self._principals[reader] = principal
        return principal

    def for_principal(self, principal: Principal) -> Catalog:
        """The catalog of the groups `principal` may read (as of now: a group made since
        gets a catalog that has it)."""
        if principal.is_admin:
            return self.full
        self.full.refresh()
        names = [*self.full.group_names(), *self.full.broken()]
        readable = frozenset(n for n in names if principal.can(Action.READ, n))
        kept = self._some.pop(readable, None)
        if kept is None:
            temp = self._temp / f"groups-{next(self._folders)}"
            temp.mkdir(parents=True, exist_ok=True)
            kept = (self._make(readable, temp), temp)
            while len(self._some) >= _KEPT_CATALOGS:
                old, old_temp = self._some.pop(next(iter(self._some)))
                old.close()
                shutil.rmtree(old_temp, ignore_errors=True)
        self._some[readable] = kept  # the most recently used last
        return kept[0]

    def close(self) -> None:
        for catalog, _ in self._some.values():
            catalog.close()
        self.full.close()


def _encode(
    catalogs: _Catalogs, request: tuple[Any, ...], guards: dict[int, Any], max_query_bytes: int
) -> tuple[str, bytes]:
    import pyarrow as pa

    from tessera.core.catalog import UnknownTableError
    from tessera.core.sql_results import csv_text, json_result, parquet_bytes

    _, qid, query, fmt, max_rows, max_bytes, timeout_s, reader_id = request
    principal = catalogs.principal(reader_id)
    catalog = catalogs.for_principal(principal)
    kept: list[pa.RecordBatch] = []
    rows = held = 0
    try:
        with catalog.sql_reader(
            query,
            timeout_s=timeout_s,
            max_query_bytes=max_query_bytes,
            on_start=lambda g: guards.__setitem__(qid, g),
            views_only=True,
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
    except UnknownTableError as exc:
        denied = [n for n in exc.names if not principal.can(Action.READ, n)]
        if denied:
            raise SqlPermissionDeniedError(
                f"sql: {denied_message(principal, Action.READ, denied[0])}, so its view is not "
                "in this query's catalog", denied[0]
            ) from exc
        raise
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


def _serve(conn: Connection, catalogs: _Catalogs, max_query_bytes: int) -> None:
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
                media, body = _encode(catalogs, request, guards, max_query_bytes)
                out.append(("ok", request[1], media, body))
            except TesseraError as exc:
                out.append(("error", request[1], exc.http_status, type(exc).__name__,
                            exc.message, getattr(exc, "group", None)))
            except Exception as exc:  # noqa: BLE001  (reported to the server, which logs it)
                traceback.print_exc()
                out.append(("error", request[1], 500, type(exc).__name__,
                            f"sql: internal error in the SQL worker: {type(exc).__name__}",
                            None))

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
    Path(args.temp_directory).mkdir(parents=True, exist_ok=True)
    catalogs = _Catalogs(args.root, args.temp_directory, args.memory_limit, threads)
    try:
        _serve(conn, catalogs, args.max_query_bytes)
    finally:
        catalogs.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
