"""`tessera ingest`'s security flags reach its gRPC sink: a CA bundle that cannot be read or a
client certificate without its key stops the command before it connects, naming the flag's
file (exit 2). Over a real TLS server: tests/integration/test_tls.py (the sink)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.ingest.cli import add_arguments


def _ingest(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.ingest", "--bootstrap-servers", "127.0.0.1:9",
         "--topic", "clicks", "--feature-group", "users", "--grpc", "127.0.0.1:9",
         "--http", "https://127.0.0.1:9", *flags],
        capture_output=True, text=True, timeout=60,
    )


def test_an_unreadable_ca_bundle_stops_ingest(tmp_path: Path) -> None:
    proc = _ingest("--tls-ca", str(tmp_path / "nope.pem"))
    assert proc.returncode == 2, proc.stderr
    assert "cannot read the TLS CA bundle" in proc.stderr and "nope.pem" in proc.stderr


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    proc = _ingest("--tls-cert", str(tmp_path / "client.pem"))
    assert proc.returncode == 2, proc.stderr
    assert "needs its key" in proc.stderr


def test_api_key_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_API_KEY", "tsk_from_env")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).api_key == "tsk_from_env"
    assert parser.parse_args(["--api-key", "tsk_flag"]).api_key == "tsk_flag"
