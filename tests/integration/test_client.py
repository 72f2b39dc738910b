"""The SDK, sync and asyncio, against a real server process (tests/conftest.py `server`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from tessera.client import (
    AsyncFeatureStoreClient,
    BatchGetResult,
    ConflictError,
    FeatureGroupNotFoundError,
    FeatureStoreClient,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    RetryPolicy,
    StorageError,
)

pytestmark = pytest.mark.integration

FEATURES = {
    "user_id": "String",
    "ts": "Fractional",
    "clicks": "Integral",
    "ctr": "Fractional",
    "name": "String",
    "tags": "List[String]",
    "ids": "Set[Integral]",
    "scores": "List[Fractional]",
    "emb": "Vector[4]",
}
T0 = 1_700_000_000.0


def _record(user_id: str = "u1", ts: float = T0, **values: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "user_id": user_id,
        "ts": ts,
        "clicks": 3,
        "ctr": 0.125,
        "name": "Ada",
        "tags": ["a", "b"],
        "ids": {3, 1, 2},
        "scores": [0.5, 1.5],
        "emb": [0.1, 0.2, 0.3, 0.4],
    }
    record.update(values)
    return record


@pytest.fixture
def fs(server: Any) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(
        grpc=server.grpc_target, http=server.http_url, timeout_s=10.0
    ) as client:
        yield client


@pytest.fixture
def users(fs: FeatureStoreClient, unique_group_name: str) -> str:
    fs.create_feature_group(unique_group_name, "user_id", "ts", FEATURES)
    return unique_group_name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- feature groups ----------------------------------------------------------------------------


def test_feature_group_lifecycle(fs: FeatureStoreClient, unique_group_name: str) -> None:
    name = unique_group_name
    created = fs.create_feature_group(
        name, "user_id", "ts", FEATURES, ttl_s=3600, description="users", tags={"team": "r"}
    )
    assert created["feature_group_name"] == name
    assert created["record_identifier_feature_name"] == "user_id"
    assert created["online_store_config"]["ttl_duration"] == {"unit": "Seconds", "value": 3600}
    assert created["tags"] == [{"key": "team", "value": "r"}]
    emb = next(d for d in created["feature_definitions"] if d["feature_name"] == "emb")
    assert emb["collection_config"] == {"vector_config": {"dimension": 4}}

    assert fs.describe_feature_group(name)["feature_definitions"] == created["feature_definitions"]
    assert name in [g["feature_group_name"] for g in fs.list_feature_groups()]

    updated = fs.update_feature_group(name, add_features={"x": "Integral"}, description="v2")
    assert "x" in [d["feature_name"] for d in updated["feature_definitions"]]
    assert updated["description"] == "v2"
    now = time.time()  # within the group's TTL
    assert fs.put_record(name, {"user_id": "u1", "ts": now, "x": 7})
    assert fs.get_record(name, "u1") == {"user_id": "u1", "ts": now, "x": 7}

    fs.delete_feature_group(name)
    assert name not in [g["feature_group_name"] for g in fs.list_feature_groups()]
    with pytest.raises(FeatureGroupNotFoundError):
        fs.describe_feature_group(name)


# --- records -----------------------------------------------------------------------------------


def test_put_and_get_round_trip_every_type(fs: FeatureStoreClient, users: str) -> None:
    assert fs.put_record(users, _record()) is True
    got = fs.get_record(users, "u1")
    assert got is not None
    emb = got.pop("emb")
    assert emb.dtype == np.float32
    assert np.array_equal(emb, np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    assert got == {
        "user_id": "u1",
        "ts": T0,
        "clicks": 3,
        "ctr": 0.125,
        "name": "Ada",
        "tags": ["a", "b"],
        "ids": [1, 2, 3],
        "scores": [0.5, 1.5],
    }


def test_vector_given_as_float32_array_comes_back_equal(fs: FeatureStoreClient, users: str) -> None:
    emb = np.array([1.5, -2.0, 3.25, 0.0], dtype=np.float32)
    fs.put_record(users, _record(emb=emb))
    got = fs.get_record(users, "u1", features=["emb"])
    assert got is not None and np.array_equal(got["emb"], emb)


def test_get_with_a_feature_filter_returns_only_those(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, _record())
    assert fs.get_record(users, "u1", features=["clicks", "tags"]) == {
        "clicks": 3,
        "tags": ["a", "b"],
    }


def test_missing_record_is_none(fs: FeatureStoreClient, users: str) -> None:
    assert fs.get_record(users, "nobody") is None


def test_absent_features_are_left_out(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, {"user_id": "u1", "ts": T0, "clicks": None, "name": "Bo"})
    assert fs.get_record(users, "u1") == {"user_id": "u1", "ts": T0, "name": "Bo"}


def test_older_put_is_not_applied(fs: FeatureStoreClient, users: str) -> None:
    assert fs.put_record(users, _record(clicks=5))
    assert fs.put_record(users, _record(ts=T0 - 10, clicks=1)) is False
    got = fs.get_record(users, "u1", features="clicks")
    assert got == {"clicks": 5}


def test_aware_datetime_as_event_time(fs: FeatureStoreClient, users: str) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fs.put_record(users, _record(ts=at))
    assert fs.get_record(users, "u1", features=["ts"]) == {"ts": at.timestamp()}


def test_ttl_gives_an_expiry(fs: FeatureStoreClient, users: str) -> None:
    now = time.time()
    fs.put_record(users, _record(ts=now), ttl_s=600)
    got = fs.get_record(users, "u1", with_expiry=True)
    assert got is not None
    assert got["_expires_at"] == pytest.approx(now + 600, abs=1e-3)
    fs.put_record(users, _record("u2"))
    no_ttl = fs.get_record(users, "u2", with_expiry=True)
    assert no_ttl is not None and no_ttl["_expires_at"] is None


def test_integral_record_identifiers(fs: FeatureStoreClient, unique_group_name: str) -> None:
    fs.create_feature_group(unique_group_name, "id", "ts", {"id": "Integral", "ts": "Fractional"})
    fs.put_record(unique_group_name, {"id": 42, "ts": T0})
    assert fs.get_record(unique_group_name, 42) == {"id": 42, "ts": T0}
    result = fs.batch_get_record({unique_group_name: [42, 43]})
    assert [r["record_identifier"] for r in result.records] == ["42"]
    assert fs.delete_record(unique_group_name, 42, event_time=T0 + 1)
    assert fs.get_record(unique_group_name, 42) is None


def test_put_records_in_batches(fs: FeatureStoreClient, users: str) -> None:
    records = (_record(f"u{i}", clicks=i) for i in range(1234))
    assert fs.put_records(users, records, batch_size=500) == 1234
    assert fs.get_record(users, "u1233", features=["clicks"]) == {"clicks": 1233}
    assert fs.put_records(users, []) == 0


def test_put_records_with_one_bad_record_fails_naming_it(
    fs: FeatureStoreClient, users: str
) -> None:
    records = [_record("a"), _record("b", clicks="three")]
    with pytest.raises(InvalidRequestError, match="clicks"):
        fs.put_records(users, records)


def test_batch_get_over_two_groups_and_an_unknown_one(
    fs: FeatureStoreClient, users: str, unique_group_name: str
) -> None:
    items = unique_group_name + "_items"
    fs.create_feature_group(
        items, "item_id", "ts", {"item_id": "String", "ts": "Fractional", "price": "Fractional"}
    )
    fs.put_record(users, _record("u1"))
    fs.put_record(items, {"item_id": "i1", "ts": T0, "price": 9.5})
    result = fs.batch_get_record(
        {users: ["u1", "u404"], items: ["i1"], "no_such_group": ["x", "y"]},
        features={users: ["clicks"]},
    )
    assert isinstance(result, BatchGetResult)
    found = {(r["feature_group_name"], r["record_identifier"]): r["record"] for r in result.records}
    assert found == {
        (users, "u1"): {"clicks": 3},
        (items, "i1"): {"item_id": "i1", "ts": T0, "price": 9.5},
    }
    assert sorted((e["record_identifier"], e["error_code"]) for e in result.errors) == [
        ("x", "NOT_FOUND"),
        ("y", "NOT_FOUND"),
    ]
    assert all(e["feature_group_name"] == "no_such_group" for e in result.errors)
    assert result.unprocessed == {}
    fs.delete_feature_group(items)


def test_batch_get_of_more_than_100_ids_is_split_by_the_sdk(
    fs: FeatureStoreClient, users: str
) -> None:
    fs.put_records(users, (_record(f"u{i}", clicks=i) for i in range(0, 250, 2)))
    result = fs.batch_get_record(
        {users: [f"u{i}" for i in range(250)]}, features=["clicks"], with_expiry=True
    )
    assert result.errors == [] and result.unprocessed == {}
    assert sorted(int(r["record_identifier"][1:]) for r in result.records) == list(range(0, 250, 2))
    assert all(r["record"]["clicks"] == int(r["record_identifier"][1:]) for r in result.records)
    assert all(r["record"]["_expires_at"] is None for r in result.records)


def test_soft_delete_hides_until_a_newer_put(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, _record())
    assert fs.delete_record(users, "u1", event_time=T0 + 1, mode="soft") is True
    assert fs.get_record(users, "u1") is None
    assert fs.put_record(users, _record(ts=T0 - 1)) is False
    assert fs.get_record(users, "u1") is None
    assert fs.put_record(users, _record(ts=T0 + 2)) is True
    assert fs.get_record(users, "u1") is not None


def test_older_soft_delete_is_not_applied(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, _record())
    assert fs.delete_record(users, "u1", event_time="2000-01-01T00:00:00Z") is False
    assert fs.get_record(users, "u1") is not None


def test_hard_delete_removes_the_record(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, _record())
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert fs.delete_record(users, "u1", event_time=at, mode="hard") is True
    assert fs.get_record(users, "u1") is None


def test_delete_now_by_default(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, _record())
    assert fs.delete_record(users, "u1") is True
    assert fs.get_record(users, "u1") is None


# --- errors ------------------------------------------------------------------------------------


def test_creating_a_group_twice_is_a_conflict(fs: FeatureStoreClient, users: str) -> None:
    with pytest.raises(ConflictError):
        fs.create_feature_group(users, "user_id", "ts", FEATURES)


def test_adding_an_existing_feature_is_a_conflict(fs: FeatureStoreClient, users: str) -> None:
    with pytest.raises(ConflictError, match="clicks"):
        fs.update_feature_group(users, add_features={"clicks": "Integral"})


def test_invalid_definition_is_an_invalid_request(
    fs: FeatureStoreClient, unique_group_name: str
) -> None:
    with pytest.raises(InvalidRequestError, match="record_identifier_feature_name"):
        fs.create_feature_group(
            unique_group_name, "nope", "ts", {"id": "String", "ts": "Fractional"}
        )


def test_unknown_group_is_not_found(fs: FeatureStoreClient) -> None:
    with pytest.raises(FeatureGroupNotFoundError):
        fs.get_record("no_such_group", "u1")
    with pytest.raises(NotFoundError):
        fs.put_record("no_such_group", {"user_id": "u1", "ts": T0})
    with pytest.raises(NotFoundError):
        fs.delete_feature_group("no_such_group")
    with pytest.raises(NotFoundError):
        fs.update_feature_group("no_such_group", add_features={"x": "Integral"})


@pytest.mark.parametrize(
    ("values", "mentions"),
    [
        ({"clicks": "three"}, "clicks"),
        ({"emb": [1.0, 2.0]}, "emb"),
        ({"nope": 1}, "nope"),
        ({"ctr": float("nan")}, "ctr"),
    ],
)
def test_bad_record_is_an_invalid_request(
    fs: FeatureStoreClient, users: str, values: dict[str, Any], mentions: str
) -> None:
    with pytest.raises(InvalidRequestError, match=mentions):
        fs.put_record(users, _record(**values))


def test_unknown_feature_in_a_filter_is_an_invalid_request(
    fs: FeatureStoreClient, users: str
) -> None:
    fs.put_record(users, _record())
    with pytest.raises(InvalidRequestError, match="nope"):
        fs.get_record(users, "u1", features=["nope"])


def test_older_hard_delete_is_a_failed_precondition(fs: FeatureStoreClient, users: str) -> None:
    fs.put_record(users, _record())
    with pytest.raises(PreconditionFailedError):
        fs.delete_record(users, "u1", event_time=T0 - 100, mode="hard")
    assert fs.get_record(users, "u1") is not None


def test_server_down_is_a_storage_error_after_retries() -> None:
    port = _free_port()
    policy = RetryPolicy(retries=2, initial_backoff_s=0.01)
    client = FeatureStoreClient(
        grpc=f"127.0.0.1:{port}",
        http=f"http://127.0.0.1:{port}",
        timeout_s=2.0,
        retries=1,
        retry_policy=policy,
    )
    with client:
        with pytest.raises(StorageError):
            client.get_record("users", "u1")
        with pytest.raises(StorageError):
            client.list_feature_groups()


# --- asyncio -----------------------------------------------------------------------------------


def test_async_client_round_trip(server: Any, unique_group_name: str) -> None:
    name = unique_group_name

    async def run() -> None:
        async with AsyncFeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as fs:
            created = await fs.create_feature_group(name, "user_id", "ts", FEATURES)
            assert created["feature_group_name"] == name
            assert (await fs.describe_feature_group(name))["feature_group_name"] == name
            assert name in [g["feature_group_name"] for g in await fs.list_feature_groups()]
            await fs.update_feature_group(name, add_features={"x": "Integral"})

            emb = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
            assert await fs.put_record(name, _record(emb=emb, x=1)) is True
            got = await fs.get_record(name, "u1")
            assert got is not None
            assert np.array_equal(got.pop("emb"), emb)
            assert got["ids"] == [1, 2, 3] and got["x"] == 1
            assert await fs.get_record(name, "u1", features=["clicks"]) == {"clicks": 3}
            assert await fs.get_record(name, "nobody") is None

            assert (
                await fs.put_records(name, (_record(f"u{i}") for i in range(150)), batch_size=64)
                == 150
            )
            result = await fs.batch_get_record({name: [f"u{i}" for i in range(150)], "nope": ["x"]})
            assert len(result.records) == 150
            assert [e["error_code"] for e in result.errors] == ["NOT_FOUND"]

            assert await fs.delete_record(name, "u1", event_time=T0 + 1) is True
            assert await fs.get_record(name, "u1") is None
            assert await fs.delete_record(name, "u2", event_time=T0 + 1, mode="hard") is True
            assert await fs.get_record(name, "u2") is None

            with pytest.raises(InvalidRequestError):
                await fs.put_record(name, _record(clicks="three"))
            with pytest.raises(FeatureGroupNotFoundError):
                await fs.get_record("no_such_group", "u1")
            with pytest.raises(ConflictError):
                await fs.create_feature_group(name, "user_id", "ts", FEATURES)

            await fs.delete_feature_group(name)
            with pytest.raises(NotFoundError):
                await fs.describe_feature_group(name)

    asyncio.run(run())


def test_async_server_down_is_a_storage_error() -> None:
    port = _free_port()

    async def run() -> None:
        policy = RetryPolicy(retries=1, initial_backoff_s=0.01)
        async with AsyncFeatureStoreClient(
            grpc=f"127.0.0.1:{port}",
            http=f"http://127.0.0.1:{port}",
            timeout_s=2.0,
            retry_policy=policy,
        ) as fs:
            with pytest.raises(StorageError):
                await fs.put_record("users", {"user_id": "u1", "ts": T0})
            with pytest.raises(StorageError):
                await fs.list_feature_groups()

    asyncio.run(run())
