"""Aggregation features served online by a real server process: declared with the group, folded
by the writer in the commit that acknowledges a put, read by GetRecord / BatchGetRecord."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.client import FeatureStoreClient
from tessera.core.errors import InvalidRequestError
from tests.integration.wire_helpers import metric_total
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("compiled_kernels")]

FEATURES = {
    "user_id": "String",
    "ts": "Fractional",
    "clicks": "Integral",
    "price": "Fractional",
    "merchant": "String",
    "name": "String",
}
AGGREGATIONS: list[dict[str, Any]] = [
    {"name": "events_1h", "function": "count", "window": "1h"},
    {"name": "clicks_sum_1h", "source": "clicks", "function": "sum", "window": "1h"},
    {"name": "clicks_max_1d", "source": "clicks", "function": "max", "window": "1d"},
    {"name": "price_mean_1d", "source": "price", "function": "mean", "window": "1d"},
    {"name": "price_min_1d", "source": "price", "function": "min", "window": "1d"},
    {"name": "price_last", "source": "price", "function": "last", "window": "1d"},
    {"name": "last_3_prices", "source": "price", "function": "last_n", "n": 3, "window": "1d"},
    {"name": "merchant_events_1h", "function": "count", "window": "1h", "key": "merchant"},
]


@pytest.fixture
def fs(server: ServerProcess) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(
        grpc=server.grpc_target, http=server.http_url, timeout_s=30.0
    ) as client:
        yield client


@pytest.fixture
def clicks(fs: FeatureStoreClient, unique_group_name: str) -> str:
    fs.create_feature_group(
        unique_group_name, "user_id", "ts", FEATURES, aggregations=AGGREGATIONS
    )
    return unique_group_name


def _aggregates(record: dict[str, Any] | None) -> dict[str, Any]:
    assert record is not None
    return {k: v for k, v in record.items() if k not in FEATURES}


def test_describe_shows_the_aggregations_and_their_resolved_settings(
    fs: FeatureStoreClient, clicks: str
) -> None:
    d = fs.describe_feature_group(clicks)
    assert [a["name"] for a in d["aggregations"]] == [a["name"] for a in AGGREGATIONS]
    resolved = d["aggregation_resolved"]
    assert resolved["tile_size"] == "5m"  # a tenth of the smallest window, on the ladder
    assert resolved["lateness"] == "1445m"  # the largest window plus one tile
    assert resolved["output_types"]["clicks_sum_1h"] == "Integral"
    assert resolved["output_types"]["price_mean_1d"] == "Fractional"
    assert resolved["output_types"]["last_3_prices"] == "List[Fractional]"


def test_a_put_is_in_the_aggregates_of_the_next_read(fs: FeatureStoreClient, clicks: str) -> None:
    now = time.time()
    fs.put_record(clicks, {"user_id": "u1", "ts": now})
    # No values yet: counts and sums 0, last_n empty, the rest null (left out, like a feature).
    assert _aggregates(fs.get_record(clicks, "u1")) == {
        "events_1h": 1, "clicks_sum_1h": 0, "last_3_prices": [],
    }
    prices = [2.5, 1.0, 4.0, 3.5]
    for i, price in enumerate(prices):
        fs.put_record(clicks, {"user_id": "u1", "ts": now + i, "clicks": i + 1, "price": price,
                               "merchant": "m1"})
        got = _aggregates(fs.get_record(clicks, "u1"))
        assert got["events_1h"] == i + 2  # read your writes: every acknowledged put counts
        assert got["clicks_sum_1h"] == sum(range(1, i + 2))
    assert got == {
        "events_1h": 5,
        "clicks_sum_1h": 10,
        "clicks_max_1d": 4,
        "price_mean_1d": pytest.approx(sum(prices) / 4, rel=1e-12),
        "price_min_1d": 1.0,
        "price_last": 3.5,
        "last_3_prices": [3.5, 4.0, 1.0],
        "merchant_events_1h": 4,  # the record's merchant is m1: four events had m1
    }
    assert isinstance(got["clicks_sum_1h"], int) and isinstance(got["price_mean_1d"], float)


def test_put_records_batch_folds_many_keys_and_repeats_in_one_commit(
    fs: FeatureStoreClient, clicks: str
) -> None:
    now = time.time()
    records = [{"user_id": f"u{i % 7}", "ts": now + i * 0.001, "clicks": i, "merchant": "m"}
               for i in range(300)]
    fs.put_records(clicks, records)
    got = fs.batch_get_record({clicks: [f"u{k}" for k in range(7)] + ["nobody"]})
    by_id = {r["record_identifier"]: r["record"] for r in got.records}
    assert sorted(by_id) == [f"u{k}" for k in range(7)]  # "nobody" has no record
    for k in range(7):
        mine = [i for i in range(300) if i % 7 == k]
        assert by_id[f"u{k}"]["events_1h"] == len(mine)
        assert by_id[f"u{k}"]["clicks_sum_1h"] == sum(mine)
        assert by_id[f"u{k}"]["clicks_max_1d"] == max(mine)
        assert by_id[f"u{k}"]["merchant_events_1h"] == 300


def test_an_older_put_is_an_event_though_the_record_keeps_the_newer(
    fs: FeatureStoreClient, clicks: str
) -> None:
    now = time.time()
    assert fs.put_record(clicks, {"user_id": "u1", "ts": now, "clicks": 5, "price": 1.0})
    assert not fs.put_record(clicks, {"user_id": "u1", "ts": now - 60, "clicks": 7,
                                      "price": 9.0})
    got = fs.get_record(clicks, "u1")
    assert got is not None and got["clicks"] == 5  # the online record: the newer put
    assert got["events_1h"] == 2 and got["clicks_sum_1h"] == 12
    # "last" is by event time, not arrival: the older event is not the last price.
    assert got["price_last"] == 1.0 and got["last_3_prices"] == [1.0, 9.0]


def test_feature_filters_can_name_aggregations(fs: FeatureStoreClient, clicks: str) -> None:
    now = time.time()
    fs.put_record(clicks, {"user_id": "u1", "ts": now, "clicks": 2, "name": "Ada"})
    assert fs.get_record(clicks, "u1", features=["name", "clicks_sum_1h"]) == {
        "name": "Ada", "clicks_sum_1h": 2,
    }
    assert fs.get_record(clicks, "u1", features=["name"]) == {"name": "Ada"}
    got = fs.batch_get_record({clicks: ["u1"]}, features={clicks: ["events_1h"]})
    assert got.records[0]["record"] == {"events_1h": 1}
    with pytest.raises(InvalidRequestError, match="known: .*clicks_sum_1h"):
        fs.get_record(clicks, "u1", features=["clicks_sum_2h"])


def test_a_keyed_aggregation_follows_the_records_current_key(
    fs: FeatureStoreClient, clicks: str
) -> None:
    now = time.time()
    for i, (user, merchant) in enumerate([("a", "m1"), ("b", "m1"), ("c", "m2"), ("d", None)]):
        record = {"user_id": user, "ts": now + i}
        if merchant is not None:
            record["merchant"] = merchant
        fs.put_record(clicks, record)
    got = {r["record_identifier"]: r["record"] for r in
           fs.batch_get_record({clicks: ["a", "b", "c", "d"]}).records}
    assert [got[u].get("merchant_events_1h") for u in "abcd"] == [2, 2, 1, None]
    # The record moves to merchant m2: it now reads m2's events (its own included).
    fs.put_record(clicks, {"user_id": "a", "ts": now + 10, "merchant": "m2"})
    assert _aggregates(fs.get_record(clicks, "a"))["merchant_events_1h"] == 2
    assert _aggregates(fs.get_record(clicks, "b"))["merchant_events_1h"] == 2


def test_windows_slide_with_the_tile_size_as_precision(
    fs: FeatureStoreClient, unique_group_name: str
) -> None:
    fs.create_feature_group(
        unique_group_name, "user_id", "ts", {"user_id": "String", "ts": "Fractional"},
        aggregations=[{"name": "n_2s", "function": "count", "window": "2s"},
                      {"name": "n_1m", "function": "count", "window": "1m"}],
        aggregation_config={"tile_size": "1s"},
    )
    fs.put_record(unique_group_name, {"user_id": "u", "ts": time.time()})
    got = fs.get_record(unique_group_name, "u")
    assert got is not None and (got["n_2s"], got["n_1m"]) == (1, 1)
    time.sleep(2.1)  # two tiles later the 2s window holds nothing from then
    got = fs.get_record(unique_group_name, "u")
    assert got is not None and (got["n_2s"], got["n_1m"]) == (0, 1)


def test_events_later_than_the_bound_are_dropped_and_counted(
    fs: FeatureStoreClient, server: ServerProcess, unique_group_name: str
) -> None:
    fs.create_feature_group(
        unique_group_name, "user_id", "ts", {"user_id": "String", "ts": "Fractional",
                                             "clicks": "Integral"},
        aggregations=[{"name": "clicks_1h", "source": "clicks", "function": "sum",
                       "window": "1h"}],
        aggregation_config={"lateness": "10m"},
    )
    now = time.time()
    fs.put_record(unique_group_name, {"user_id": "u", "ts": now - 300, "clicks": 1})  # 5m late
    fs.put_record(unique_group_name, {"user_id": "u", "ts": now - 1200, "clicks": 10})  # 20m
    got = fs.get_record(unique_group_name, "u")
    assert got is not None and got["clicks_1h"] == 1
    with urllib.request.urlopen(f"{server.http_url}/metrics") as resp:
        text = resp.read().decode()
    # counted by the process that committed it (with --workers N: the writer), once
    assert metric_total(text, "tessera_aggregate_events_too_late_total",
                        feature_group=unique_group_name) == 1.0


def test_deletes_hide_the_record_but_not_its_events(fs: FeatureStoreClient, clicks: str) -> None:
    now = time.time()
    fs.put_record(clicks, {"user_id": "u1", "ts": now, "clicks": 3})
    fs.delete_record(clicks, "u1", event_time=now + 1)
    assert fs.get_record(clicks, "u1") is None  # a deleted record returns nothing at all
    fs.put_record(clicks, {"user_id": "u1", "ts": now + 2, "clicks": 4})
    assert _aggregates(fs.get_record(clicks, "u1"))["clicks_sum_1h"] == 7


@pytest.mark.parametrize(
    ("aggregation", "config", "message"),
    [
        ({"name": "a", "source": "nope", "function": "sum", "window": "1h"}, None,
         "source feature 'nope' is not in the group"),
        ({"name": "a", "source": "name", "function": "sum", "window": "1h"}, None,
         "source feature 'name' has type String; allowed: an Integral or Fractional"),
        ({"name": "a", "source": "clicks", "function": "sum", "window": "90s"},
         {"tile_size": "1m"}, "window '90s' is not a multiple of the tile size '1m'"),
        ({"name": "a", "source": "clicks", "function": "median", "window": "1h"}, None,
         "function 'median' is not known; allowed: count, sum, mean, min, max, last, last_n"),
        ({"name": "a", "source": "clicks", "function": "last_n", "window": "1h"}, None,
         "needs n, a whole number from 1 to 100"),
        ({"name": "clicks", "source": "clicks", "function": "sum", "window": "1h"}, None,
         "has the name of a feature of the group"),
        ({"name": "a", "source": "clicks", "function": "sum", "window": "1 hour"}, None,
         "is not a duration; allowed: a whole number and a unit s, m, h or d"),
        ({"name": "a", "function": "count", "window": "1h", "key": "price"}, None,
         "key feature 'price' has type Fractional; allowed: Integral or String"),
    ],
)
def test_bad_aggregations_are_refused_with_the_reason(
    fs: FeatureStoreClient, unique_group_name: str, aggregation: dict[str, Any],
    config: dict[str, str] | None, message: str,
) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(")):
        fs.create_feature_group(unique_group_name, "user_id", "ts", FEATURES,
                                aggregations=[aggregation], aggregation_config=config)
    assert unique_group_name not in [g["feature_group_name"] for g in fs.list_feature_groups()]


def test_a_recreated_group_starts_with_empty_aggregates(
    fs: FeatureStoreClient, clicks: str
) -> None:
    now = time.time()
    fs.put_record(clicks, {"user_id": "u1", "ts": now, "clicks": 3})
    fs.delete_feature_group(clicks)
    fs.create_feature_group(clicks, "user_id", "ts", FEATURES, aggregations=AGGREGATIONS)
    fs.put_record(clicks, {"user_id": "u1", "ts": now, "clicks": 1})
    got = _aggregates(fs.get_record(clicks, "u1"))
    assert (got["events_1h"], got["clicks_sum_1h"]) == (1, 1)


def test_acknowledged_events_survive_kill_9(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    with FeatureStoreClient(grpc=fresh_server.grpc_target, http=fresh_server.http_url,
                            timeout_s=30.0) as fs:
        fs.create_feature_group("clicks", "user_id", "ts", FEATURES, aggregations=AGGREGATIONS)
        now = time.time()
        fs.put_records("clicks", [{"user_id": "u1", "ts": now + i, "clicks": i}
                                  for i in range(50)])
    fresh_server.kill()
    fresh_server.start()  # a group with aggregations: the kernels load before it is ready
    assert "aggregation kernels ready" in fresh_server.log()
    with FeatureStoreClient(grpc=fresh_server.grpc_target, timeout_s=30.0) as fs:
        got = _aggregates(fs.get_record("clicks", "u1"))
    assert (got["events_1h"], got["clicks_sum_1h"]) == (50, sum(range(50)))
