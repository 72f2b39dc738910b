"""Authentication and per-group authorization at the gRPC edge (server/grpc_service.py), in
process: a real grpc.aio server over the real RocksDB store and registry, called over a real
channel with `authorization` metadata; the principals come from a table (the real key store and
JWTs have their own tests; tests/integration/test_auth_grpc.py runs all of it on real servers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from tessera.core.errors import UnauthenticatedError
from tessera.core.schema import FeatureDefinition, FeatureGroupDefinition
from tessera.core.tokens import encode_token
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.auth import audit
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.permissions import Principal, parse_permissions
from tessera.server.grpc_service import FeatureStoreService, handlers
from tessera.server.online_store import RocksDBOnlineStore
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import open_rocksdb

GROUPS = ("users_a", "users_b", "items")


class TableAuthenticator:
    """Bearer tokens looked up in a table; anything else is refused as the real one does."""

    enabled = True

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._principals = principals

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None:
            raise UnauthenticatedError("no credentials: send authorization: Bearer <key>",
                                       "missing")
        principal = self._principals.get(authorization.removeprefix("Bearer "))
        if principal is None:
            raise UnauthenticatedError("unknown API key", "unknown_key")
        return principal

    def authenticate_sigv4(
        self, method: str, raw_path: str, query: str, headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Principal:
        raise UnauthenticatedError("no SigV4 here", "malformed")


def _principal(name: str, *perms: str) -> Principal:
    return Principal(name, parse_permissions(perms))


KEYS = {
    "reader": _principal("reader", "read:*"),
    "writer": _principal("writer", "write:*"),
    "admin": _principal("admin", "admin"),
    "users": _principal("users", "read:users_*", "write:users_*"),
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FeatureStoreService]:
    rocks = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    store = RocksDBOnlineStore(rocks)
    registry = FeatureGroupRegistry(rocks)
    for name in GROUPS:
        registry.create(FeatureGroupDefinition(
            feature_group_name=name, record_identifier_feature_name="id",
            event_time_feature_name="ts",
            feature_definitions=[FeatureDefinition.of("id", "String"),
                                 FeatureDefinition.of("ts", "Fractional"),
                                 FeatureDefinition.of("n", "Integral")],
        ))
    try:
        yield FeatureStoreService(registry, store)
    finally:
        store.close()
        rocks.close()


_T = TypeVar("_T")


class Calls:
    """Raw calls on a running server: `call(method, request, key)` -> response bytes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    async def call(self, method: str, request: Any, key: str | None = None,
                   service: str = "tessera.v1.FeatureStore") -> bytes:
        rpc = self._channel.unary_unary(f"/{service}/{method}")
        metadata = None if key is None else (("authorization", f"Bearer {key}"),)
        out: bytes = await rpc(request.SerializeToString(), metadata=metadata, timeout=10)
        return out

    async def code(self, method: str, request: Any, key: str | None = None,
                   service: str = "tessera.v1.FeatureStore") -> tuple[str, str]:
        """(status code name, details) of a call expected to fail."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.call(method, request, key, service)
        return info.value.code().name, info.value.details() or ""


def _serve(service: FeatureStoreService, auth: Authenticator,
           scenario: Callable[[Calls], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(handlers(service, auth))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await scenario(Calls(channel))
        finally:
            await server.stop(None)

    return asyncio.run(run())


def _put(group: str, rid: str, n: int = 1) -> pb.PutRecordRequest:
    return pb.PutRecordRequest(feature_group_name=group,
                               record=to_record({"id": rid, "ts": 1.0, "n": n}))


def _puts(group: str, *rids: str) -> pb.PutRecordsRequest:
    return pb.PutRecordsRequest(feature_group_name=group, records=[
        to_record({"id": rid, "ts": 1.0, "n": 1}) for rid in rids])


def _get(group: str, rid: str, token: str = "") -> pb.GetRecordRequest:
    return pb.GetRecordRequest(feature_group_name=group, record_identifier=rid,
                               consistent_after=token)


def _delete(group: str, rid: str) -> pb.DeleteRecordRequest:
    return pb.DeleteRecordRequest(feature_group_name=group, record_identifier=rid,
                                  event_time="2.0")


@pytest.fixture
def audit_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[Any]]:
    """This process's audit log, in a file of the test's (what `audit.configure` opens)."""
    path = tmp_path / "audit.log"
    monkeypatch.setattr(audit, "_current", audit.AuditLog(path))
    return lambda: [json.loads(line) for line in path.read_text().splitlines()]


def test_every_rpc_without_credentials_is_unauthenticated(service: FeatureStoreService) -> None:
    async def scenario(c: Calls) -> list[tuple[str, str]]:
        return [
            await c.code("PutRecord", _put("users_a", "u1")),
            await c.code("PutRecords", _puts("users_a", "u1")),
            await c.code("GetRecord", _get("users_a", "u1")),
            await c.code("BatchGetRecord", pb.BatchGetRecordRequest()),
            await c.code("DeleteRecord", _delete("users_a", "u1")),
            await c.code("Echo", pb.EchoRequest(payload=b"x"), service="tessera.v1.Diagnostics"),
            await c.code("GetRecord", _get("users_a", "u1"), key="nope"),
        ]

    results = _serve(service, TableAuthenticator(KEYS), scenario)
    assert results[:6] == [("UNAUTHENTICATED", "no credentials: send authorization: Bearer <key>")
                           ] * 6
    assert results[6] == ("UNAUTHENTICATED", "unknown API key")


def test_echo_answers_any_authenticated_caller(service: FeatureStoreService) -> None:
    async def scenario(c: Calls) -> bytes:
        return await c.call("Echo", pb.EchoRequest(payload=b"ping"), key="writer",
                            service="tessera.v1.Diagnostics")

    assert pb.EchoResponse.FromString(
        _serve(service, TableAuthenticator(KEYS), scenario)).payload == b"ping"


def test_reader_reads_and_is_denied_writes_with_an_audit_line(
    service: FeatureStoreService, audit_lines: Callable[[], list[Any]],
) -> None:

    async def scenario(c: Calls) -> tuple[Any, ...]:
        await c.call("PutRecord", _put("users_a", "u1", 7), key="admin")
        got = pb.GetRecordResponse.FromString(
            await c.call("GetRecord", _get("users_a", "u1"), key="reader"))
        return (from_record(got.record),
                await c.code("PutRecord", _put("users_a", "u2"), key="reader"),
                await c.code("PutRecords", _puts("users_a", "u2"), key="reader"),
                await c.code("DeleteRecord", _delete("users_a", "u1"), key="reader"))

    record, put, puts, delete = _serve(service, TableAuthenticator(KEYS), scenario)
    assert record == {"id": "u1", "ts": 1.0, "n": 7}
    for code, details in (put, puts, delete):
        assert code == "PERMISSION_DENIED"
        assert details.startswith(
            "'reader' lacks the permission write on feature group 'users_a'; request id ")
    lines = audit_lines()
    assert [(x["principal"], x["action"], x["group"], x["outcome"], x["reason"])
            for x in lines] == [
        ("reader", m, "users_a", "denied",
         "'reader' lacks the permission write on feature group 'users_a'")
        for m in ("PutRecord", "PutRecords", "DeleteRecord")
    ]
    # The caller's message names the request id of its audit line.
    assert [d.rsplit(" ", 1)[1] for _, d in (put, puts, delete)] == [
        x["request_id"] for x in lines]


def test_writer_writes_and_is_denied_reads(service: FeatureStoreService) -> None:
    async def scenario(c: Calls) -> tuple[Any, ...]:
        put = pb.PutRecordResponse.FromString(
            await c.call("PutRecord", _put("items", "i1"), key="writer"))
        puts = pb.PutRecordsResponse.FromString(
            await c.call("PutRecords", _puts("items", "i2", "i3"), key="writer"))
        delete = pb.DeleteRecordResponse.FromString(
            await c.call("DeleteRecord", _delete("items", "i1"), key="writer"))
        return (put.applied, puts.written, delete.applied,
                await c.code("GetRecord", _get("items", "i2"), key="writer"),
                pb.GetRecordResponse.FromString(
                    await c.call("GetRecord", _get("items", "i2"), key="admin")).HasField(
                        "record"))

    put, written, deleted, get, admin_reads = _serve(service, TableAuthenticator(KEYS), scenario)
    assert (put, written, deleted, admin_reads) == (True, 2, True, True)
    assert get[0] == "PERMISSION_DENIED"
    assert "'writer' lacks the permission read on feature group 'items'" in get[1]


def test_glob_permissions_and_unknown_groups_reveal_nothing(service: FeatureStoreService) -> None:
    async def scenario(c: Calls) -> tuple[Any, ...]:
        await c.call("PutRecord", _put("users_b", "u1"), key="users")
        return (
            pb.GetRecordResponse.FromString(
                await c.call("GetRecord", _get("users_b", "u1"), key="users")).HasField("record"),
            await c.code("PutRecord", _put("items", "i1"), key="users"),
            await c.code("GetRecord", _get("items", "i1"), key="users"),
            # A group that does not exist: denied, not NOT_FOUND, when the glob excludes it...
            await c.code("GetRecord", _get("nope", "x"), key="users"),
            # ... and NOT_FOUND only to a caller who may read it.
            await c.code("GetRecord", _get("users_zz", "x"), key="users"),
        )

    found, put, get, unknown, readable_unknown = _serve(
        service, TableAuthenticator(KEYS), scenario)
    assert found
    assert put[0] == get[0] == unknown[0] == "PERMISSION_DENIED"
    assert "'users' lacks the permission read on feature group 'nope'" in unknown[1]
    assert readable_unknown[0] == "NOT_FOUND"


def test_batch_get_record_denies_per_item_and_reads_the_other_groups(
    service: FeatureStoreService, audit_lines: Callable[[], list[Any]],
) -> None:
    request = pb.BatchGetRecordRequest(identifiers=[
        pb.BatchGetRecordIdentifier(feature_group_name="users_a", record_identifiers=["u1"]),
        pb.BatchGetRecordIdentifier(feature_group_name="items", record_identifiers=["i1", "i2"]),
        pb.BatchGetRecordIdentifier(feature_group_name="users_b", record_identifiers=["u9"]),
    ])

    async def scenario(c: Calls) -> pb.BatchGetRecordResponse:
        await c.call("PutRecord", _put("users_a", "u1"), key="admin")
        await c.call("PutRecord", _put("items", "i1"), key="admin")
        return pb.BatchGetRecordResponse.FromString(
            await c.call("BatchGetRecord", request, key="users"))

    response = _serve(service, TableAuthenticator(KEYS), scenario)
    assert [(r.feature_group_name, r.record_identifier) for r in response.records] == [
        ("users_a", "u1")]
    assert [(e.feature_group_name, e.record_identifier, e.error_code)
            for e in response.errors] == [("items", "i1", "PERMISSION_DENIED"),
                                          ("items", "i2", "PERMISSION_DENIED")]
    assert "'users' lacks the permission read on feature group 'items'" in (
        response.errors[0].error_message)
    assert [(x["principal"], x["action"], x["group"]) for x in audit_lines()] == [
        ("users", "BatchGetRecord", "items")]


def test_a_denied_read_with_a_token_is_refused_before_any_wait(
    service: FeatureStoreService,
) -> None:
    async def scenario(c: Calls) -> tuple[str, str]:
        # A token far ahead of the store: a permitted reader would wait for it.
        token = encode_token(10**12)
        return await c.code("GetRecord", _get("users_a", "u1", token=token), key="writer")

    assert _serve(service, TableAuthenticator(KEYS), scenario)[0] == "PERMISSION_DENIED"


def test_with_authentication_off_no_credentials_are_needed(service: FeatureStoreService) -> None:
    async def scenario(c: Calls) -> tuple[bool, bool]:
        put = pb.PutRecordResponse.FromString(await c.call("PutRecord", _put("items", "i1")))
        got = pb.GetRecordResponse.FromString(
            await c.call("GetRecord", _get("items", "i1"), key="whatever"))
        return put.applied, got.HasField("record")

    assert _serve(service, OPEN_ACCESS, scenario) == (True, True)


def test_put_records_off_the_compiled_path_checks_the_same_permission(
    service: FeatureStoreService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tessera.server import put_batch

    monkeypatch.setattr(put_batch, "scan", lambda data: None)  # the per-record path

    async def scenario(c: Calls) -> tuple[Any, ...]:
        written = pb.PutRecordsResponse.FromString(
            await c.call("PutRecords", _puts("users_a", "u1", "u2"), key="users")).written
        return written, await c.code("PutRecords", _puts("items", "i1"), key="users")

    written, denied = _serve(service, TableAuthenticator(KEYS), scenario)
    assert written == 2
    assert denied[0] == "PERMISSION_DENIED"
    assert "'users' lacks the permission write on feature group 'items'" in denied[1]
