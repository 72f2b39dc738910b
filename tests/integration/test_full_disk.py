"""A full disk, for real: the data dir on a small tmpfs, filled with a filler file. Writes answer
UNAVAILABLE while reads keep working; once the filler is deleted, writes succeed again without a
restart, the history reaches Parquet, and SIGTERM stops the server cleanly (exit 0).

Needs `mount -t tmpfs` (root, as in CI); skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.wire_helpers import Wire, rpc_error
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


@contextlib.contextmanager
def _tmpfs(mnt: Path) -> Iterator[Path]:
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "disk") as mnt:
        yield mnt


@pytest.fixture
def small_offline_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "offline-disk") as mnt:
        yield mnt


def _fill(path: Path) -> None:
    """Write `path` until the file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _metric(w: Wire, name: str) -> float:
    for line in w.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _until(check, timeout_s: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except (grpc.RpcError, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_full_disk_refuses_writes_keeps_reads_and_recovers_without_restart(
    small_disk: Path,
) -> None:
    proc = ServerProcess(small_disk / "data", extra_env={
        "TESSERA_ONLINE_STORE__BLOCK_CACHE_MB": "8",
        "TESSERA_ONLINE_STORE__WRITE_BUFFER_MB": "4",
        "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "1",
    })
    proc.log_path = small_disk.parent / "server.log"  # the log must not need the full disk
    proc.start()
    try:
        w = Wire(proc.grpc_target, proc.http_url)
        w.create_group("disk")
        w.put("disk", {"user_id": "before", "ts": T0, "clicks": 1})

        filler = small_disk / "filler"
        _fill(filler)
        big = "x" * 200_000  # more than what a partly used page of the WAL can still take
        err = None
        for i in range(20):
            try:
                w.put("disk", {"user_id": f"full{i}", "ts": T0, "clicks": 2, "name": big})
            except grpc.RpcError as exc:
                err = exc
                break
        assert err is not None, "no write failed on a full disk"
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        # Later writes fail fast with UNAVAILABLE too; reads keep working.
        again = rpc_error(lambda: w.put("disk", {"user_id": "again", "ts": T0, "clicks": 3}))
        assert again.code() == grpc.StatusCode.UNAVAILABLE
        assert w.get("disk", "before")["clicks"] == 1
        assert _metric(w, 'tessera_storage_degraded{store="online"}') == 1
        assert _metric(w, 'tessera_storage_errors_total{store="online"}') >= 1
        # The control plane answers 503 (retryable), never 500, while storage fails.
        resp = w.http.post("/v1/feature-groups/disk/compact")
        assert resp.status_code in (200, 503), resp.text

        filler.unlink()
        # No restart: a write succeeds again once the store reopened its DB.
        _until(lambda: w.put("disk", {"user_id": "after", "ts": T0, "clicks": 4}) or True)
        assert w.get("disk", "after")["clicks"] == 4
        assert w.get("disk", "before")["clicks"] == 1
        assert _metric(w, 'tessera_storage_degraded{store="online"}') == 0
        assert _metric(w, 'tessera_storage_resumes_total{store="online"}') >= 1
        # The history of every acknowledged write reaches Parquet (the flusher retried).
        _until(lambda: _metric(w, "tessera_offline_outbox_pending_rows") == 0)
        _until(lambda: _metric(w, 'tessera_storage_degraded{store="offline"}') == 0)
        rows = w.http.post("/v1/sql", json={
            "query": "SELECT user_id FROM disk ORDER BY user_id"}).json()
        assert ["after"] in rows["rows"] and ["before"] in rows["rows"], rows
        w.close()
    finally:
        code = proc.stop()
    log = proc.log()
    assert code == 0, log
    assert "stopped cleanly" in log
    assert "writes resume" in log


def test_full_offline_disk_keeps_history_in_the_outbox_and_flushes_it_once_space_is_back(
    tmp_path: Path, small_offline_disk: Path
) -> None:
    """Parquet writes failing with ENOSPC (the online store on another disk keeps working):
    the flusher retries with backoff and every acknowledged write reaches Parquet."""
    proc = ServerProcess(tmp_path / "data", extra_env={
        "TESSERA_OFFLINE_STORE__ROOT": str(small_offline_disk),
        "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.5",
    }).start()
    try:
        w = Wire(proc.grpc_target, proc.http_url)
        w.create_group("hist")
        filler = small_offline_disk / "filler"
        _fill(filler)
        for i in range(50):
            w.put("hist", {"user_id": f"u{i}", "ts": T0, "clicks": i, "name": "y" * 5000})
        _until(lambda: _metric(w, 'tessera_storage_degraded{store="offline"}') == 1)
        assert _metric(w, "tessera_offline_outbox_pending_rows") == 50
        assert w.get("hist", "u49")["clicks"] == 49  # the online store is unaffected

        filler.unlink()
        _until(lambda: _metric(w, "tessera_offline_outbox_pending_rows") == 0)
        assert _metric(w, 'tessera_storage_degraded{store="offline"}') == 0
        assert _metric(w, 'tessera_storage_resumes_total{store="offline"}') >= 1
        rows = w.http.post("/v1/sql", json={"query": "SELECT count(*) AS n FROM hist"}).json()
        assert rows["rows"] == [[50]], rows
        w.close()
    finally:
        code = proc.stop()
    assert code == 0, proc.log()
