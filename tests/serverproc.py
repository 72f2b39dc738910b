"""A real Tessera server process for tests and benchmarks: port 0, ports read back.

`workers=N` (N >= 2) runs `tessera serve --workers N`: a supervisor, a writer process and N
serving processes. The supervisor leads a session of its own, so `kill()` SIGKILLs it and every
process of its group (its children also die with it: PR_SET_PDEATHSIG), and nothing outlives
a test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class ServerProcess:
    """`python -m tessera.server serve` on 127.0.0.1 with free ports, data in `data_dir`."""

    def __init__(
        self, data_dir: Path, extra_env: dict[str, str] | None = None, keep_ports: bool = False,
        workers: int = 1,
    ) -> None:
        """`keep_ports`: a restart binds the ports of the first start (clients keep their
        address across a server restart)."""
        self.keep_ports = keep_ports
        self.workers = workers
        self.data_dir = Path(data_dir)
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ready_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".ready.json")

    def info(self) -> dict[str, Any]:
        """The ready file as it is now (with N workers: the current writer_pid and
        serving_pids; the supervisor rewrites it when a restarted child serves again)."""
        return dict(json.loads(self.ready_path.read_text()))

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        ready = self.ready_path
        ready.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the process)
        ports = (self.grpc_port, self.http_port) if self.keep_ports else (0, 0)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.server", "serve", "--data-dir", str(self.data_dir),
             "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
             "--ready-file", str(ready), "--workers", str(self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"server not ready in {timeout_s}s:\n{self.log()}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.grpc_port, self.http_port = info["grpc_port"], info["http_port"]
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: a graceful shutdown."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_group()
            raise
        finally:
            self._log.close()
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None:
            self._kill_group()
            self._log.close()
            self.proc = None

    def _kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the supervisor and its children
        self.proc.wait()
