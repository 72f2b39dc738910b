"""POST /v1/sql and `tessera sql --http` against a real server: every type answers, the host's
files stay out of reach, limits and time limits answer clear errors, a query never stalls the
data plane, and SIGTERM stops a server whose query is running."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from tessera.client import FeatureStoreClient
from tests.integration.test_offline_history import FAST_FLUSH, wait_for_rows
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration
T0 = 1_700_000_000.0
HEAVY = "SELECT count(*) AS n FROM range(20000000000) t WHERE t.range % 7 = 3"
ENV = {**FAST_FLUSH, "TESSERA_SQL__MAX_RESULT_BYTES": "200000"}


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory):
    p = ServerProcess(tmp_path_factory.mktemp("sqlsafe") / "data", extra_env=ENV).start()
    with FeatureStoreClient(grpc=p.grpc_target, http=p.http_url) as fs:
        fs.create_feature_group(
            "clicks", record_identifier="user_id", event_time="ts",
            features={"user_id": "String", "ts": "Fractional", "n": "Integral",
                      "ratio": "Fractional", "tags": "List[String]", "emb": "Vector[2]"},
        )
        fs.put_records("clicks", [
            {"user_id": f"u{i}", "ts": T0 + i, "n": i, "ratio": i / 3, "tags": ["a", "b"],
             "emb": [0.5, 1.5]} for i in range(3)
        ])
    wait_for_rows(p, "clicks", 3)
    yield p
    p.kill()


def sql(p: ServerProcess, query: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{p.http_url}/v1/sql", json={"query": query, **extra}, timeout=60)


def tessera(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera.server", *args], capture_output=True,
                          text=True, timeout=60)


def test_select_star_of_a_group_answers_json_with_iso_timestamps(proc: ServerProcess) -> None:
    r = sql(proc, "SELECT * FROM clicks ORDER BY n")
    assert r.status_code == 200, r.text
    body = r.json()
    row = dict(zip(body["columns"], body["rows"][0], strict=True))
    assert row["write_time"].endswith("+00:00") and "T" in row["write_time"]
    assert row["tessera_event_time"] == "2023-11-14T22:13:20+00:00"
    assert row["event_date"] == "2023-11-14"
    assert row["tags"] == ["a", "b"] and row["emb"] == [0.5, 1.5] and row["is_deleted"] is False


ODD_TYPES = (
    "SELECT 'abc'::BLOB AS b, 'nan'::DOUBLE AS x, '-inf'::DOUBLE AS y, "
    "DATE '5881580-07-10' AS far, TIMESTAMP 'infinity' AS inf, "
    "INTERVAL '1 month 2 days 3.5 seconds' AS iv, 1.25::DECIMAL(10, 2) AS dec, "
    "170141183460469231731687303715884105727::HUGEINT AS h, {'k': [1, 2]} AS s, "
    "MAP {'a': 1} AS m, union_value(k := 1)::UNION(k INT, s VARCHAR) AS u"
)


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_every_type_answers_in_every_format(proc: ServerProcess, fmt: str) -> None:
    r = sql(proc, ODD_TYPES, format=fmt)
    assert r.status_code == 200, r.text
    if fmt == "json":
        (row,) = r.json()["rows"]
        assert row == ["YWJj", "NaN", "-Infinity", "+5881580-07-10", "infinity", "P1M2DT3.5S",
                       "1.25", "170141183460469231731687303715884105727", {"k": [1, 2]},
                       {"a": 1}, 1]
    elif fmt == "parquet":
        table = pq.ParquetFile(io.BytesIO(r.content)).read()
        assert table.column("iv").to_pylist() == ["P1M2DT3.5S"]
    else:
        assert r.text.splitlines()[0].startswith("b,x,y,far")


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM read_csv('https://example.com/x.csv')",
])
def test_sql_reads_no_file_of_the_host(proc: ServerProcess, query: str) -> None:
    r = sql(proc, query)
    assert r.status_code == 422, r.text
    assert "Permission" in r.json()["error"]["message"]


def test_a_query_text_over_the_limit_is_refused_before_parsing(proc: ServerProcess) -> None:
    big = "SELECT 1 WHERE 1 IN (" + ",".join(["1"] * 600_000) + ")"  # ~1.2 MB
    start = time.monotonic()
    r = sql(proc, big)
    assert time.monotonic() - start < 2
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "TooLarge"
    assert "sql.max_query_bytes" in r.json()["error"]["message"]


def test_a_result_over_the_byte_limit_is_a_clear_error(proc: ServerProcess) -> None:
    r = sql(proc, "SELECT range AS i, 'some text' AS t FROM range(100000)", format="csv")
    assert r.status_code == 422, r.text
    assert "sql.max_result_bytes" in r.json()["error"]["message"]
    assert sql(proc, "SELECT 1 AS one", format="csv").text.splitlines() == ["one", "1"]


def test_a_query_past_its_time_limit_answers_504(proc: ServerProcess) -> None:
    start = time.monotonic()
    r = sql(proc, HEAVY, timeout_s=0.5)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "Timeout"
    assert time.monotonic() - start < 5
    assert sql(proc, "SELECT 2 AS two").json()["rows"] == [[2]]


def test_a_query_whose_client_went_away_is_cancelled(proc: ServerProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proc.http_url}/v1/sql", json={"query": HEAVY}, timeout=0.5)
    # One worker: had the query gone on (up to its 60 s limit), this one would wait for it.
    start = time.monotonic()
    r = sql(proc, "SELECT 3 AS three")
    assert r.status_code == 200, r.text
    assert time.monotonic() - start < 5


def test_a_killed_sql_worker_is_replaced(proc: ServerProcess) -> None:
    assert sql(proc, "SELECT 1 AS one").status_code == 200
    assert proc.proc is not None
    workers = [c for c in psutil.Process(proc.proc.pid).children()
               if "tessera.server.sql_worker" in _cmdline(c)]
    assert workers
    for w in workers:
        w.kill()
    deadline = time.monotonic() + 5  # the server reaps its child at the next query
    while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = sql(proc, "SELECT 4 AS four")
    assert r.status_code == 200, r.text


def test_cli_sql_over_http_with_its_default_format(proc: ServerProcess) -> None:
    out = tessera("sql", "--http", proc.http_url, "SELECT n FROM clicks ORDER BY n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == "| n |" and out.stdout.splitlines()[-1] == "(3 rows)"
    out = tessera("sql", "--http", proc.http_url, "--format", "json", "SELECT max(n) AS m FROM clicks")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == [[2]]
    out = tessera("sql", "--http", proc.http_url, "SELECT * FROM read_text('/etc/passwd')")
    assert out.returncode == 2 and "Permission" in out.stderr


def test_local_cli_sql_reads_no_file_of_the_host(proc: ServerProcess) -> None:
    out = tessera("sql", "--offline-root", str(proc.data_dir / "offline"),
                  "SELECT * FROM read_text('/etc/passwd')")
    assert out.returncode != 0 and "root:" not in out.stdout
    assert "Permission" in out.stderr


def test_a_maximal_query_does_not_stall_get_record_or_healthz(proc: ServerProcess) -> None:
    """A query just under the text limit (parsing it holds DuckDB's interpreter ~0.6 s in-process)
    and heavy to run: meanwhile every GetRecord (0.5 s deadline) and /healthz probe answers."""
    values = ",".join(str(i) for i in range(36_000))
    query = f"SELECT count(*) AS n FROM range(150000000) t WHERE t.range IN ({values})"
    assert 200_000 < len(query) < 256 * 1024
    answer: list[httpx.Response] = []
    runner = threading.Thread(target=lambda: answer.append(sql(proc, query, timeout_s=4)))
    failures: list[str] = []
    probes = 0
    with FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url, timeout_s=0.5,
                            retries=0) as fs, httpx.Client(timeout=0.5) as http:
        fs.get_record("clicks", "u1")  # connected before the query starts
        runner.start()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (runner.is_alive() or probes < 10):
            try:
                assert fs.get_record("clicks", "u1") is not None
                assert http.get(f"{proc.http_url}/healthz").status_code == 200
            except Exception as exc:  # noqa: BLE001  (every failure is reported below)
                failures.append(repr(exc))
            probes += 1
            time.sleep(0.02)
        runner.join(30)
    assert not failures, failures[:3]
    assert probes >= 10
    assert answer and answer[0].status_code in (200, 504), answer[0].text


def test_sigterm_during_a_running_query_stops_the_server(tmp_path: Path) -> None:
    p = ServerProcess(tmp_path / "data").start()
    try:
        t = threading.Thread(target=lambda: httpx.post(
            f"{p.http_url}/v1/sql", json={"query": HEAVY}, timeout=60))
        t.start()
        time.sleep(1.5)  # the worker started and the query runs
        assert p.proc is not None
        start = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        code = p.proc.wait(15)
        elapsed = time.monotonic() - start
        t.join(10)
    finally:
        p.kill()
    assert code == 0, p.log()
    assert elapsed < 10, elapsed  # within the default grace period (shutdown_grace_s)
    assert "sql_worker" not in " ".join(
        line for c in psutil.process_iter() if c.pid != os.getpid()
        and str(tmp_path) in (line := _cmdline(c))
    )


def _cmdline(process: psutil.Process) -> str:
    """A process's command line; "" for one gone, a zombie (any process on the machine may be
    one: the tests run beside other programs) or one not ours to read."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def test_a_data_dir_with_broken_groups_starts_and_serves_the_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    p = ServerProcess(data, extra_env=FAST_FLUSH).start()
    with FeatureStoreClient(grpc=p.grpc_target, http=p.http_url) as fs:
        fs.create_feature_group("good", record_identifier="id", event_time="ts",
                                features={"id": "String", "ts": "Fractional", "n": "Integral"})
        fs.put_records("good", [{"id": "a", "ts": T0, "n": 1}])
    wait_for_rows(p, "good", 1)
    p.stop()
    offline = data / "offline"
    good = json.loads((offline / "good" / "_group.json").read_text())
    # As an old data dir may hold them: features SQL sees as one name, a name differing from
    # another group's only in case.
    dup = json.loads(json.dumps(good))
    dup["definition"]["feature_group_name"] = "dup"
    dup["definition"]["feature_definitions"].append({"feature_name": "N", "feature_type": "Integral"})
    (offline / "dup").mkdir()
    (offline / "dup" / "_group.json").write_text(json.dumps(dup))
    (offline / "GOOD").mkdir()
    case = json.loads(json.dumps(good))
    case["definition"]["feature_group_name"] = "GOOD"
    case["creation_time"] = good["creation_time"] + 1
    (offline / "GOOD" / "_group.json").write_text(json.dumps(case))
    p.start()
    try:
        ready = httpx.get(f"{p.http_url}/readyz")
        assert ready.status_code == 200, ready.text
        broken = ready.json()["offline_views_broken"]
        assert set(broken) == {"dup", "GOOD"}, broken
        assert "quarantined_groups" in ready.json()
        r = sql(p, "SELECT id, n FROM good")
        assert r.status_code == 200 and r.json()["rows"] == [["a", 1]], r.text
        r = sql(p, "SELECT * FROM dup")
        assert r.status_code == 422 and "dup" in r.json()["error"]["message"]
        scraped = httpx.get(f"{p.http_url}/metrics").text
        assert "tessera_offline_views_broken 2.0" in scraped
        assert "has no SQL view" in p.log()
    finally:
        p.kill()
