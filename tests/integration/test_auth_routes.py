"""Every route and every RPC has a declared permission, and a real --auth server enforces it.

Walks every path of `/openapi.json`, every fast route (the SageMaker runtime's are not in the
OpenAPI schema: they are read from the router they register into), every operation of the
SageMaker control plane, and every gRPC method found by server reflection. Each is called with
no credentials (401 / UNAUTHENTICATED, unless declared open; the server protects /metrics), with a key lacking the permission
it declares (403 / PERMISSION_DENIED) and with a key holding it or an admin key (neither). A new
route or RPC without a declared permission fails here: add it to server/http_auth.py RULES (or
sagemaker_control.OPERATION_RULES), and a gRPC method to GRPC_RULES below once
server/grpc_service.py checks it.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tessera.server import http_auth
from tessera.server.auth.keys import KeyStore
from tessera.server.auth.permissions import Action
from tessera.server.http_fast import FastRouter
from tessera.server.sagemaker_control import OPERATION_RULES, SageMakerControl
from tessera.server.sagemaker_runtime import register as register_sagemaker_runtime
from tests.integration.wire_helpers import USERS_FEATURES
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

TARGET = "tbl_target"  # the group every group-scoped call names
SCRATCH = "tbl_scratch"  # what admin calls name: never created, so nothing is changed

#: Every gRPC method: the permission it needs on the request's group, "per_item" (BatchGetRecord:
#: a group the caller may not read is an error per identifier) or "any" (any principal), or
#: "open" (no credentials). Reflection finding a method missing here fails the test.
GRPC_RULES: dict[str, Action | str] = {
    "tessera.v1.FeatureStore/PutRecord": Action.WRITE,
    "tessera.v1.FeatureStore/PutRecords": Action.WRITE,
    "tessera.v1.FeatureStore/GetRecord": Action.READ,
    "tessera.v1.FeatureStore/DeleteRecord": Action.WRITE,
    "tessera.v1.FeatureStore/BatchGetRecord": "per_item",
    "tessera.v1.Diagnostics/Echo": "any",
    "grpc.health.v1.Health/Check": "open",
    "grpc.health.v1.Health/Watch": "open",
    "grpc.health.v1.Health/List": "open",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "open",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "open",
}


@dataclass
class Keys:
    admin: str
    reader: str  # read:tbl_*
    writer: str  # write:tbl_*
    both: str  # read:* and write:*: everything but admin
    nothing: str  # read:zzz_*: a valid key that may do nothing here


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Keys]]:
    data: Path = tmp_path_factory.mktemp("auth_routes") / "data"
    store = KeyStore(data)
    keys = Keys(*(store.create(name, perms).secret for name, perms in (
        ("root", ["admin"]), ("reader", ["read:tbl_*"]), ("writer", ["write:tbl_*"]),
        ("both", ["read:*", "write:*"]), ("nothing", ["read:zzz_*"]))))
    proc = ServerProcess(data, extra_env={"TESSERA_AUTH__ENABLED": "true",
                                          "TESSERA_AUTH__PROTECT_METRICS": "true"})
    proc.start(timeout_s=90)
    with httpx.Client(base_url=proc.http_url, timeout=10,
                      headers={"authorization": f"Bearer {keys.admin}"}) as http:
        made = http.post("/v1/feature-groups", json={
            "feature_group_name": TARGET, "record_identifier_feature_name": "user_id",
            "event_time_feature_name": "ts", "feature_definitions": USERS_FEATURES})
        assert made.status_code == 201, made.text
    yield proc, keys
    proc.stop()


def _openapi_routes(http_url: str, admin: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{http_url}/openapi.json", timeout=10).json()  # open: documentation
    # /docs can authorize: every call takes a bearer token, but the probes
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert schema["security"] == [{"apiKey": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/v1/feature-groups"]["get"]
    return sorted((method.upper(), path) for path, ops in schema["paths"].items()
                  for method in ops)


def _sagemaker_runtime_routes() -> dict[tuple[str, str], http_auth.Rule | None]:
    router = FastRouter()
    handler = types.SimpleNamespace(**{name: None for name in (
        "get_record", "put_record", "delete_record", "update_record", "list_records",
        "batch_get_record", "batch_write_record")})
    register_sagemaker_runtime(router, handler)  # type: ignore[arg-type]
    return router.rules()


def _filled(path: str, rule: http_auth.Rule) -> str:
    group = TARGET if rule.kind == "group" or "{FeatureGroupName}" in path else SCRATCH
    return (path.replace("{name}", group if path.startswith("/v1/feature-groups") else "nobody")
            .replace("{group}", group).replace("{FeatureGroupName}", group)
            .replace("{record_id}", "r1").replace("{feature}", "clicks"))


def _call(http: httpx.Client, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    body = None if method in ("GET", "DELETE") else b"{}"
    return http.request(method, path, headers=headers, content=body)


def test_every_http_route_declares_a_permission_and_gets_it_enforced(
    secured: tuple[ServerProcess, Keys],
) -> None:
    proc, keys = secured
    routes = {route: http_auth.rule_for(*route)
              for route in _openapi_routes(proc.http_url, keys.admin)}
    routes |= _sagemaker_runtime_routes()
    undeclared = sorted(route for route, rule in routes.items() if rule is None)
    assert not undeclared, f"routes without a permission in server/http_auth.py: {undeclared}"
    assert ("GET", "/v1/feature-groups/{group}/records/{record_id}") in routes  # fast routes
    assert ("POST", "/BatchGetRecord") in routes
    checked = 0
    http = httpx.Client(base_url=proc.http_url, timeout=30)
    for (method, template), rule in sorted(routes.items()):
        assert rule is not None
        path = _filled(template, rule)
        where = f"{method} {path} ({rule.describe()})"
        anon = _call(http, method, path, None)
        if rule is http_auth.METRICS:  # this server protects /metrics: any principal
            assert anon.status_code == 401, (where, anon.text)
            assert _call(http, method, path, keys.nothing).status_code == 200, where
            continue
        if not rule.needs_principal:
            assert anon.status_code not in (401, 403), (where, anon.text)
            continue
        assert anon.status_code == 401, (where, anon.text)
        if rule.kind == "group":
            lacking = keys.writer if rule.action is Action.READ else keys.reader
            holding = keys.reader if rule.action is Action.READ else keys.writer
        elif rule.kind == "admin":
            lacking, holding = keys.both, keys.admin
        elif "{FeatureGroupName}" in template:  # one group, checked once resolved
            lacking = keys.writer if rule.action is Action.READ else keys.reader
            holding = keys.reader if rule.action is Action.READ else keys.writer
        else:  # any principal; what it shows or does is per group
            lacking, holding = None, keys.nothing
        if lacking is not None:
            denied = _call(http, method, path, lacking)
            assert denied.status_code == 403, (where, denied.text)
            assert "lacks the permission" in denied.text
        for token in (holding, keys.admin):
            allowed = _call(http, method, path, token)
            assert allowed.status_code not in (401, 403), (where, allowed.text)
        checked += 1
    http.close()
    assert checked >= 20


def test_every_sagemaker_control_operation_declares_a_permission() -> None:
    operations = SageMakerControl(registry=None).operations  # type: ignore[arg-type]
    assert set(OPERATION_RULES) == set(operations)


def _grpc_methods(target: str) -> dict[str, Any]:
    """Every method reflection lists: full name -> (its descriptor, request class)."""
    channel = grpc.insecure_channel(target)
    try:
        db = ProtoReflectionDescriptorDatabase(channel)  # open: no credentials
        pool = descriptor_pool.DescriptorPool(db)
        out = {}
        for service in db.get_services():
            for method in pool.FindServiceByName(service).methods:
                out[f"{service}/{method.name}"] = method
        return out
    finally:
        channel.close()


def _grpc_request(method: Any) -> Any:
    request = message_factory.GetMessageClass(method.input_type)()
    fields = method.input_type.fields_by_name
    if "feature_group_name" in fields:
        request.feature_group_name = TARGET
    if "record_identifier" in fields:
        request.record_identifier = "r1"
    if "identifiers" in fields:
        request.identifiers.add(feature_group_name=TARGET, record_identifiers=["r1"])
    return request


def _grpc_call(channel: grpc.Channel, name: str, method: Any, token: str | None) -> Any:
    call = channel.unary_unary(f"/{name}", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=message_factory.GetMessageClass(
                                   method.output_type).FromString)
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    try:
        return call(_grpc_request(method), metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()


def test_every_grpc_method_declares_a_permission_and_gets_it_enforced(
    secured: tuple[ServerProcess, Keys],
) -> None:
    proc, keys = secured
    methods = _grpc_methods(proc.grpc_target)
    unknown = sorted(set(methods) - set(GRPC_RULES))
    assert not unknown, f"gRPC methods without a declared permission: {unknown}"
    refused = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    with grpc.insecure_channel(proc.grpc_target) as channel:
        for name, method in sorted(methods.items()):
            rule = GRPC_RULES[name]
            if method.client_streaming or method.server_streaming:
                assert rule == "open", name  # streaming: health Watch, reflection
                continue
            anon = _grpc_call(channel, name, method, None)
            if rule == "open":
                assert anon not in refused, name
                continue
            assert anon == grpc.StatusCode.UNAUTHENTICATED, (name, anon)
            if isinstance(rule, Action):
                lacking = keys.writer if rule is Action.READ else keys.reader
                holding = keys.reader if rule is Action.READ else keys.writer
                assert _grpc_call(channel, name, method, lacking) == (
                    grpc.StatusCode.PERMISSION_DENIED), name
            else:
                holding = keys.nothing
            for token in (holding, keys.admin):
                assert _grpc_call(channel, name, method, token) not in refused, (name, token)
            if rule == "per_item":  # a group the caller may not read: an error per identifier
                answer = _grpc_call(channel, name, method, keys.writer)
                assert [e.feature_group_name for e in answer.errors] == [TARGET], name
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
