"""A server that cannot start exits non-zero within seconds, with every port released, so a
supervisor can restart it (each test starts a real `tessera serve` that must refuse)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

EXIT_WITHIN_S = 20.0  # start-up loads the aggregation kernels (~0.4 s) before it fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data_dir: Path, grpc_port: int = 0, http_port: int = 0,
           workers: int = 1) -> tuple[int, str, float]:
    """`tessera serve`, one process unless told (--workers N: test_multiprocess.py)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tessera.server", "serve", "--data-dir", str(data_dir),
         "--grpc-port", str(grpc_port), "--http-port", str(http_port),
         "--workers", str(workers)],
        capture_output=True, text=True, timeout=EXIT_WITHIN_S + 10,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(("workers", "message"), [
    pytest.param(1, "cannot open the online store", id="workers1"),
    pytest.param(2, "cannot use the data directory", id="workers2"),
])
def test_data_dir_that_is_a_file_exits_non_zero(
    tmp_path: Path, workers: int, message: str
) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    code, out, took = _serve(data, workers=workers)
    assert code != 0, out
    assert took < EXIT_WITHIN_S
    assert message in out
    assert "Traceback" not in out


def test_corrupt_rocksdb_exits_non_zero(tmp_path: Path) -> None:
    online = tmp_path / "data" / "online"
    online.mkdir(parents=True)
    (online / "CURRENT").write_text("MANIFEST-000999\n")  # names a manifest that is not there
    code, out, took = _serve(tmp_path / "data")
    assert code != 0, out
    assert took < EXIT_WITHIN_S
    assert "StorageError: cannot open the online store" in out


def test_grpc_port_in_use_exits_non_zero_and_releases_the_http_port(tmp_path: Path) -> None:
    http_port = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        code, out, took = _serve(tmp_path / "data", grpc_port=grpc_port, http_port=http_port)
    assert code != 0, out
    assert took < EXIT_WITHIN_S
    assert f"cannot bind gRPC to 127.0.0.1:{grpc_port}" in out
    assert "failed" not in out  # every started role stopped cleanly
    assert _bindable(http_port)  # the HTTP server had bound it, and released it

    # The store it had opened was closed too: the same data dir starts and stops fine.
    proc = ServerProcess(tmp_path / "data").start()
    assert proc.stop() == 0


def test_an_invalid_port_is_refused_before_starting(tmp_path: Path) -> None:
    code, out, took = _serve(tmp_path / "data", grpc_port=-1)
    assert code != 0, out
    assert "grpc_port" in out


def test_http_port_in_use_exits_non_zero(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, took = _serve(tmp_path / "data", http_port=port)
    assert code != 0, out
    assert took < EXIT_WITHIN_S
    assert f"cannot bind HTTP to 127.0.0.1:{port}" in out


def test_offline_store_refused_by_the_catalog_exits_non_zero(tmp_path: Path) -> None:
    # The offline root is a regular file: the catalog cannot be built over it.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "offline").write_text("not a directory")
    code, out, took = _serve(tmp_path / "data")
    assert code != 0, out
    assert took < EXIT_WITHIN_S


def test_a_role_that_dies_stops_the_server_with_a_non_zero_exit(tmp_path: Path) -> None:
    # The embedded Kafka consumer fails once running (its descriptor set does not exist).
    ingest = {"bootstrap_servers": "127.0.0.1:1", "topics": [{
        "topic": "t", "feature_group": "g", "format": "protobuf",
        "protobuf_message": "nope.Missing", "descriptor_set": str(tmp_path / "missing.pb")}]}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tessera.server", "serve", "--data-dir", str(tmp_path / "data"),
         "--grpc-port", "0", "--http-port", "0", "--workers", "1"],
        capture_output=True, text=True, timeout=EXIT_WITHIN_S + 10,
        env={**os.environ, "TESSERA_INGEST": json.dumps(ingest)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert time.monotonic() - start < EXIT_WITHIN_S
    assert "RoleFailedError: the Kafka consumer died" in out
    assert " failed" not in out  # the other roles stopped cleanly
