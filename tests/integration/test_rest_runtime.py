"""Tessera's REST runtime (server/rest_runtime.py) against a real server process (--workers 1
and 2): every route in JSON and protobuf, its errors, the same records through gRPC (the SDK)
and REST, and read-your-writes through the write token across serving processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tessera.client import FeatureStoreClient
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.front import PID_HEADER
from tessera.server.rest_runtime import MAX_BODY_BYTES
from tests.integration.wire_helpers import Wire, metric_total
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

PROTO = "application/x-protobuf"


@pytest.fixture
def group(wire: Wire, unique_group_name: str) -> str:
    wire.create_group(unique_group_name)  # user_id, ts, clicks, ctr, name, tags, ids, scores, emb
    return unique_group_name


@pytest.fixture
def sdk(server: ServerProcess) -> Iterator[FeatureStoreClient]:
    client = FeatureStoreClient(server.grpc_target, server.http_url)
    yield client
    client.close()


def _records(group: str) -> str:
    return f"/v1/feature-groups/{group}/records"


def _put(http: httpx.Client, group: str, record: dict[str, Any], **extra: Any) -> httpx.Response:
    return http.put(_records(group), json={"record": record, **extra})


def _error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert set(body) >= {"code", "message"}
    return str(body["message"])


def test_put_and_get_keep_json_types_and_grpc_sees_the_same_record(
    wire: Wire, group: str, sdk: FeatureStoreClient
) -> None:
    now = time.time()
    record = {"user_id": "u/1 é", "ts": now, "clicks": 7, "ctr": 0.25, "tags": ["a", "b"],
              "ids": [3, 5], "scores": [], "emb": [0.5, -1.0, 2.0, 0.125], "name": None}
    put = _put(wire.http, group, record, ttl_s=3600)
    assert put.status_code == 200, put.text
    assert put.json()["applied"] is True and put.json()["write_token"]

    got = wire.http.get(f"{_records(group)}/u%2F1%20%C3%A9")
    assert got.status_code == 200, got.text
    body = got.json()
    del record["name"]  # null: absent
    assert body["record"] == record and isinstance(body["record"]["clicks"], int)
    expires = body["expires_at"]
    assert expires.endswith("Z") and abs(
        time.mktime(time.strptime(expires[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        - (now + 3600)) < 2

    via_grpc = sdk.get_record(group, "u/1 é")
    assert via_grpc is not None
    assert via_grpc["clicks"] == 7 and via_grpc["tags"] == ["a", "b"]
    assert np.array_equal(via_grpc["emb"], np.array(record["emb"], dtype=np.float32))

    # ...and the other way: written through gRPC, read through REST (no TTL: expires_at null).
    sdk.put_record(group, {"user_id": "g1", "ts": now, "clicks": 1, "emb": np.ones(4, "f4")})
    body = wire.http.get(f"{_records(group)}/g1", params={
        "consistent_after": sdk.write_token or ""}).json()
    assert body == {"record": {"user_id": "g1", "ts": now, "clicks": 1, "emb": [1.0] * 4},
                    "expires_at": None}


def test_features_filter_the_record_and_an_unknown_one_is_422(wire: Wire, group: str) -> None:
    assert _put(wire.http, group, {"user_id": "u1", "ts": time.time(), "clicks": 3,
                                   "name": "x"}).status_code == 200
    got = wire.http.get(f"{_records(group)}/u1", params={"features": "clicks,name"})
    assert got.json()["record"] == {"clicks": 3, "name": "x"}
    message = _error(wire.http.get(f"{_records(group)}/u1", params={"features": "clicks,nope"}),
                     422)
    assert "'nope'" in message and "clicks" in message


def test_absent_records_and_unknown_groups_are_404(wire: Wire, group: str) -> None:
    assert "'nobody'" in _error(wire.http.get(f"{_records(group)}/nobody"), 404)
    assert "does not exist" in _error(wire.http.get(f"{_records('no_such_group')}/x"), 404)
    assert _error(_put(wire.http, "no_such_group", {"user_id": "x", "ts": 1.0}), 404)
    assert _error(wire.http.post(f"{_records('no_such_group')}:batchGet",
                                 json={"record_ids": ["x"]}), 404)
    assert _error(wire.http.delete(f"{_records('no_such_group')}/x",
                                   params={"event_time": "1"}), 404)


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"record": {"user_id": "u", "ts": 1.0, "clicks": "seven"}}, 422, "Integral"),
    ({"record": {"user_id": "u", "ts": 1.0, "clicks": True}}, 422, "bool"),
    ({"record": {"user_id": "u", "ts": 1.0, "clicks": 2**70}}, 422, "clicks"),
    ({"record": {"user_id": "u", "ts": 1.0, "nope": 1}}, 422, "'nope' is not in group"),
    ({"record": {"user_id": "u", "ts": 1.0, "emb": [1.0, 2.0]}}, 422, "emb"),
    ({"record": {"ts": 1.0}}, 422, "user_id"),
    ({"record": {"user_id": "u", "ts": 1.0}, "extra": 1}, 422, "extra"),
    ({"records": []}, 422, "record"),
])
def test_bad_puts_are_422_naming_the_problem(
    wire: Wire, group: str, body: dict[str, Any], status: int, words: str
) -> None:
    assert words in _error(wire.http.put(_records(group), json=body), status)


def test_malformed_and_oversized_bodies(wire: Wire, group: str) -> None:
    assert "malformed JSON" in _error(
        wire.http.put(_records(group), content=b'{"record": {', headers={
            "content-type": "application/json"}), 422)
    assert "malformed JSON" in _error(
        wire.http.post(f"{_records(group)}:batchGet", content=b'{"record_ids": [1,'), 422)
    big = b'{"record": {"name": "' + b"x" * MAX_BODY_BYTES + b'"}}'
    assert "at most" in _error(wire.http.put(_records(group), content=big), 413)

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    assert "at most" in _error(wire.http.put(_records(group), content=chunks()), 413)
    # Nothing above was written, and the server still answers.
    assert wire.http.get(f"{_records(group)}/u").status_code == 404


def test_protobuf_put_and_get_carry_the_grpc_messages(wire: Wire, group: str) -> None:
    now = time.time()
    message = pb.PutRecordRequest(record=to_record({"user_id": "p1", "ts": now, "clicks": 9}),
                                  ttl_s=60)
    put = wire.http.put(_records(group), content=message.SerializeToString(),
                        headers={"content-type": PROTO, "accept": PROTO})
    assert put.status_code == 200 and put.headers["content-type"] == PROTO
    put_response = pb.PutRecordResponse.FromString(put.content)
    assert put_response.applied and put_response.write_token

    got = wire.http.get(f"{_records(group)}/p1", headers={"accept": PROTO})
    assert got.headers["content-type"] == PROTO
    response = pb.GetRecordResponse.FromString(got.content)
    assert from_record(response.record) == {"user_id": "p1", "ts": now, "clicks": 9}
    assert response.HasField("expires_at_us")

    # A JSON client reads the protobuf write; a message naming another group is refused.
    assert wire.http.get(f"{_records(group)}/p1").json()["record"]["clicks"] == 9
    message.feature_group_name = "other_group"
    assert "other_group" in _error(wire.http.put(
        _records(group), content=message.SerializeToString(),
        headers={"content-type": PROTO}), 422)
    assert "not a valid tessera.v1.PutRecordRequest" in _error(wire.http.put(
        _records(group), content=b"\xff\xff\xff", headers={"content-type": PROTO}), 422)


def test_batch_get_answers_found_records_in_order_and_the_missing_ids(
    wire: Wire, group: str
) -> None:
    now = time.time()
    for i in range(3):
        assert _put(wire.http, group, {"user_id": f"b{i}", "ts": now, "clicks": i}).status_code \
            == 200
    url = f"{_records(group)}:batchGet"
    body = wire.http.post(url, json={"record_ids": ["b2", "zz", "b0"]}).json()
    assert [r["record_id"] for r in body["records"]] == ["b2", "b0"]
    assert body["records"][0]["record"] == {"user_id": "b2", "ts": now, "clicks": 2}
    assert body["missing"] == ["zz"]

    only = wire.http.post(url, json={"record_ids": ["b1"], "features": ["clicks"]}).json()
    assert only["records"] == [{"record_id": "b1", "record": {"clicks": 1}, "expires_at": None}]

    raw = wire.http.post(url, json={"record_ids": ["b1", "b2"]}, headers={"accept": PROTO})
    response = pb.BatchGetRecordResponse.FromString(raw.content)
    assert [r.record_identifier for r in response.records] == ["b1", "b2"]

    assert "at most 100" in _error(wire.http.post(url, json={
        "record_ids": [f"i{i}" for i in range(101)]}), 422)
    assert "'nope'" in _error(wire.http.post(url, json={"record_ids": ["b1"],
                                                        "features": ["nope"]}), 422)
    assert "record_ids" in _error(wire.http.post(url, json={"features": ["b1"]}), 422)

    # With a write token the read is the servicer's RPC: the same JSON answer.
    token = _put(wire.http, group, {"user_id": "b3", "ts": now, "clicks": 3}).json()["write_token"]
    after = wire.http.post(url, json={"record_ids": ["b3", "zz", "b0"],
                                      "consistent_after": token}).json()
    assert after == {"records": [
        {"record_id": "b3", "record": {"user_id": "b3", "ts": now, "clicks": 3},
         "expires_at": None},
        {"record_id": "b0", "record": {"user_id": "b0", "ts": now, "clicks": 0},
         "expires_at": None}], "missing": ["zz"]}


def test_delete_soft_and_hard_and_their_errors(wire: Wire, group: str) -> None:
    now = time.time()
    for rid in ("d1", "d2"):
        assert _put(wire.http, group, {"user_id": rid, "ts": now, "clicks": 1}).status_code == 200
    url = f"{_records(group)}/d1"
    assert "event_time" in _error(wire.http.delete(url), 422)
    assert "soft, hard" in _error(wire.http.delete(url, params={
        "event_time": str(now + 1), "mode": "gone"}), 422)
    soft = wire.http.delete(url, params={"event_time": str(now + 1)})
    assert soft.status_code == 200 and soft.json()["applied"] is True
    hard = wire.http.delete(f"{_records(group)}/d2", params={
        "event_time": str(now + 1), "mode": "hard"}, headers={"accept": PROTO})
    assert pb.DeleteRecordResponse.FromString(hard.content).applied
    for rid in ("d1", "d2"):
        assert wire.http.get(f"{_records(group)}/{rid}",
                             params={"consistent_after": hard_token(hard)}).status_code == 404


def hard_token(resp: httpx.Response) -> str:
    return pb.DeleteRecordResponse.FromString(resp.content).write_token


def test_a_write_token_reads_the_write_through_another_serving_process(
    server: ServerProcess, group: str
) -> None:
    # One connection per serving process (--workers 2): the kernel spreads new connections.
    clients: dict[str, httpx.Client] = {}
    for _ in range(40):
        client = httpx.Client(base_url=server.http_url, timeout=10)
        pid = client.get("/healthz").headers.get(PID_HEADER, "single")
        if pid in clients:
            client.close()
        else:
            clients[pid] = client
        if len(clients) == server.workers:
            break
    try:
        writer, *others = clients.values()
        reader = others[0] if others else writer
        before = metric_total(reader.get("/metrics").text, "tessera_consistent_reads_total",
                              method="GetRecord", outcome="visible") or 0.0
        waited = metric_total(reader.get("/metrics").text, "tessera_consistent_reads_total",
                              method="GetRecord", outcome="waited") or 0.0
        now = time.time()
        for i in range(3):
            token = _put(writer, group, {"user_id": "ryw", "ts": now + i, "clicks": i}
                         ).json()["write_token"]
            got = reader.get(f"{_records(group)}/ryw", params={"consistent_after": token})
            assert got.status_code == 200 and got.json()["record"]["clicks"] == i
        text = reader.get("/metrics").text
        after = (metric_total(text, "tessera_consistent_reads_total", method="GetRecord",
                              outcome="visible") or 0.0) + (metric_total(
            text, "tessera_consistent_reads_total", method="GetRecord", outcome="waited") or 0.0)
        assert after - before - waited == 3  # the token went through the gRPC API's path
        assert "consistent_after" in _error(reader.get(
            f"{_records(group)}/ryw", params={"consistent_after": "not-a-token"}), 422)
    finally:
        for client in clients.values():
            client.close()


def test_routes_are_in_openapi_and_counted_per_route_template(wire: Wire, group: str) -> None:
    paths = wire.http.get("/openapi.json").json()["paths"]
    template = "/v1/feature-groups/{group}/records/{record_id}"
    assert set(paths[template]) == {"get", "delete"}
    assert "put" in paths["/v1/feature-groups/{group}/records"]
    assert "post" in paths["/v1/feature-groups/{group}/records:batchGet"]
    wire.http.get(f"{_records(group)}/nobody")
    count = metric_total(wire.http.get("/metrics").text, "tessera_http_requests_total",
                         method="GET", route=template, status="404")
    assert count is not None and count >= 1


def test_an_integral_record_identifier_takes_ints_and_answers_canonical_ids(
    wire: Wire, unique_group_name: str
) -> None:
    group = unique_group_name
    wire.create_group(group, features=[
        {"feature_name": "id", "feature_type": "Integral"},
        {"feature_name": "ts", "feature_type": "Fractional"},
        {"feature_name": "v", "feature_type": "String"},
    ], record_identifier="id")
    now = time.time()
    assert _put(wire.http, group, {"id": 7, "ts": now, "v": "seven"}).json()["applied"] is True
    assert wire.http.get(f"{_records(group)}/007").json()["record"] == {
        "id": 7, "ts": now, "v": "seven"}
    body = wire.http.post(f"{_records(group)}:batchGet",
                          json={"record_ids": [7, "08", 8]}).json()
    assert [r["record_id"] for r in body["records"]] == ["7"]
    assert body["missing"] == ["8"]
    assert "not an Integral" in _error(wire.http.get(f"{_records(group)}/seven"), 422)
    assert "not an Integral" in _error(wire.http.post(
        f"{_records(group)}:batchGet", json={"record_ids": ["x"]}), 422)
