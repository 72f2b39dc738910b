"""A real writer process (server/writer_process.py) for tests: started on a data dir, ready once
its socket accepts, always reaped (`stop`, `kill`, or the context manager's exit)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tessera.server.settings import Settings
from tessera.server.writer_ipc import reachable, socket_path


class WriterProcess:
    def __init__(self, data_dir: Path, max_commit_records: int = 20_000,
                 settings: Settings | None = None) -> None:
        """`settings` (their data_dir must be `data_dir`): passed as the supervisor does, in a
        JSON file; without, the flags for a small store."""
        self.data_dir = data_dir
        self.max_commit_records = max_commit_records
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.with_name(data_dir.name + ".writer.log")

    @property
    def socket(self) -> Path:
        return socket_path(self.data_dir)

    def start(self, timeout_s: float = 30.0) -> WriterProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings is not None:
            settings_file = self.data_dir.with_name(self.data_dir.name + ".settings.json")
            settings_file.write_text(self.settings.model_dump_json())
            flags = ["--settings", str(settings_file)]
        else:
            flags = ["--data-dir", str(self.data_dir), "--block-cache-mb", "8",
                     "--write-buffer-mb", "4", "--max-commit-records",
                     str(self.max_commit_records)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tessera.server.writer_process", *flags,
                 # tests that fold aggregates load the kernels then; the others skip the CPU
                 "--lazy-kernels"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout_s
        while not self._accepts():
            if self.proc.poll() is not None:
                raise RuntimeError(f"writer exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"writer not ready in {timeout_s}s:\n{self.log()}")
            time.sleep(0.01)
        return self

    def _accepts(self) -> bool:
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, reachable(self.socket) as n:
            try:
                s.connect(n)
                return True
            except OSError:
                return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> WriterProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
