"""Authentication and per-group authorization of the gRPC API on real servers started with
`--auth` (`tessera serve --workers 1` and `--workers 2`), with real API keys made in the data
directory's key store before the start, as `tessera keys create --data-dir` makes them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.client import AsyncFeatureStoreClient, FeatureStoreClient
from tessera.core.errors import PermissionDeniedError, UnauthenticatedError
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tessera.server.auth.keys import KeyStore
from tests.conftest import WORKERS
from tests.integration.wire_helpers import channels_on_each, rpc_error
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

FEATURES = [
    {"feature_name": "id", "feature_type": "String"},
    {"feature_name": "ts", "feature_type": "Fractional"},
    {"feature_name": "n", "feature_type": "Integral"},
]
GROUPS = ("users_a", "users_b", "items")
#: key name -> permissions; every key is made before the server starts.
KEYS = {
    "admin": ["admin"],
    "reader": ["read:*"],
    "writer": ["write:*"],
    "users": ["read:users_*", "write:users_*"],
    "revoked": ["admin"],
    "revoked_live": ["read:*"],
}


@dataclass
class AuthServer:
    proc: ServerProcess
    tokens: dict[str, str]
    keys: KeyStore
    channel: grpc.Channel
    stub: pb_grpc.FeatureStoreStub

    def md(self, key: str | None) -> tuple[tuple[str, str], ...] | None:
        return None if key is None else (("authorization", f"Bearer {self.tokens[key]}"),)

    def audit(self) -> list[dict[str, Any]]:
        path = self.proc.data_dir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module", params=WORKERS)
def auth_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthServer]:
    data_dir = tmp_path_factory.mktemp("auth_grpc") / "data"
    keys = KeyStore(data_dir)
    tokens = {name: keys.create(name, perms).secret for name, perms in KEYS.items()}
    keys.revoke("revoked")
    proc = ServerProcess(data_dir, workers=request.param,
                         extra_env={"TESSERA_AUTH__ENABLED": "true"}).start(timeout_s=90)
    channel = grpc.insecure_channel(proc.grpc_target)
    try:
        with httpx.Client(base_url=proc.http_url, timeout=10,
                          headers={"authorization": f"Bearer {tokens['admin']}"}) as http:
            for name in GROUPS:
                resp = http.post("/v1/feature-groups", json={
                    "feature_group_name": name, "record_identifier_feature_name": "id",
                    "event_time_feature_name": "ts", "feature_definitions": FEATURES})
                assert resp.status_code == 201, resp.text
        server = AuthServer(proc, tokens, keys, channel, pb_grpc.FeatureStoreStub(channel))
        for group in GROUPS:  # one record in each, written by the admin
            server.stub.PutRecord(_put(group, "r1"), metadata=server.md("admin"), timeout=10)
        yield server
    finally:
        channel.close()
        proc.kill()  # a graceful stop is not what this file tests


def _put(group: str, rid: str, n: int = 1) -> pb.PutRecordRequest:
    return pb.PutRecordRequest(feature_group_name=group,
                               record=to_record({"id": rid, "ts": 1.0, "n": n}))


def _calls(s: AuthServer, group: str) -> dict[str, Callable[[str | None], Any]]:
    """Each RPC on `group`, as the caller with a key (None: no credentials)."""
    stub = s.stub
    echo = s.channel.unary_unary("/tessera.v1.Diagnostics/Echo")
    return {
        "PutRecord": lambda k: stub.PutRecord(_put(group, "w1"), metadata=s.md(k), timeout=10),
        "PutRecords": lambda k: stub.PutRecords(pb.PutRecordsRequest(
            feature_group_name=group, records=[to_record({"id": "w2", "ts": 1.0, "n": 2})]),
            metadata=s.md(k), timeout=10),
        "DeleteRecord": lambda k: stub.DeleteRecord(pb.DeleteRecordRequest(
            feature_group_name=group, record_identifier="w1", event_time="2.0"),
            metadata=s.md(k), timeout=10),
        "GetRecord": lambda k: stub.GetRecord(pb.GetRecordRequest(
            feature_group_name=group, record_identifier="r1"), metadata=s.md(k), timeout=10),
        "BatchGetRecord": lambda k: stub.BatchGetRecord(pb.BatchGetRecordRequest(identifiers=[
            pb.BatchGetRecordIdentifier(feature_group_name=group, record_identifiers=["r1"])]),
            metadata=s.md(k), timeout=10),
        "Echo": lambda k: echo(pb.EchoRequest(payload=b"hi").SerializeToString(),
                               metadata=s.md(k), timeout=10),
    }


WRITES = ("PutRecord", "PutRecords", "DeleteRecord")
READS = ("GetRecord", "BatchGetRecord")


def _status(call: Callable[[], Any]) -> tuple[str, str]:
    exc = rpc_error(call)
    return exc.code().name, exc.details() or ""  # type: ignore[attr-defined]


def test_every_rpc_needs_a_valid_key(auth_server: AuthServer) -> None:
    calls = _calls(auth_server, "users_a")
    for method, call in calls.items():
        code, details = _status(lambda call=call: call(None))  # type: ignore[misc]
        assert (method, code) == (method, "UNAUTHENTICATED"), details
        assert "no credentials" in details
        code, details = _status(lambda call=call: call("revoked"))  # type: ignore[misc]
        assert (method, code) == (method, "UNAUTHENTICATED")
        assert "'revoked' is revoked" in details
    bogus = auth_server.stub.GetRecord
    code, details = _status(lambda: bogus(
        pb.GetRecordRequest(feature_group_name="users_a", record_identifier="r1"),
        metadata=(("authorization", "Bearer tsk_not_a_key"),), timeout=10))
    assert code == "UNAUTHENTICATED" and "not known" in details
    assert "tsk_not_a_key" not in details  # never echoes a secret


def test_a_reader_reads_every_group_and_writes_none(auth_server: AuthServer) -> None:
    calls = _calls(auth_server, "items")
    got = calls["GetRecord"]("reader")
    assert from_record(got.record) == {"id": "r1", "ts": 1.0, "n": 1}
    assert [r.record_identifier for r in calls["BatchGetRecord"]("reader").records] == ["r1"]
    assert calls["Echo"]("reader")
    for method in WRITES:
        code, details = _status(lambda m=method: calls[m]("reader"))  # type: ignore[misc]
        assert (method, code) == (method, "PERMISSION_DENIED")
        assert details.startswith(
            "'reader' lacks the permission write on feature group 'items'; request id ")


def test_a_writer_writes_every_group_and_reads_none(auth_server: AuthServer) -> None:
    calls = _calls(auth_server, "users_b")
    assert calls["PutRecord"]("writer").applied
    assert calls["PutRecords"]("writer").written == 1
    assert calls["DeleteRecord"]("writer").applied
    code, details = _status(lambda: calls["GetRecord"]("writer"))
    assert code == "PERMISSION_DENIED"
    assert "'writer' lacks the permission read on feature group 'users_b'" in details
    batch = calls["BatchGetRecord"]("writer")  # per item, not the whole call
    assert [(e.record_identifier, e.error_code) for e in batch.errors] == [
        ("r1", "PERMISSION_DENIED")]
    assert not batch.records


def test_an_admin_key_may_do_everything(auth_server: AuthServer) -> None:
    calls = _calls(auth_server, "users_b")
    for method in ("PutRecord", "PutRecords", "GetRecord", "BatchGetRecord", "DeleteRecord",
                   "Echo"):
        calls[method]("admin")  # raises on any error


def test_glob_permissions_allow_only_the_groups_they_match(auth_server: AuthServer) -> None:
    mine, other = _calls(auth_server, "users_a"), _calls(auth_server, "items")
    for method in (*WRITES, *READS):
        mine[method]("users")
    for method in ("PutRecord", "GetRecord"):
        code, details = _status(lambda m=method: other[m]("users"))  # type: ignore[misc]
        assert code == "PERMISSION_DENIED" and "feature group 'items'" in details
    # A group that does not exist is denied too (the key learns nothing of it) unless the key
    # may read it, when it is NOT_FOUND.
    code, _ = _status(lambda: auth_server.stub.GetRecord(pb.GetRecordRequest(
        feature_group_name="secret_group", record_identifier="x"),
        metadata=auth_server.md("users"), timeout=10))
    assert code == "PERMISSION_DENIED"
    code, _ = _status(lambda: auth_server.stub.GetRecord(pb.GetRecordRequest(
        feature_group_name="users_nope", record_identifier="x"),
        metadata=auth_server.md("users"), timeout=10))
    assert code == "NOT_FOUND"


def test_batch_get_record_reports_unreadable_groups_per_item(auth_server: AuthServer) -> None:
    before = len(auth_server.audit())
    response = auth_server.stub.BatchGetRecord(pb.BatchGetRecordRequest(identifiers=[
        pb.BatchGetRecordIdentifier(feature_group_name="users_a", record_identifiers=["r1"]),
        pb.BatchGetRecordIdentifier(feature_group_name="items",
                                    record_identifiers=["r1", "zz"]),
        pb.BatchGetRecordIdentifier(feature_group_name="users_b", record_identifiers=["r1"]),
    ]), metadata=auth_server.md("users"), timeout=10)
    assert [(r.feature_group_name, r.record_identifier) for r in response.records] == [
        ("users_a", "r1"), ("users_b", "r1")]
    assert [(e.feature_group_name, e.record_identifier, e.error_code)
            for e in response.errors] == [("items", "r1", "PERMISSION_DENIED"),
                                          ("items", "zz", "PERMISSION_DENIED")]
    assert response.errors[0].error_message.startswith(
        "'users' lacks the permission read on feature group 'items'")
    # One audit line for the denied group, in whichever process served the call.
    lines = _wait_for(lambda: auth_server.audit()[before:])
    denied = [x for x in lines if x["action"] == "BatchGetRecord"]
    assert [(x["principal"], x["group"], x["outcome"]) for x in denied] == [
        ("users", "items", "denied")]


def test_denied_calls_are_audit_lines_naming_the_callers_request_id(
    auth_server: AuthServer,
) -> None:
    before = len(auth_server.audit())
    _, details = _status(lambda: _calls(auth_server, "items")["PutRecord"]("reader"))
    request_id = details.rsplit(" ", 1)[1]
    lines = _wait_for(lambda: [x for x in auth_server.audit()[before:]
                               if x.get("request_id") == request_id])
    (line,) = lines
    assert {k: line[k] for k in ("principal", "action", "group", "outcome")} == {
        "principal": "reader", "action": "PutRecord",
        "group": "items", "outcome": "denied"}
    # Names only: no token, no request body.
    assert set(line) == {"time", "principal", "action", "group", "outcome", "request_id",
                         "reason"}
    assert line["reason"] == "'reader' lacks the permission write on feature group 'items'"


def test_a_revoked_key_is_refused_by_every_serving_process_at_once(
    auth_server: AuthServer,
) -> None:
    workers = auth_server.proc.workers
    channels = ({0: grpc.insecure_channel(auth_server.proc.grpc_target)} if workers == 1
                else channels_on_each(auth_server.proc.grpc_target, workers,
                                      metadata=auth_server.md("reader")))
    try:
        assert len(channels) == workers
        request = pb.GetRecordRequest(feature_group_name="items", record_identifier="r1")
        stubs = [pb_grpc.FeatureStoreStub(ch) for ch in channels.values()]
        for stub in stubs:  # each process has resolved (and cached) the key
            stub.GetRecord(request, metadata=auth_server.md("revoked_live"), timeout=10)
        auth_server.keys.revoke("revoked_live")
        for stub in stubs:
            code, details = _status(lambda stub=stub: stub.GetRecord(  # type: ignore[misc]
                request, metadata=auth_server.md("revoked_live"), timeout=10))
            assert code == "UNAUTHENTICATED" and "'revoked_live' is revoked" in details
    finally:
        for ch in channels.values():
            ch.close()


def test_the_process_diagnostic_needs_a_valid_key(auth_server: AuthServer) -> None:
    if auth_server.proc.workers == 1:
        pytest.skip("the Pid diagnostic exists with --workers N only")
    pid = auth_server.channel.unary_unary("/tessera.server.Process/Pid")
    code, details = _status(lambda: pid(b"", timeout=10))
    assert code == "UNAUTHENTICATED" and "no credentials" in details, details
    assert int(pid(b"", timeout=10, metadata=auth_server.md("reader"))) > 0


def test_health_and_reflection_need_no_credentials(auth_server: AuthServer) -> None:
    health = health_pb2_grpc.HealthStub(auth_server.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="tessera.v1.FeatureStore"),
                          timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(auth_server.channel)
    (answer,) = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for s in answer.list_services_response.service}
    assert {"tessera.v1.FeatureStore", "tessera.v1.Diagnostics"} <= names


def test_the_sdk_sends_its_api_key(auth_server: AuthServer) -> None:
    target = auth_server.proc.grpc_target
    with FeatureStoreClient(grpc=target, http=None, api_key=auth_server.tokens["users"]) as sdk:
        assert sdk.put_record("users_a", {"id": "s1", "ts": 1.0, "n": 5})
        assert sdk.get_record("users_a", "s1") == {"id": "s1", "ts": 1.0, "n": 5}
        with pytest.raises(PermissionDeniedError, match="write on feature group 'items'"):
            sdk.put_record("items", {"id": "s1", "ts": 1.0, "n": 5})
        result = sdk.batch_get_record({"users_a": ["s1"], "items": ["r1"]})
        assert [r["record_identifier"] for r in result.records] == ["s1"]
        assert [(e["feature_group_name"], e["error_code"]) for e in result.errors] == [
            ("items", "PERMISSION_DENIED")]

    async def without_a_key() -> None:
        async with AsyncFeatureStoreClient(grpc=target, http=None, api_key=None) as sdk:
            await sdk.get_record("users_a", "s1")

    with pytest.raises(UnauthenticatedError, match="no credentials"):
        asyncio.run(without_a_key())


def _wait_for(read: Callable[[], list[dict[str, Any]]], timeout_s: float = 5.0
              ) -> list[dict[str, Any]]:
    """`read()` once it is not empty (an audit line is written before the answer, but another
    process's write may land in the file a moment later than this process reads it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = read()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)

