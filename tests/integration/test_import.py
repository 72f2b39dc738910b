"""Bulk import: validated whole, then history for every row and the latest row online."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tessera.client import FeatureStoreClient, InvalidRequestError
from tessera.client.importer import import_table
from tests.integration.test_offline_history import FAST_FLUSH, history, wait_for_rows
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


@pytest.fixture
def proc(tmp_path: Path):
    p = ServerProcess(tmp_path / "data", extra_env=FAST_FLUSH).start()
    yield p
    p.kill()


FEATURES = {"user_id": "String", "ts": "Fractional", "clicks": "Integral", "emb": "Vector[2]"}


def test_cli_import_of_csv_writes_history_and_latest_online(proc: ServerProcess, tmp_path: Path) -> None:
    fs = FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url)
    fs.create_feature_group("users", record_identifier="user_id", event_time="ts",
                            features={"user_id": "String", "ts": "Fractional", "clicks": "Integral"})
    csv = tmp_path / "backfill.csv"
    lines = ["user_id,ts,clicks"] + [f"u{i % 10},{T0 + i},{i}" for i in range(100)]
    csv.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "tessera.server", "import", str(csv), "--group", "users",
         "--grpc", proc.grpc_target, "--http", proc.http_url],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "imported 100 rows" in out.stdout
    assert fs.get_record("users", "u3")["clicks"] == 93  # the latest of u3's ten rows
    rows = wait_for_rows(proc, "users", 100)
    assert len(rows) == 100
    assert {r["tessera_source"] for r in rows} == {f"import:backfill.csv#{i}" for i in range(1, 101)}
    fs.close()


def test_import_with_bad_rows_reports_them_and_imports_nothing(proc: ServerProcess) -> None:
    fs = FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url)
    fs.create_feature_group("vecs", record_identifier="user_id", event_time="ts", features=FEATURES)
    df = pd.DataFrame({
        "user_id": ["a", "b", "c", "d"],
        "ts": [T0, T0, -1.0, T0],
        "clicks": [1, 2, 3, 4],
        "emb": [[0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0], [0.0, 1.0]],
    })
    with pytest.raises(InvalidRequestError) as exc:
        import_table(fs, "vecs", df, progress=False)
    message = exc.value.message
    assert "2 bad rows in dataframe; nothing was imported" in message
    assert "row 2: feature 'emb' has type Vector[2]; got 3 values" in message
    assert "row 3: event time 'ts': -1.0 is not a valid event time" in message
    assert fs.get_record("vecs", "a") is None
    proc.stop()  # flushes everything committed: there is nothing
    assert history(proc, "vecs") == []
    fs.close()


def test_import_of_parquet_with_an_unknown_column_is_refused(proc: ServerProcess, tmp_path: Path) -> None:
    fs = FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url)
    fs.create_feature_group("vecs", record_identifier="user_id", event_time="ts", features=FEATURES)
    path = tmp_path / "x.parquet"
    pd.DataFrame({"user_id": ["a"], "ts": [T0], "colour": ["red"]}).to_parquet(path)
    with pytest.raises(InvalidRequestError, match="column 'colour' is not a feature of 'vecs'"):
        import_table(fs, "vecs", path, progress=False)
    ok = tmp_path / "ok.parquet"
    pd.DataFrame({"user_id": ["a", "a"], "ts": [T0, T0 + 5], "emb": [[1.0, 2.0], [3.0, 4.0]]}).to_parquet(ok)
    assert fs.import_table("vecs", ok, progress=False).written == 2
    assert fs.get_record("vecs", "a")["emb"].tolist() == [3.0, 4.0]
    fs.close()
