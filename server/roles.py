"""The roles a Tessera server is made of, and the one lifecycle that starts and stops them.

A role is a part of the server with a start, a stop and, while it runs, a way to die: the
online store and its writer thread, the history flusher, the TTL purger, the HTTP server, the
gRPC server, readiness, the embedded Kafka consumer. `Roles` starts them one after the other
and stops the started ones in reverse order, whether start-up failed half way, SIGTERM arrived
or a role died; a role that fails to stop does not keep the others from stopping.

Each role owns its threads, sockets and files and talks to the others through the objects it
is given (a store, a registry), never through globals: that is the seam along which the roles
can later be placed in different processes (a writer process, serving processes, a history
process, consumer processes) under a supervisor. The composition root is server/app.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.log import LogLevels
from granian.server.embed import Server as EmbeddedServer
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from tessera.core.errors import StorageError
from tessera.ingest.config import IngestConfig
from tessera.server.http_fast import ASGIApp
from tessera.server.online_store import RocksDBOnlineStore, TtlPurger
from tessera.server.outbox import OutboxFlusher
from tessera.server.process_store import ProcessOnlineStore
from tessera.server.rocksdb import RocksDB, open_rocksdb
from tessera.server.settings import TlsSettings
from tessera.server.tls import ServerTls, load_server_tls

log = logging.getLogger("tessera.server")

_POLL_S = 0.5  # how often a watch looks at a thread it cannot await
_HTTP_BACKLOG = 2048  # also granian's bound on requests in flight (its backpressure)


class RoleFailedError(Exception):
    """A role died while the server was running, or failed to stop cleanly."""


def run_child(label: str, run: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """The body of a child process's `main` (serving, history, consumer): log to stderr with the
    process's `label`, run its roles, and exit 1 with one line naming the failure when a role
    fails to start or dies (OSError, RoleFailedError, StorageError), 0 after a clean stop."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {label} %(name)s: %(message)s")
    try:
        asyncio.run(run())
    except (OSError, RoleFailedError, StorageError) as exc:
        log.error("the %s process failed: %s: %s", label, type(exc).__name__, exc)
        return 1
    return 0


class Role(Protocol):
    """A part of the server with a lifecycle (see the module docstring)."""

    name: str

    async def start(self) -> None:
        """Start; on failure, leave nothing running (the role is then not stopped)."""

    async def stop(self) -> None:
        """Stop what start started; called once, in reverse start order."""

    async def died(self) -> str:
        """Return (with the reason) only if the role stops working while it should run."""


async def _forever() -> str:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")  # pragma: no cover


async def _thread_died(thread: threading.Thread, what: str) -> str:
    while thread.is_alive():
        await asyncio.sleep(_POLL_S)
    return f"{what} thread exited"


R = TypeVar("R", bound=Role)


class Roles:
    """Starts roles in order, stops the started ones in reverse order."""

    def __init__(self) -> None:
        self._started: list[Role] = []

    async def start(self, role: R) -> R:
        log.debug("starting %s", role.name)
        await role.start()
        self._started.append(role)
        return role

    async def run_until(self, stop: asyncio.Event) -> tuple[Role, str] | None:
        """Wait until `stop` is set (None) or a started role dies (that role and why)."""
        death = asyncio.ensure_future(self.wait_for_death())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([death, stopping], return_when=asyncio.FIRST_COMPLETED)
            return death.result() if death.done() else None
        finally:
            death.cancel()
            stopping.cancel()

    async def wait_for_death(self) -> tuple[Role, str]:
        """The first started role that dies, and why (waits forever if none does)."""
        tasks = {asyncio.ensure_future(r.died()): r for r in self._started}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            task = done.pop()
            try:
                reason = task.result()
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            return tasks[task], reason
        finally:
            for t in tasks:
                t.cancel()

    async def stop_all(self) -> list[str]:
        """Stop every started role, last first; returns the failures (logged)."""
        failures: list[str] = []
        while self._started:
            role = self._started.pop()
            try:
                await role.stop()
            except (Exception, asyncio.CancelledError) as exc:  # the others stop all the same
                log.exception("stopping the %s failed", role.name)
                failures.append(f"{role.name}: {exc!r}")
        return failures


class OnlineStoreRole:
    """RocksDB and the group-commit writer thread that owns every mutation."""

    name = "online store"

    def __init__(
        self, path: Path, block_cache_mb: int, write_buffer_mb: int, max_commit_records: int
    ) -> None:
        self._path = path
        self._cache_mb, self._buffer_mb = block_cache_mb, write_buffer_mb
        self._max_commit_records = max_commit_records
        self._rocks: RocksDB | None = None
        self._store: RocksDBOnlineStore | None = None

    @property
    def rocks(self) -> RocksDB:
        if self._rocks is None:
            raise RuntimeError("the online store is not started")
        return self._rocks

    @property
    def store(self) -> RocksDBOnlineStore:
        if self._store is None:
            raise RuntimeError("the online store is not started")
        return self._store

    async def start(self) -> None:
        rocks = await asyncio.to_thread(
            open_rocksdb, self._path, self._cache_mb, self._buffer_mb
        )
        try:
            self._store = RocksDBOnlineStore(rocks, self._max_commit_records)
        except BaseException:
            rocks.close()
            raise
        self._rocks = rocks

    async def stop(self) -> None:
        try:
            await asyncio.to_thread(self.store.close)  # drains queued writes (if any are left)
        finally:
            await asyncio.to_thread(self.rocks.close)

    async def died(self) -> str:
        return await _thread_died(self.store.writer_thread, "the online store's writer")


class ProcessStoreRole:
    """A serving process's online store: a RocksDB secondary for reads and a connection to the
    writer process for writes (server/process_store.py). It cannot die: while the writer is
    down, writes fail fast (UNAVAILABLE) and the next one after it is back reconnects."""

    name = "online store (secondary + writer client)"

    def __init__(self, data_dir: Path, secondary_dir: Path, block_cache_mb: int,
                 catch_up_interval_s: float, registry_only: bool = False) -> None:
        self._data_dir, self._secondary_dir = data_dir, secondary_dir
        self._cache_mb, self._interval_s = block_cache_mb, catch_up_interval_s
        self._registry_only = registry_only  # the consumer process: it reads no records
        self._store: ProcessOnlineStore | None = None

    @property
    def store(self) -> ProcessOnlineStore:
        if self._store is None:
            raise RuntimeError("the online store is not started")
        return self._store

    async def start(self) -> None:
        self._store = await asyncio.to_thread(
            ProcessOnlineStore, self._data_dir, self._secondary_dir,
            catch_up_interval_s=self._interval_s, block_cache_mb=self._cache_mb,
            registry_only=self._registry_only,
        )

    async def stop(self) -> None:
        await asyncio.to_thread(self.store.close)

    async def died(self) -> str:
        return await _forever()


class HistoryRole:
    """The outbox flusher: committed history rows to Parquet."""

    name = "history flusher"

    def __init__(self, flusher: OutboxFlusher, store: RocksDBOnlineStore) -> None:
        self._flusher, self._store = flusher, store

    async def start(self) -> None:
        await asyncio.to_thread(self._flusher.start)

    async def stop(self) -> None:
        # The writer drains first, so every acknowledged write is in the outbox to flush.
        await asyncio.to_thread(self._store.close)
        await asyncio.to_thread(self._flusher.stop)

    async def died(self) -> str:
        return await _forever()  # its thread survives flush failures (it retries)


class TtlPurgeRole:
    """The background purge of expired records."""

    name = "TTL purger"

    def __init__(self, purger: TtlPurger) -> None:
        self._purger = purger

    async def start(self) -> None:
        self._purger.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._purger.stop)

    async def died(self) -> str:
        return await _forever()


class ClosingRole:
    """A component with nothing to start and a `close` to call at stop (e.g. the catalog)."""

    def __init__(self, name: str, close: Callable[[], None]) -> None:
        self.name = name
        self._close = close

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await asyncio.to_thread(self._close)

    async def died(self) -> str:
        return await _forever()


def bind_tcp(host: str, port: int, reuse_port: bool = False, listen: bool = True,
             backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on (host, port); OSError (e.g. the port is in use) otherwise.
    `reuse_port`: SO_REUSEPORT, so the serving processes share the port (the kernel spreads
    connections over their listening sockets); `listen=False` only reserves the port (the
    supervisor holds such a socket so no other program takes the port while children restart).
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind HTTP to {host}:{port}: {exc.strerror}") from exc
    return sock


class _EmbeddedGranian(EmbeddedServer):
    """granian's embedded server (its Rust HTTP/1.1 and HTTP/2 stack, the ASGI app run on this
    process's event loop, beside grpc.aio) serving a socket bound by `bind_tcp`: bound by us,
    so a port in use is an OSError at start-up, the port can be 0 and SO_REUSEPORT is ours.
    granian owns the descriptor from then on (it closes it when it stops)."""

    def __init__(self, app: ASGIApp, fd: int, backlog: int, tls: ServerTls | None = None) -> None:
        super().__init__(
            app, interface=Interfaces.ASGINL, http=HTTPModes.auto, websockets=False,
            backlog=backlog,
            # TLS (rustls; HTTP/2 and HTTP/1.1 by ALPN): 1.2 at least, as grpc's port; with a
            # client CA a client certificate is required.
            ssl_cert=tls.cert if tls else None, ssl_key=tls.key if tls else None,
            ssl_ca=tls.client_ca if tls else None,
            ssl_client_verify=tls is not None and tls.client_ca is not None,
            ssl_protocol_min=SSLProtocols.tls12,
            # granian's records go to Tessera's logging (its own console handler stays unused);
            # errors only: its start-up notice is not one.
            log_level=LogLevels.error,
            log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
        )
        self._fd, self._backlog = fd, backlog

    def _init_shared_socket(self) -> None:
        # What granian's own binding sets (granian/server/common.py), from our descriptor;
        # its stubs declare neither these attributes nor SocketHolder's constructor.
        holder: Any = SocketHolder
        state: Any = self
        state._ssp, state._shd, state._sfd = None, holder(self._fd, False, self._backlog), self._fd

    def running(self) -> bool:
        """Whether granian's worker serves (on this loop)."""
        workers: list[Any] = self.wrks
        return bool(workers) and bool(workers[0].is_alive())

    def stop_now(self) -> None:
        """Stop waiting for the requests in flight: cancel the worker."""
        workers: list[Any] = self.wrks
        for worker in workers:
            worker.kill()


class HttpRole:
    """The HTTP server: granian (embedded, on this process's event loop) serving the ASGI app:
    the fast-path router in front of the FastAPI control plane (server/http_fast.py). Stopping
    stops accepting, lets the requests in flight finish (up to `grace_s`) and closes idle
    keep-alive connections. `tls`: HTTPS (server/tls.py), checked before the port is bound."""

    name = "HTTP server"

    def __init__(self, app: ASGIApp, host: str, port: int, reuse_port: bool = False,
                 grace_s: float = 10.0, tls: TlsSettings | None = None) -> None:
        self._app = app
        self._tls = tls
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._grace_s = grace_s
        self._server: _EmbeddedGranian | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        tls = load_server_tls(self._tls)
        sock = bind_tcp(self._host, self._port, self._reuse_port, backlog=_HTTP_BACKLOG)
        self.port = sock.getsockname()[1]
        try:
            server = _EmbeddedGranian(self._app, sock.fileno(), _HTTP_BACKLOG, tls)
        except BaseException:
            sock.close()
            raise
        sock.detach()  # granian's now
        task = asyncio.create_task(server.serve())
        # The socket already listens (connections wait in its backlog); started is when
        # granian's worker runs.
        while not server.running():
            if task.done():
                exc = task.exception() if not task.cancelled() else None
                raise OSError(f"the HTTP server did not start: {exc!r}")
            await asyncio.sleep(0.005)
        self._server, self._task = server, task

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        stop: Any = self._server.stop  # untyped in granian
        stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._grace_s)
        except TimeoutError:
            # Requests still running past the grace: stop waiting for them (the worker is
            # cancelled; the process is on its way out).
            self._server.stop_now()
            log.warning("HTTP requests still running %.3gs after the stop; not waiting longer",
                        self._grace_s)

    async def died(self) -> str:
        if self._task is None:
            return await _forever()
        await asyncio.shield(self._task)
        return "the HTTP server exited"


class GrpcRole:
    """The gRPC runtime API; stopping drains in-flight calls for up to `grace_s`. `tls`: a
    secure port (server/tls.py; with a client CA, mutual TLS) instead of a plaintext one."""

    name = "gRPC server"

    def __init__(self, server: grpc.aio.Server, address: str, grace_s: float,
                 tls: TlsSettings | None = None) -> None:
        self._server, self._address, self._grace_s = server, address, grace_s
        self._tls = tls
        self.port = 0

    async def start(self) -> None:
        cause = ""
        try:
            tls = load_server_tls(self._tls)
        except OSError:
            await self._server.stop(None)
            raise
        try:
            if tls is not None:
                port = self._server.add_secure_port(self._address, tls.grpc_credentials())
            else:
                port = self._server.add_insecure_port(self._address)
        except RuntimeError as exc:  # grpcio raises, older versions return 0
            port, cause = 0, f": {exc}"
        if port == 0:
            await self._server.stop(None)
            raise OSError(f"cannot bind gRPC to {self._address}{cause}")
        self.port = port
        try:
            await self._server.start()
        except BaseException:
            await self._server.stop(None)
            raise

    async def stop(self) -> None:
        await self._server.stop(self._grace_s)

    async def died(self) -> str:
        # Shielded: cancelling grpc's wait_for_termination would cancel its shutdown future.
        await asyncio.shield(self._server.wait_for_termination())
        return "the gRPC server terminated"


class ReadinessRole:
    """Ready once every role before it started: /readyz and gRPC health say SERVING, and the
    ready file (if any) names the ports. Stopping it first makes load balancers look away
    while the calls in flight drain."""

    name = "readiness"

    def __init__(
        self, health: HealthServicer, services: list[str], ready_file: Path | None,
        ports: Callable[[], dict[str, int]],
    ) -> None:
        self._health, self._services = health, services
        self._ready_file, self._ports = ready_file, ports
        self.ready = False

    async def start(self) -> None:
        for service in self._services:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.ready = True
        if self._ready_file is not None:
            tmp = self._ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self._ports(), "pid": os.getpid()}))
            tmp.replace(self._ready_file)

    async def stop(self) -> None:
        self.ready = False
        await self._health.enter_graceful_shutdown()

    async def died(self) -> str:
        return await _forever()


class ReadyFileRole:
    """A process without ports (a consumer process) is ready: {pid} goes to the ready file,
    which its supervisor waits for."""

    name = "readiness"

    def __init__(self, path: Path) -> None:
        self._path = path

    async def start(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid()}))
        tmp.replace(self._path)

    async def stop(self) -> None:
        self._path.unlink(missing_ok=True)

    async def died(self) -> str:
        return await _forever()


class IngestRole:
    """The embedded Kafka consumer, writing straight into the store (a thread of its own)."""

    name = "Kafka consumer"

    def __init__(self, run: Callable[[threading.Event], None], config: IngestConfig) -> None:
        self._run = run
        self._config = config
        self._stop = threading.Event()
        self._task: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(asyncio.to_thread(self._run, self._stop))
        log.info("consuming %d Kafka topic(s) into the store", len(self._config.topics))

    async def stop(self) -> None:
        self._stop.set()  # drain and commit before the store closes
        if self._task is None:
            return
        if self._task.done():  # it died: its failure was reported as the reason to stop
            self._task.exception()
            return
        await self._task

    async def died(self) -> str:
        if self._task is None:
            return await _forever()
        await asyncio.shield(self._task)  # raises the consumer's failure
        return "the Kafka consumer returned"
