"""Feature statistics and drift over a real server's flushed Parquet history: HTTP, the SDK,
the CLI (over HTTP and on the files directly) and the drift gauge on /metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.client import AsyncFeatureStoreClient, FeatureStoreClient
from tessera.core.errors import FeatureGroupNotFoundError
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.conftest import WORKERS
from tests.integration.wire_helpers import Wire
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

DAY1 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
DAY3 = DAY2 + dt.timedelta(days=1)
GROUP = "stats_users"
PER_DAY = 300


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _records() -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    out = []
    for day, (mu, names) in enumerate([(0.0, ["a", "b"]), (3.0, ["c", "c", "a"])]):
        for i in range(PER_DAY):
            out.append({
                "user_id": f"u{i % 40}",
                "ts": (DAY1 + dt.timedelta(days=day)).timestamp() + i * 60.0,
                "clicks": int(rng.integers(0, 50)),
                "ctr": None if i % 10 == 0 else float(rng.normal(mu, 1.0)),
                "name": str(rng.choice(names)),
                "tags": ["x"] * int(rng.integers(0, 4)),
            })
    return out


@pytest.fixture(scope="module", params=WORKERS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ServerProcess, list[dict[str, Any]]]]:
    proc = ServerProcess(tmp_path_factory.mktemp("stats") / "data", workers=request.param,
                         extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.2"}).start()
    w = Wire(proc.grpc_target, proc.http_url)
    w.create_group(GROUP)
    records = _records()
    w.stub.PutRecords(pb.PutRecordsRequest(feature_group_name=GROUP,
                                           records=[to_record(r) for r in records]))
    w.close()
    deadline = time.monotonic() + 30
    while True:  # until the history flusher has written every row to Parquet
        got = httpx.get(f"{proc.http_url}/v1/feature-groups/{GROUP}/statistics",
                        params={"start": _iso(DAY1), "end": _iso(DAY3)}, timeout=30)
        assert got.status_code == 200, got.text
        if got.json()["features"]["clicks"]["count"] == len(records):
            break
        assert time.monotonic() < deadline, got.text
        time.sleep(0.2)
    yield proc, records
    proc.stop()


def test_statistics_over_http_match_the_written_values(
    served: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    proc, records = served
    day1 = records[:PER_DAY]
    resp = httpx.get(f"{proc.http_url}/v1/feature-groups/{GROUP}/statistics",
                     params={"start": _iso(DAY1), "end": _iso(DAY2)}, timeout=30)
    assert resp.status_code == 200, resp.text
    features = resp.json()["features"]
    ctr = np.array([r["ctr"] for r in day1 if r["ctr"] is not None])
    got = features["ctr"]
    assert (got["count"], got["nulls"]) == (len(ctr), PER_DAY - len(ctr))
    assert got["min"] == pytest.approx(ctr.min()) and got["max"] == pytest.approx(ctr.max())
    assert got["mean"] == pytest.approx(ctr.mean()) and got["stddev"] == pytest.approx(
        ctr.std(ddof=1))
    counts, edges = np.histogram(ctr, bins=20, range=(ctr.min(), ctr.max()))
    assert got["histogram"] == {"edges": pytest.approx(edges.tolist()),
                                "counts": counts.tolist()}
    assert features["name"]["top"] == dict(Counter(r["name"] for r in day1).most_common(10))
    lengths = np.array([len(r["tags"]) for r in day1])
    assert features["tags"]["length"]["mean"] == pytest.approx(lengths.mean())
    assert features["emb"]["count"] == 0 and features["emb"]["nulls"] == PER_DAY


def test_bad_windows_unknown_groups_and_empty_windows(
    served: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    proc, _ = served
    url = f"{proc.http_url}/v1/feature-groups/{GROUP}/statistics"
    same = httpx.get(url, params={"start": _iso(DAY1), "end": _iso(DAY1)}, timeout=30)
    assert same.status_code == 422 and "must be before end" in same.text
    bad = httpx.get(url, params={"start": "tuesday", "end": _iso(DAY1)}, timeout=30)
    assert bad.status_code == 422 and "start: 'tuesday' is not an ISO 8601 time" in bad.text
    missing = httpx.get(url, params={"start": _iso(DAY1)}, timeout=30)
    assert missing.status_code == 422 and "end" in missing.text
    unknown = httpx.get(f"{proc.http_url}/v1/feature-groups/nope/statistics",
                        params={"start": _iso(DAY1), "end": _iso(DAY2)}, timeout=30)
    assert unknown.status_code == 404
    drift_bad = httpx.get(f"{proc.http_url}/v1/feature-groups/{GROUP}/drift", params={
        "baseline_start": _iso(DAY2), "baseline_end": _iso(DAY1),
        "start": _iso(DAY1), "end": _iso(DAY2)}, timeout=30)
    assert drift_bad.status_code == 422 and "baseline" in drift_bad.text
    empty = httpx.get(url, params={"start": "2030-01-01", "end": "2030-01-02"}, timeout=30)
    ctr = empty.json()["features"]["ctr"]
    assert (ctr["count"], ctr["nulls"], ctr["min"], ctr["max"]) == (0, 0, None, None)


def _drift_samples(http_url: str) -> list[Any]:
    text = httpx.get(f"{http_url}/metrics", timeout=30).text
    return [s for family in text_string_to_metric_families(text)
            if family.name == "tessera_feature_drift_psi" for s in family.samples
            if s.labels.get("group") == GROUP]


def test_drift_over_http_sets_the_gauge_once(
    served: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    proc, _ = served
    resp = httpx.get(f"{proc.http_url}/v1/feature-groups/{GROUP}/drift", params={
        "baseline_start": _iso(DAY1), "baseline_end": _iso(DAY2),
        "start": _iso(DAY2), "end": _iso(DAY3)}, timeout=30)
    assert resp.status_code == 200, resp.text
    features = resp.json()["features"]
    assert features["ctr"]["drifted"] is True and features["ctr"]["p_value"] < 1e-9
    assert features["name"]["drifted"] is True and features["name"]["test"] == "chi2"
    assert features["clicks"]["drifted"] is False and features["clicks"]["p_value"] > 0.001
    # With --workers 2 each serving process may have computed a PSI: /metrics shows the
    # latest once per feature, without a process label.
    for _ in range(3):  # the scrape may land on either serving process
        samples = [s for s in _drift_samples(proc.http_url) if s.labels["feature"] == "ctr"]
        assert len(samples) == 1, samples
        assert "process" not in samples[0].labels
        assert samples[0].value == pytest.approx(features["ctr"]["psi"])


def _one_layout(proc: ServerProcess) -> None:
    """The SDK and the CLI speak HTTP (or read the files): what they do does not depend on the
    process layout, tested once to keep the file fast."""
    if proc.workers != 1:
        pytest.skip("the HTTP routes are tested with --workers 2 above; the clients once")


def test_sdk_statistics_and_drift_as_dataframes(
    served: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    proc, records = served
    _one_layout(proc)
    with FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url) as fs:
        frame = fs.statistics(GROUP, start=DAY1, end=DAY3)
        drifted = fs.drift(GROUP, baseline=(DAY1, DAY2), window=(_iso(DAY2), _iso(DAY3)))
    assert set(frame.index) == {"user_id", "ts", "clicks", "ctr", "name", "tags", "ids",
                                "scores", "emb"}
    assert frame.loc["clicks", "count"] == len(records)
    assert frame.loc["clicks", "mean"] == pytest.approx(np.mean([r["clicks"] for r in records]))
    assert frame.loc["tags", "of"] == "length"
    assert bool(drifted.loc["ctr", "drifted"]) and not bool(drifted.loc["clicks", "drifted"])


    async def from_async_client() -> tuple[Any, Any]:
        async with AsyncFeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url) as afs:
            return (await afs.statistics(GROUP, start=DAY1, end=DAY3),
                    await afs.drift(GROUP, baseline=(DAY1, DAY2), window=(DAY2, DAY3)))

    frame_a, drifted_a = asyncio.run(from_async_client())
    assert frame_a.loc["clicks", "count"] == len(records)
    assert drifted_a.loc["ctr", "psi"] == pytest.approx(drifted.loc["ctr", "psi"])
    with FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url) as fs, \
            pytest.raises(FeatureGroupNotFoundError):
        fs.statistics("nope", start=DAY1, end=DAY2)


def test_cli_stats_over_http_and_on_the_files(
    served: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    proc, records = served
    _one_layout(proc)
    base = [sys.executable, "-m", "tessera.server", "stats", GROUP, "--from", _iso(DAY1),
            "--to", _iso(DAY3), "--format", "json"]
    over_http = subprocess.run([*base, "--http", proc.http_url, "--baseline-from", _iso(DAY1),
                                "--baseline-to", _iso(DAY2)],
                               capture_output=True, text=True, timeout=60)
    assert over_http.returncode == 0, over_http.stderr
    local = subprocess.run([*base, "--offline-root", str(Path(proc.data_dir) / "offline")],
                           capture_output=True, text=True, timeout=60)
    assert local.returncode == 0, local.stderr
    a, b = json.loads(over_http.stdout), json.loads(local.stdout)
    assert a["features"]["clicks"]["count"] == b["features"]["clicks"]["count"] == len(records)
    assert a["features"]["ctr"]["mean"] == pytest.approx(b["features"]["ctr"]["mean"])
    assert "drift" in a and a["drift"]["ctr"]["drifted"] is True
    table = subprocess.run([*base[:-2], "--http", proc.http_url], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0 and "ctr" in table.stdout and "count" in table.stdout
    bad = subprocess.run([*base[:5], "--from", "later", "--http", proc.http_url],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr


def test_a_group_threshold_set_by_patch_decides_drifted(
    served: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    proc, _ = served  # runs after the tests above: it changes the module's group
    patched = httpx.patch(f"{proc.http_url}/v1/feature-groups/{GROUP}",
                          json={"drift_psi_threshold": 1000.0}, timeout=30)
    assert patched.status_code == 200 and patched.json()["drift_psi_threshold"] == 1000.0
    refused = httpx.patch(f"{proc.http_url}/v1/feature-groups/{GROUP}",
                          json={"drift_psi_threshold": -1}, timeout=30)
    assert refused.status_code == 422 and "drift_psi_threshold" in refused.text
    resp = httpx.get(f"{proc.http_url}/v1/feature-groups/{GROUP}/drift", params={
        "baseline_start": _iso(DAY1), "baseline_end": _iso(DAY2),
        "start": _iso(DAY2), "end": _iso(DAY3)}, timeout=30)
    ctr = resp.json()["features"]["ctr"]
    assert ctr["threshold"] == 1000.0 and ctr["psi"] > 0.2 and ctr["drifted"] is False


def test_merged_metrics_show_each_drift_psi_once_the_latest() -> None:
    """--workers N: two serving processes computed a PSI for one feature; the merged /metrics
    (server/process_metrics.py) shows the later one, once, without a process label."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from tessera.server.process_metrics import merge

    def exposition(psi: float, at: float) -> bytes:
        registry = CollectorRegistry()
        Gauge("tessera_feature_drift_psi", "psi", ["group", "feature"],
              registry=registry).labels("g", "f").set(psi)
        Gauge("tessera_feature_drift_computed_timestamp_seconds", "when", ["group", "feature"],
              registry=registry).labels("g", "f").set(at)
        Gauge("tessera_other", "a per-process gauge", registry=registry).set(1)
        return generate_latest(registry)

    text = merge({"serving-1": exposition(0.5, 100.0), "serving-2": exposition(0.1, 200.0)},
                 {"serving-1": True, "serving-2": True}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    psi = families["tessera_feature_drift_psi"].samples
    assert [(s.labels, s.value) for s in psi] == [({"group": "g", "feature": "f"}, 0.1)]
    assert len(families["tessera_other"].samples) == 2  # other gauges stay per process
