"""Feature metadata in Tessera's own API, against a real server (`server`: --workers 1 and 2):
`PATCH /v1/feature-groups/{name}/features/{feature}`, the SDK's `update_feature_metadata` (sync
and asyncio), and the description every feature shows."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tessera.client import (
    AsyncFeatureStoreClient,
    FeatureStoreClient,
    InvalidRequestError,
    NotFoundError,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

FEATURES = {"user_id": "String", "ts": "Fractional", "clicks": "Integral"}


def test_sdk_sets_and_removes_feature_metadata(server: ServerProcess,
                                               unique_group_name: str) -> None:
    name = unique_group_name
    with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as fs:
        fs.create_feature_group(name, record_identifier="user_id", event_time="ts",
                                features=FEATURES)
        described = fs.update_feature_metadata(
            name, "clicks", description="clicks per session",
            parameters={"owner": "growth", "unit": "count"})
        clicks = described["feature_definitions"][2]
        assert clicks["description"] == "clicks per session"
        assert clicks["parameters"] == {"owner": "growth", "unit": "count"}
        assert described["version"] == 1
        fs.update_feature_metadata(name, "clicks", parameters={"unit": None, "tier": "2"})
        clicks = fs.describe_feature_group(name)["feature_definitions"][2]
        assert clicks["parameters"] == {"owner": "growth", "tier": "2"}
        assert clicks["description"] == "clicks per session"
        assert fs.describe_feature_group(name)["feature_definitions"][0]["parameters"] == {}
        with pytest.raises(NotFoundError, match="feature 'nope' is not in group"):
            fs.update_feature_metadata(name, "nope", description="x")
        with pytest.raises(NotFoundError):
            fs.update_feature_metadata("no_such_group_meta", "clicks", description="x")
        with pytest.raises(InvalidRequestError, match="the limit is 255"):
            fs.update_feature_metadata(name, "clicks", description="d" * 256)

    async def run() -> None:
        async with AsyncFeatureStoreClient(grpc=server.grpc_target,
                                           http=server.http_url) as afs:
            out = await afs.update_feature_metadata(name, "ts", description="")
            assert out["feature_definitions"][1]["description"] is None
            out = await afs.update_feature_metadata(name, "ts", description="event time")
            assert out["feature_definitions"][1]["description"] == "event time"

    asyncio.run(run())


def test_http_patch_of_a_feature(server: ServerProcess, unique_group_name: str) -> None:
    name = unique_group_name
    with httpx.Client(base_url=server.http_url) as http:
        r = http.post("/v1/feature-groups", json={
            "feature_group_name": name, "record_identifier_feature_name": "user_id",
            "event_time_feature_name": "ts", "feature_definitions": [
                {"feature_name": "user_id", "feature_type": "String",
                 "description": "the user", "parameters": {"pii": "true"}},
                {"feature_name": "ts", "feature_type": "Fractional"}]})
        assert r.status_code == 201, r.text
        assert r.json()["feature_definitions"][0]["parameters"] == {"pii": "true"}
        path = f"/v1/feature-groups/{name}/features/ts"
        r = http.patch(path, json={"parameter_additions": {"unit": "s"}})
        assert r.status_code == 200 and r.json()["feature_definitions"][1]["parameters"] == {
            "unit": "s"}
        r = http.patch(path, json={"parameter_additions": {"bad{key}": "x"}})
        assert r.status_code == 422 and "bad{key}" in r.json()["error"]["message"]
        r = http.patch(path, json={"colour": "red"})
        assert r.status_code == 422
        r = http.patch(f"/v1/feature-groups/{name}/features/nope", json={"description": "x"})
        assert r.status_code == 404 and "known: user_id, ts" in r.json()["error"]["message"]
        r = http.get(f"/v1/feature-groups/{name}")
        assert r.json()["feature_definitions"][1]["parameters"] == {"unit": "s"}
