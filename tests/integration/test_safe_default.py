"""Safe by default (server/safe_default.py), with real `tessera serve` processes: a non-loopback
address without authentication is refused unless --insecure-no-auth, which then starts and
warns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration


def test_a_non_loopback_host_without_auth_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tessera.server", "serve", "--host", "0.0.0.0",
         "--data-dir", str(tmp_path / "data"), "--grpc-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve 0.0.0.0 without authentication" in done.stderr
    assert "--auth" in done.stderr and "--insecure-no-auth" in done.stderr
    assert not (tmp_path / "data" / "online").exists()  # refused before opening anything


def test_insecure_no_auth_serves_a_non_loopback_host_and_warns(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", extra_env={
        "TESSERA_SERVER__HOST": "0.0.0.0", "TESSERA_AUTH__INSECURE_NO_AUTH": "true"})
    proc.start(timeout_s=90)
    try:
        assert httpx.get(f"{proc.http_url}/v1/feature-groups", timeout=10).status_code == 200
        assert "serving 0.0.0.0 WITHOUT AUTHENTICATION (--insecure-no-auth)" in proc.log()
    finally:
        proc.stop()
