"""Online/offline parity of aggregation features through a real server: a random event stream
(late, out of order, stamped in the future, too late, with nulls) is written with PutRecord and
PutRecords while GetRecord is sampled at random moments; the dataset builder, run afterwards over
the offline history for the sampled (id, time) pairs, must give every value GetRecord gave:
exactly for count, min, max, last and last_n, to 1e-9 relative for sum and mean."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tessera.client import FeatureStoreClient, OfflineStore
from tests.integration.test_aggregations import FEATURES
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("compiled_kernels")]

AGGREGATIONS: list[dict[str, Any]] = [
    {"name": "n_3s", "function": "count", "window": "3s"},
    {"name": "n_1m", "function": "count", "window": "1m"},
    {"name": "clicks_n_10s", "source": "clicks", "function": "count", "window": "10s"},
    {"name": "clicks_sum_3s", "source": "clicks", "function": "sum", "window": "3s"},
    {"name": "clicks_sum_1m", "source": "clicks", "function": "sum", "window": "1m"},
    {"name": "price_mean_10s", "source": "price", "function": "mean", "window": "10s"},
    {"name": "price_sum_1m", "source": "price", "function": "sum", "window": "1m"},
    {"name": "price_min_10s", "source": "price", "function": "min", "window": "10s"},
    {"name": "price_max_1m", "source": "price", "function": "max", "window": "1m"},
    {"name": "clicks_last_10s", "source": "clicks", "function": "last", "window": "10s"},
    {"name": "price_last_3", "source": "price", "function": "last_n", "n": 3, "window": "1m"},
    {"name": "merchant_n_10s", "function": "count", "window": "10s", "key": "merchant"},
    {"name": "merchant_sum_1m", "source": "price", "function": "sum", "window": "1m",
     "key": "merchant"},
]
APPROXIMATE = ("sum", "mean")
TILE_US = 1_000_000
USERS = [f"u{i}" for i in range(12)]
MERCHANT = {u: f"m{i % 3}" for i, u in enumerate(USERS)}  # fixed per user


def _event(rng: random.Random, user: str, now: float) -> dict[str, Any]:
    r = rng.random()
    if r < 0.70:
        ts = now - rng.uniform(0, 4)  # a little late
    elif r < 0.85:
        ts = now - rng.uniform(4, 50)  # late, still in the longer windows
    elif r < 0.93:
        ts = now - rng.uniform(70, 200)  # later than the bound (1m + 1 tile): dropped
    else:
        ts = now + rng.uniform(0, 3)  # stamped in the future: counts from its commit
    record: dict[str, Any] = {"user_id": user, "ts": ts, "merchant": MERCHANT[user]}
    if rng.random() < 0.8:
        record["clicks"] = rng.randrange(-50, 1000)
    if rng.random() < 0.8:
        record["price"] = rng.choice([rng.uniform(-10, 10), rng.uniform(0, 1e6), 0.1, 0.2])
    return record


def test_get_record_and_the_dataset_builder_agree(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    proc = ServerProcess(
        tmp_path / "data", extra_env={"TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.5"}
    ).start()
    samples: list[tuple[str, int, dict[str, Any]]] = []
    try:
        with FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url,
                                timeout_s=30.0) as fs:
            fs.create_feature_group("g", "user_id", "ts", FEATURES, aggregations=AGGREGATIONS,
                                    aggregation_config={"tile_size": "1s"})
            # Every user's first put is in the past, so the record a sample's GetRecord sees
            # and the row the point-in-time join picks carry the same (fixed) merchant.
            fs.put_records("g", [{"user_id": u, "ts": time.time() - 1, "merchant": MERCHANT[u]}
                                 for u in USERS])
            deadline = time.monotonic() + 20.0
            while len(samples) < 300 and time.monotonic() < deadline:
                now = time.time()
                if rng.random() < 0.5:
                    fs.put_record("g", _event(rng, rng.choice(USERS), now))
                else:
                    fs.put_records("g", [_event(rng, rng.choice(USERS), now)
                                         for _ in range(rng.randrange(1, 30))])
                for _ in range(rng.randrange(0, 3)):
                    user = rng.choice(USERS)
                    before = time.time_ns() // 1000
                    got = fs.get_record("g", user)
                    after = time.time_ns() // 1000
                    # The server reads at a moment in [before, after]: the value is that of
                    # `before` when both lie in one tile (windows move by whole tiles).
                    if got is not None and before // TILE_US == after // TILE_US:
                        samples.append((user, before, got))
                if rng.random() < 0.1:
                    time.sleep(rng.uniform(0, 0.3))  # let tiles pass between some writes
        assert proc.stop() == 0  # flushes the outbox to Parquet
    finally:
        proc.kill()
    assert len(samples) >= 150

    spine = pa.table({
        "user_id": [u for u, _, _ in samples],
        "t": pa.array([t for _, t, _ in samples], pa.timestamp("us", tz="UTC")),
    })
    names = [a["name"] for a in AGGREGATIONS]
    with OfflineStore(tmp_path / "data" / "offline", progress=False) as off:
        offline = off.dataset(spine, timestamp="t", features={"g": names}).to_arrow().to_pylist()

    functions = {a["name"]: a["function"] for a in AGGREGATIONS}
    mismatches = []
    nonzero = 0
    for (user, t, online), row in zip(samples, offline, strict=True):
        for name in names:
            want, have = online.get(name), row[name]
            if functions[name] in APPROXIMATE and want is not None and have is not None:
                ok = math.isclose(want, have, rel_tol=1e-9, abs_tol=1e-9)
            else:
                ok = want == have
            nonzero += bool(want)
            if not ok:
                mismatches.append(f"{user} at {t}: {name} online {want!r}, offline {have!r}")
    assert not mismatches, f"{len(mismatches)} mismatches, e.g.:\n" + "\n".join(mismatches[:20])
    assert nonzero > len(samples) * len(names) // 2  # the stream exercised the windows
