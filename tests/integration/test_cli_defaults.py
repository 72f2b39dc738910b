"""Every `tessera` subcommand, run as a user would with only its required arguments (plus where
the server is), against a real server (and a real broker for `ingest`): exit code 0 and output
that says what happened. The server runs in the test's folder with its default data dir
(./tessera-data), which is also the default of `sql`, `dataset` and `groups`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.kafka_fixtures import SESSION_TIMEOUT_MS, KafkaBroker, session_broker

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
TESSERA = [sys.executable, "-m", "tessera.server"]


@dataclass
class Cli:
    cwd: Path
    grpc: str
    http: str
    proc: subprocess.Popen[bytes]

    def run(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TESSERA, *args], cwd=self.cwd, capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, f"tessera {' '.join(args)}: {res.returncode}\n{res.stderr}"
        return res.stdout

    def where(self) -> list[str]:
        return ["--grpc", self.grpc, "--http", self.http]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """`tessera serve` with no options but a ready file (ports 0 from the environment: the
    default ports may be taken on a shared machine), then `tessera demo` against it."""
    cwd = tmp_path_factory.mktemp("cli")
    ready = cwd / "ready.json"
    log = open(cwd / "serve.log", "wb")  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TESSERA_SERVER__GRPC_PORT": "0",
           "TESSERA_SERVER__HTTP_PORT": "0", "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.5"}
    proc = subprocess.Popen([*TESSERA, "serve", "--ready-file", str(ready)], cwd=cwd,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, (cwd / "serve.log").read_text()
        assert time.monotonic() < deadline, "tessera serve not ready"
        time.sleep(0.05)
    ports = json.loads(ready.read_text())
    c = Cli(cwd, f"127.0.0.1:{ports['grpc_port']}", f"http://127.0.0.1:{ports['http_port']}",
            proc)
    try:
        assert (cwd / "tessera-data" / "online").is_dir()  # the default data dir
        # the default layout: one serving process per core (one process on a single core)
        cores = os.cpu_count() or 1
        assert len(ports.get("serving_pids", [ports["pid"]])) == cores, ports
        out = c.ok("demo", *c.where())
        assert "demo:" in out
        yield c
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.close()


def _wait_flushed(cli: Cli, user_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        res = cli.run("sql", f"SELECT count(*) AS n FROM demo_users WHERE user_id = '{user_id}'",
                      "--format", "csv")
        if res.returncode == 0 and res.stdout.strip().splitlines()[-1:] != ["0"]:
            return
        time.sleep(0.3)
    raise AssertionError(f"{user_id} never reached the offline store")


def test_serve_prints_where_it_serves(cli: Cli) -> None:
    log = (cli.cwd / "serve.log").read_text()
    assert f"serving gRPC on {cli.grpc}" in log


def test_put_and_get(cli: Cli) -> None:
    out = cli.ok("put", "demo_users", json.dumps({"user_id": "cli", "ts": T0, "clicks": 5}),
                 "--grpc", cli.grpc)
    assert out.strip() == "applied"
    got = json.loads(cli.ok("get", "demo_users", "cli", "--grpc", cli.grpc))
    assert got["clicks"] == 5 and got["user_id"] == "cli"


def test_import(cli: Cli) -> None:
    csv = cli.cwd / "backfill.csv"
    csv.write_text("user_id,ts,clicks\nimp1,1700000000.0,1\nimp2,1700000001.0,2\n")
    out = cli.ok("import", str(csv), "--group", "demo_users", *cli.where())
    assert "imported 2 rows" in out


def test_sql_reads_the_default_offline_root(cli: Cli) -> None:
    cli.ok("put", "demo_users", json.dumps({"user_id": "sql", "ts": T0, "clicks": 7}),
           "--grpc", cli.grpc)
    _wait_flushed(cli, "sql")
    out = cli.ok("sql", "SELECT user_id, clicks FROM demo_users WHERE user_id = 'sql'")
    assert "sql" in out and "7" in out


def test_sql_over_http_with_the_default_format(cli: Cli) -> None:
    out = cli.ok("sql", "SELECT count(*) AS n FROM demo_users", "--http", cli.http)
    assert "n" in out


def test_dataset(cli: Cli) -> None:
    cli.ok("put", "demo_users", json.dumps({"user_id": "ds", "ts": T0, "clicks": 9}),
           "--grpc", cli.grpc)
    _wait_flushed(cli, "ds")
    spine = cli.cwd / "spine.parquet"
    pq.write_table(pa.table({"user_id": ["ds"], "ts": [T0 + 1]}), spine)
    out = cli.ok("dataset", "--spine", str(spine), "--timestamp", "ts",
                 "--features", "demo_users", "--output", str(cli.cwd / "train.parquet"))
    assert "wrote 1 rows" in out
    train = pq.read_table(cli.cwd / "train.parquet", columns=["user_id", "clicks"])
    assert train.to_pylist() == [{"user_id": "ds", "clicks": 9}]


def test_compact(cli: Cli) -> None:
    out = cli.ok("compact", "demo_users", *cli.where())
    assert out.startswith("compacted ")


@pytest.fixture(scope="module")
def kafka() -> KafkaBroker:
    return session_broker()


def test_ingest(cli: Cli, kafka: KafkaBroker) -> None:
    topic = kafka.create_topic(kafka.unique("cli"))
    kafka.create_topic(f"{topic}.dlq")  # the default dead-letter topic
    kafka.produce(topic, [(None, json.dumps({"user_id": "kafka", "ts": T0, "clicks": 11})
                          .encode())])
    # session.timeout.ms: the test broker's first group join takes ~23 s with the default.
    proc = subprocess.Popen(
        [*TESSERA, "ingest", "--bootstrap-servers", kafka.bootstrap, "--topic", topic,
         "--feature-group", "demo_users", *cli.where(),
         "--consumer-property", f"session.timeout.ms={SESSION_TIMEOUT_MS}"],
        cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            res = cli.run("get", "demo_users", "kafka", "--grpc", cli.grpc)
            if res.returncode == 0:
                assert json.loads(res.stdout)["clicks"] == 11
                break
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the ingested record never appeared"
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_groups_list_on_the_stopped_server(cli: Cli) -> None:
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.proc.wait(30) == 0
    out = cli.ok("groups", "list")
    assert "demo_users" in out


def test_serve_demo_refuses_a_secured_server(tmp_path: Path) -> None:
    """--demo is the loopback try-out: with --auth or TLS it says how to run the demo instead,
    before anything is opened."""
    for flags in (["--auth"], ["--tls-cert", "c.pem", "--tls-key", "k.pem"]):
        done = subprocess.run([*TESSERA, "serve", "--demo", *flags], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "--demo runs against a loopback server without --auth and TLS" in done.stderr
        assert not (tmp_path / "tessera-data").exists()
