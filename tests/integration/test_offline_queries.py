"""SQL over the offline store (HTTP and CLI) and `tessera dataset`, against a real server's data."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tessera.client import FeatureStoreClient, OfflineStore
from tests.integration.test_offline_history import FAST_FLUSH, wait_for_rows
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory):
    p = ServerProcess(tmp_path_factory.mktemp("offq") / "data", extra_env=FAST_FLUSH).start()
    fs = FeatureStoreClient(grpc=p.grpc_target, http=p.http_url)
    fs.create_feature_group("users", record_identifier="user_id", event_time="ts",
                            features={"user_id": "String", "ts": "Fractional", "clicks": "Integral"})
    fs.put_records("users", [{"user_id": f"u{i % 3}", "ts": T0 + i * 10, "clicks": i}
                             for i in range(9)])
    fs.delete_record("users", "u2", event_time=T0 + 1000, mode="soft")
    fs.close()
    wait_for_rows(p, "users", 10)
    yield p
    p.kill()


def tessera(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera.server", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_sql_over_http_as_json_csv_and_parquet(proc: ServerProcess) -> None:
    import httpx

    q = "SELECT user_id, count(*) AS n FROM users WHERE NOT is_deleted GROUP BY 1 ORDER BY 1"
    r = httpx.post(f"{proc.http_url}/v1/sql", json={"query": q})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [["u0", 3], ["u1", 3], ["u2", 3]]
    r = httpx.post(f"{proc.http_url}/v1/sql", json={"query": q, "format": "csv"})
    assert r.text.splitlines() == ["user_id,n", "u0,3", "u1,3", "u2,3"]
    r = httpx.post(f"{proc.http_url}/v1/sql", json={"query": q, "format": "parquet"})
    assert pq.ParquetFile(io.BytesIO(r.content)).read().num_rows == 3


@pytest.mark.parametrize("bad", ["DELETE FROM users", "CREATE TABLE x AS SELECT 1",
                                 "SELECT 1; SELECT 2", "COPY users TO '/tmp/x.csv'"])
def test_sql_refuses_anything_but_one_select(proc: ServerProcess, bad: str) -> None:
    import httpx

    r = httpx.post(f"{proc.http_url}/v1/sql", json={"query": bad})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "InvalidRequest"


def test_sql_on_an_unknown_view_is_a_clear_error(proc: ServerProcess) -> None:
    import httpx

    r = httpx.post(f"{proc.http_url}/v1/sql", json={"query": "SELECT * FROM nope"})
    assert r.status_code in (404, 422) and "nope" in r.json()["error"]["message"]


def test_cli_sql_reads_the_files_without_a_server(proc: ServerProcess) -> None:
    out = tessera("sql", "SELECT max(clicks) AS m FROM users", "--format", "csv",
                  "--offline-root", str(proc.data_dir / "offline"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["m", "8"]


def test_cli_dataset_builds_a_point_in_time_training_set(proc: ServerProcess, tmp_path: Path) -> None:
    spine = pd.DataFrame({
        "user_id": ["u0", "u0", "u1", "u2", "u2", "zz"],
        "ts": [T0 - 1, T0 + 35, T0 + 70, T0 + 50, T0 + 2000, T0 + 50],
        "label": [0, 1, 0, 1, 1, 0],
    })
    spine.to_parquet(tmp_path / "spine.parquet")
    out = tessera("dataset", "--spine", str(tmp_path / "spine.parquet"), "--timestamp", "ts",
                  "--features", "users:clicks", "--output", str(tmp_path / "train.parquet"),
                  "--offline-root", str(proc.data_dir / "offline"))
    assert out.returncode == 0, out.stderr
    train = pd.read_parquet(tmp_path / "train.parquet")
    assert train["label"].tolist() == [0, 1, 0, 1, 1, 0]  # spine order kept
    # u0 events at T0, T0+30, T0+60 (clicks 0, 3, 6); u1 at +10, +40, +70; u2 at +20, +50, +80,
    # then deleted at +1000.
    assert [None if pd.isna(v) else int(v) for v in train["clicks"]] == [None, 3, 7, 5, None, None]
    with OfflineStore(proc.data_dir / "offline") as off:
        same = off.dataset(spine, timestamp="ts", features={"users": ["clicks"]}).to_pandas()
    assert same["clicks"].equals(train["clicks"])
