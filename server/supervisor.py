"""`tessera serve --workers N`: the supervisor and the process layout. Read this first.

With `--workers 1` Tessera is one process (server/app.py). With N >= 2 (the default on a
machine of several cores: one serving process per core) the process `tessera serve` started
is a supervisor that serves nothing itself:

    tessera serve --workers N   (supervisor: picks the ports, starts, watches, restarts, stops)
     |
     +-- writer process         python -m tessera.server.writer_process   (server/writer_process.py)
     |     RocksDB primary <data_dir>/online: every mutation, group commit, outbox, tiles; the
     |     registry's writes and hooks, the TTL purger; listens on the Unix socket
     |     <data_dir>/writer.sock
     +-- history process        python -m tessera.server.history_process (history_process.py)
     |     the outbox -> Parquet flusher and every Parquet file (flushes, a deleted group's
     |     folder retired, compaction): reads the outbox from its own RocksDB secondary
     |     (<data_dir>/run/secondary-history, caught up every second and before each flush);
     |     asks the writer over writer.sock to record each flush's intent and to trim the
     |     flushed range; listens on <data_dir>/run/history.sock for the writer's requests
     +-- serving process 1..N   python -m tessera.server.serving          (server/serving.py)
     |     gRPC and HTTP on the SAME two ports (SO_REUSEPORT: the kernel spreads connections);
     |     parse, validate, encode; reads from its own RocksDB secondary
     |     (<data_dir>/run/secondary-<i>); registry: RemoteRegistry over that secondary;
     |     writes and registry changes over writer.sock (server/writer_client.py)
     +-- consumer process       python -m tessera.server.consumer_process (only with
           TESSERA_INGEST; server/consumer_process.py): the embedded Kafka ingest, writing
           through writer.sock like a serving process, committing offsets once acknowledged

The socket writer.sock carries writes, registry changes and their acknowledgements, and the
history process's intents and trims (protocol: server/writer_ipc.py); RocksDB's files carry the
data to the secondaries (catch-up on a timer, 10 ms, and on demand for a read with a write
token: read-your-writes across processes; the history process's every second). history.sock
carries the writer's requests to the history process: retire a deleted group's history (after
flushing it), compact a group's partitions.

Who owns what:
- The writer process alone opens the primary and writes RocksDB (the outbox's marks too, on
  the history process's request); its docstring tells its protocol and what survives its
  crash. It publishes a group's `_group.json` when the group is created or changed.
- The history process alone writes Parquet files and moves offline folders; its docstring
  tells how a flush stays exactly-once across its crashes and the writer's.
- Serving and consumer processes own only scratch: their secondary and DuckDB spill folders
  under <data_dir>/run and <data_dir>/tmp, rebuilt at start (the history process's secondary
  too).
- The supervisor owns the ports and the children. It picks free ports once (port 0) and keeps
  a bound, non-listening SO_REUSEPORT socket on each for its whole life, so a restarted child
  binds the same port and no other program takes it meanwhile; every child gets concrete
  ports. Settings reach children as JSON in <data_dir>/run/settings.json (`--settings`).
- Every child runs under server/child.py: PR_SET_PDEATHSIG makes the kernel SIGKILL it when
  the supervisor dies, so `kill -9` of the supervisor leaves no child behind. Children have
  their own process group: Ctrl-C in a terminal reaches the supervisor only, which then stops
  them in order.

Start-up, in order: the writer (ready once its socket accepts), then the history process
(ready file <data_dir>/run/history.json, after its first flush of what the last run left) and
beside it the N serving processes (each ready once it wrote <data_dir>/run/serving-<i>.json,
after binding both ports), then the consumer process (ready file <data_dir>/run/consumer.json),
then the ready file (`--ready-file`: {grpc_port, http_port, pid: the supervisor's,
writer_pid, history_pid, serving_pids, consumer_pids}); rewritten whenever a restarted child is
ready again. A child that exits before the start-up finished, a port in use, or a start-up
longer than `START_TIMEOUT_S` is fatal: everything started is stopped and `tessera serve` exits
1 within seconds.

Crashes (any exit the supervisor did not ask for), detected by polling each child:
- A serving or consumer process is restarted after a backoff (0.1 s doubling to 5 s; reset
  once a child has run for a minute). The other serving processes keep the ports, so clients
  see at most the failed calls of the connections the dead one held; nothing durable is lost
  (the writer commits the writes it received and acknowledged). A restarted consumer resumes
  from the last committed offsets (at least once; replays are idempotent).
- The writer is restarted the same way; the serving processes keep running: while it is
  down, writes fail fast with UNAVAILABLE (retryable) and reads are served from the
  secondaries; the next write after it is back reconnects. Every acknowledged write was
  synced to the WAL with its outbox row, so it survives (the writer's docstring). The history
  process's requests fail meanwhile; its flushes are retried with backoff.
- The history process is restarted the same way; nothing else notices but the backlog
  (`tessera_offline_outbox_pending_rows`, the writer's gauge), which waits in the outbox. A
  flush it was writing is replayed with the same range from its durable intent: no row lost,
  none twice. A group delete waits for it to be back (up to a minute); a compaction under way
  fails (UNAVAILABLE).
- A child that crashes `CRASH_LOOP_COUNT` times within `CRASH_LOOP_WINDOW_S` stops the whole
  server: every child is stopped and `tessera serve` exits 1 naming the child and its exit.
- `kill -9` of the supervisor (or of its whole process group): every child dies with it;
  a restart on the data dir finds every acknowledged write, and history replays the outbox
  into the same files (no row twice).

SIGTERM / SIGINT: serving processes first (readiness off, in-flight calls drain for
`shutdown_grace_s`), then the consumer (drains, commits offsets), then the history process
(every write was acknowledged by then: it catches up and flushes every committed row to
Parquet through the writer, still running), then the writer (it answers every request it
received, syncs and closes RocksDB); exit 0. A child that does not stop in time is killed (the
exit is then 1); rows it did not flush stay in the outbox, flushed at the next start.

One service, not N servers: `GET /metrics`, answered by any serving process, shows every
process's metrics, each sample labelled `process` (writer, history, serving-<i>, consumer):
every child serves its registry on <data_dir>/run/metrics/<process>.sock and the answering
process gathers them (server/process_metrics.py). `POST /v1/feature-groups/{name}/compact`
goes to the writer (`CompactGroup` on writer.sock: it resolves the group), which sends it to
the history process, where the flusher and the offline writer's lock are.

`--workers 1` keeps history as a thread of the single process (server/app.py).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tessera.server.child import SUPERVISOR_PID
from tessera.server.roles import bind_tcp
from tessera.server.settings import Settings, run_dir
from tessera.server.writer_ipc import reachable, socket_path

log = logging.getLogger("tessera.server.supervisor")

START_TIMEOUT_S = 120.0  # a first start compiles the aggregation kernels (~20 s per process)
CRASH_LOOP_COUNT = 5
CRASH_LOOP_WINDOW_S = 60.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0
_STABLE_S = 60.0  # a child up this long starts its backoff afresh
_POLL_S = 0.02


class SupervisorError(Exception):
    """The server could not start, or a child crash-looped: everything is stopped."""


class _Stopped(Exception):
    """SIGTERM / SIGINT arrived during start-up: not a failure."""


@dataclass
class Child:
    """One supervised process: what it runs and how it is known to serve."""

    name: str
    kind: str  # "writer", "history", "serving" or "consumer": the stop order (docstring)
    argv: list[str]
    ready_file: Path | None = None  # None: the writer (ready once its socket accepts)
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    started_at: float = 0.0
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None


@dataclass(frozen=True)
class Ports:
    grpc_port: int
    http_port: int


class Supervisor:
    """Runs the writer, the history process and N serving processes (module docstring)."""

    def __init__(self, settings: Settings, ready_file: Path | None = None) -> None:
        data_dir = settings.data_dir.absolute()
        self.settings = settings.model_copy(update={"data_dir": data_dir})
        self.ready_file = ready_file
        self.run_dir = run_dir(data_dir)
        self.stopping = threading.Event()
        self._reserved: list[socket.socket] = []
        self.children: list[Child] = []
        self.ports: Ports | None = None

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> Ports:
        """Reserve the ports, start every child and wait until each serves; on failure stop
        what started and raise SupervisorError."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Ports:
        s = self.settings.server
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the data dir is a file, not writable, ...
            raise SupervisorError(
                f"cannot use the data directory {self.settings.data_dir}: {exc}") from exc
        for stale in self.run_dir.glob("serving-*.json"):
            stale.unlink()
        try:
            grpc_sock = bind_tcp(s.host, s.grpc_port, reuse_port=True, listen=False)
            self._reserved.append(grpc_sock)
            http_sock = bind_tcp(s.host, s.http_port, reuse_port=True, listen=False)
            self._reserved.append(http_sock)
        except OSError as exc:
            raise SupervisorError(f"cannot reserve the ports: {exc}") from exc
        self.ports = Ports(grpc_sock.getsockname()[1], http_sock.getsockname()[1])
        settings = self.settings.model_copy(update={"server": s.model_copy(update={
            "grpc_port": self.ports.grpc_port, "http_port": self.ports.http_port})})
        settings_file = self.run_dir / "settings.json"
        fd = os.open(settings_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(settings.model_dump_json())

        writer = Child("writer process", "writer", [
            "tessera.server.writer_process", "--settings", str(settings_file),
            "--history-process"])
        self.children.append(writer)
        self._spawn(writer)
        self._wait_ready([writer])
        ready = self.run_dir / "history.json"
        history = Child("history process", "history", [
            "tessera.server.history_process", "--settings", str(settings_file),
            "--ready-file", str(ready)], ready_file=ready)
        self.children.append(history)
        self._spawn(history)  # it needs the writer only: it starts beside the serving ones
        serving = [
            Child(f"serving process {i}", "serving", [
                "tessera.server.serving", "--settings", str(settings_file), "--index", str(i),
                "--ready-file", str(self.run_dir / f"serving-{i}.json")],
                ready_file=self.run_dir / f"serving-{i}.json")
            for i in range(1, s.workers + 1)
        ]
        self.children += serving
        for child in serving:
            self._spawn(child)
        self._wait_ready([history, *serving])
        if settings.ingest is not None:
            ready = self.run_dir / "consumer.json"
            consumer = Child("consumer process", "consumer", [
                "tessera.server.consumer_process", "--settings", str(settings_file),
                "--ready-file", str(ready)], ready_file=ready)
            self.children.append(consumer)
            self._spawn(consumer)
            self._wait_ready([consumer])
        self._write_ready_file()
        log.info("Tessera serving with %d serving processes: gRPC %s:%d, HTTP %s://%s:%d, "
                 "data in %s", len(serving), s.host, self.ports.grpc_port, settings.http_scheme,
                 s.host, self.ports.http_port, settings.data_dir)
        return self.ports

    def _spawn(self, child: Child) -> None:
        if child.ready_file is not None:
            child.ready_file.unlink(missing_ok=True)
        env = {**os.environ, SUPERVISOR_PID: str(os.getpid())}
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.server.child", *child.argv],
            env=env, process_group=0,  # Ctrl-C reaches the supervisor only (docstring)
        )
        child.ready = False
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started the %s (pid %d)", child.name, child.proc.pid)

    def _is_ready(self, child: Child) -> bool:
        if child.proc is None:
            return False
        if child.ready_file is None:
            return _accepts(socket_path(self.settings.data_dir))
        try:
            return bool(json.loads(child.ready_file.read_text())["pid"] == child.proc.pid)
        except (OSError, ValueError, KeyError):
            return False

    def _wait_ready(self, children: list[Child]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(children)
        while waiting:
            if self.stopping.is_set():
                raise _Stopped
            for child in list(waiting):
                assert child.proc is not None
                code = child.proc.poll()
                if code is not None:
                    raise SupervisorError(f"the {child.name} exited with {_exit(code)} during "
                                          "start-up (its log is above)")
                if self._is_ready(child):
                    child.ready = True
                    waiting.remove(child)
            if waiting and time.monotonic() > deadline:
                raise SupervisorError(
                    f"the {waiting[0].name} did not get ready within {START_TIMEOUT_S:.0f} s")
            time.sleep(_POLL_S)

    def _write_ready_file(self) -> None:
        if self.ready_file is None or self.ports is None:
            return
        def pids(kind: str) -> list[int]:
            return [c.proc.pid if c.proc else 0 for c in self.children if c.kind == kind]

        info = {"grpc_port": self.ports.grpc_port, "http_port": self.ports.http_port,
                "pid": os.getpid(), "writer_pid": pids("writer")[0],
                "history_pid": (pids("history") or [0])[0],
                "serving_pids": pids("serving"), "consumer_pids": pids("consumer")}
        tmp = self.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.ready_file)

    # --- run -----------------------------------------------------------------------------------

    def watch(self) -> None:
        """Restart crashed children until `stopping` is set; SupervisorError on a crash loop."""
        while not self.stopping.is_set():
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
            time.sleep(_POLL_S)

    def _check(self, child: Child, now: float) -> None:
        if child.proc is None:
            if child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
            return
        code = child.proc.poll()
        if code is None:
            if not child.ready and self._is_ready(child):
                child.ready = True
                log.info("the %s (pid %d) serves again", child.name, child.proc.pid)
                self._write_ready_file()
            return
        if self.stopping.is_set():
            return
        pid = child.proc.pid
        child.proc = None
        child.ready = False
        if now - child.started_at >= _STABLE_S:
            child.backoff_s = BACKOFF_FIRST_S
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > CRASH_LOOP_WINDOW_S:
            child.crashes.popleft()
        if len(child.crashes) >= CRASH_LOOP_COUNT:
            raise SupervisorError(
                f"the {child.name} crashed {len(child.crashes)} times within "
                f"{CRASH_LOOP_WINDOW_S:.0f} s (last: pid {pid}, {_exit(code)}); stopping "
                "the server (its log is above)")
        log.error("the %s (pid %d) exited with %s; restarting it in %.1f s", child.name, pid,
                  _exit(code), child.backoff_s)
        child.restart_at = now + child.backoff_s
        child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)

    # --- stop ----------------------------------------------------------------------------------

    def stop(self) -> bool:
        """Serving processes first, then the consumer, the history process, the writer (module
        docstring). True when every child stopped by itself in time."""
        self.stopping.set()
        grace = self.settings.server.shutdown_grace_s
        clean = True
        for kind, timeout_s in (("serving", grace + 10.0), ("consumer", 60.0),
                                ("history", 120.0), ("writer", 60.0)):
            clean &= _terminate(
                [c for c in self.children if c.kind == kind and c.proc is not None], timeout_s)
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()
        return clean


def _terminate(children: list[Child], timeout_s: float) -> bool:
    """SIGTERM each, wait up to `timeout_s` for all, SIGKILL the rest. True if none needed it."""
    for child in children:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    clean = True
    for child in children:
        assert child.proc is not None
        try:
            code = child.proc.wait(max(0.0, deadline - time.monotonic()))
            if code != 0:
                log.warning("the %s exited with %s while stopping", child.name, _exit(code))
        except subprocess.TimeoutExpired:
            log.error("the %s did not stop within %.0f s: killing it", child.name, timeout_s)
            child.proc.kill()
            child.proc.wait()
            clean = False
        child.proc = None
    return clean


def _exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, reachable(path) as name:
        try:
            s.connect(name)
            return True
        except OSError:
            return False


def run(settings: Settings, ready_file: Path | None = None,
        on_ready: Callable[[Ports], None] | None = None) -> None:
    """`tessera serve --workers N`: start, serve until SIGTERM / SIGINT, stop in order.
    Raises SupervisorError (after stopping every child) when the start-up fails, a child
    crash-loops, or a child had to be killed at stop."""
    supervisor = Supervisor(settings, ready_file)
    previous = {sig: signal.signal(sig, lambda *_: supervisor.stopping.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            ports = supervisor.start()
        except _Stopped:
            log.info("stopped during start-up")
            return
        if on_ready is not None:
            threading.Thread(target=_drive, args=(on_ready, ports), name="tessera-on-ready",
                             daemon=True).start()
        try:
            supervisor.watch()
        finally:
            log.info("shutting down: stopping the serving processes, then history and the "
                     "writer")
            clean = supervisor.stop()
        if not clean:
            raise SupervisorError("a child had to be killed while stopping (see the log)")
        log.info("stopped cleanly")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drive(on_ready: Callable[[Ports], None], ports: Ports) -> None:
    try:
        on_ready(ports)
    except Exception:
        log.exception("the on-ready task failed; the server keeps serving")
