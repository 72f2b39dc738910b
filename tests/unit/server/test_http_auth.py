"""The HTTP edge's authentication and route rules (server/http_fast.py, server/http_auth.py),
driven as ASGI with an authenticator of the test's own. Real servers with real keys:
tests/integration/test_auth_http.py and test_auth_routes.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from tessera.core.errors import UnauthenticatedError
from tessera.server.auth.permissions import LOCAL, Action, Principal, parse_permissions
from tessera.server.http_auth import RULES, needs, per_item
from tessera.server.http_fast import FastRequest, FastResponse, FastRouter, Message, json_response

READER = Principal("reader", parse_permissions(["read:users_*"]))
ADMIN = Principal("root", parse_permissions(["admin"]))


class _Tokens:
    """Bearer `reader` / `root`; SigV4 (any signature) is `reader` once it has seen the body."""

    enabled = True

    def __init__(self) -> None:
        self.sigv4_bodies: list[bytes] = []

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None:
            raise UnauthenticatedError("no credentials", "missing")
        found = {"Bearer reader": READER, "Bearer root": ADMIN}.get(authorization)
        if found is None:
            raise UnauthenticatedError("the API key is not known", "unknown_key")
        return found

    def authenticate_sigv4(self, method: str, raw_path: str, query: str,
                           headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Principal:
        self.sigv4_bodies.append(body)
        return READER


class _App:
    """The fallback: answers what it saw (the principal, the body)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        principal = scope.get("tessera.principal")
        body = msgspec.json.encode({"principal": principal.name if principal else None,
                                    "body": message.get("body", b"").decode()})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _call(router: FastRouter, method: str, path: str, authorization: str | None = None,
          body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes, int]:
    """(status, headers, body, how many times the request body was read)."""
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers}
    asyncio.run(router(scope, receive, send))
    start, end = sent
    return start["status"], dict(start["headers"]), end["body"], reads


def _who(req: FastRequest) -> FastResponse:
    return json_response(200, {"principal": req.principal.name, "body": req.body.decode()})


def _router(protect_metrics: bool = False, auth: Any = None) -> FastRouter:
    router = FastRouter(_App(), auth=auth or _Tokens(), protect_metrics=protect_metrics)
    router.add("PUT", "/v1/groups/{group}", _who, rule=needs(Action.WRITE, "group"))
    router.add("GET", "/v1/groups/{group}", _who, body=False, rule=needs(Action.READ, "group"))
    router.add("POST", "/Batch", _who, rule=per_item(Action.READ))
    router.add("GET", "/v1/undeclared", _who, body=False)
    return router


def test_auth_off_serves_every_request_as_local_without_looking_at_credentials() -> None:
    router = FastRouter(_App())
    router.add("GET", "/v1/groups/{group}", _who, body=False)
    status, _, body, _ = _call(router, "GET", "/v1/groups/x", "Bearer nonsense")
    assert status == 200 and msgspec.json.decode(body)["principal"] == LOCAL.name
    assert _call(router, "GET", "/v1/feature-groups")[0] == 200  # the app, no principal needed


def test_a_fast_route_refuses_a_bearer_failure_before_reading_the_body() -> None:
    status, headers, body, reads = _call(_router(), "PUT", "/v1/groups/users_a", None, b"{}")
    assert status == 401 and reads == 0
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert msgspec.json.decode(body)["error"]["code"] == "Unauthenticated"
    assert _call(_router(), "PUT", "/v1/groups/users_a", "Bearer stolen")[0] == 401


def test_a_fast_route_checks_its_rule_on_the_path_parameter() -> None:
    router = _router()
    status, _, body, _ = _call(router, "GET", "/v1/groups/users_a", "Bearer reader")
    assert status == 200 and msgspec.json.decode(body)["principal"] == "reader"
    status, _, body, _ = _call(router, "GET", "/v1/groups/other", "Bearer reader")
    assert status == 403
    message = msgspec.json.decode(body)["error"]["message"]
    assert "'reader' lacks the permission read on feature group 'other'" in message
    assert "request id" in message
    assert _call(router, "PUT", "/v1/groups/users_a", "Bearer reader", b"{}")[0] == 403
    assert _call(router, "PUT", "/v1/groups/other", "Bearer root", b"{}")[0] == 200
    assert _call(router, "POST", "/Batch", "Bearer reader", b"{}")[0] == 200  # checked per item


def test_an_undeclared_route_is_refused_to_all_but_an_admin() -> None:
    router = _router()
    assert _call(router, "GET", "/v1/undeclared", "Bearer reader")[0] == 403
    assert _call(router, "GET", "/v1/undeclared", "Bearer root")[0] == 200


def test_a_sigv4_request_is_verified_over_its_body_and_the_app_still_reads_it() -> None:
    tokens = _Tokens()
    router = _router(auth=tokens)
    signed = "AWS4-HMAC-SHA256 Credential=TSK/20261129/us-east-1/sagemaker/aws4_request, x"
    status, _, body, _ = _call(router, "POST", "/", signed, b'{"MaxResults": 3}')
    assert status == 200
    assert msgspec.json.decode(body) == {"principal": "reader", "body": '{"MaxResults": 3}'}
    assert tokens.sigv4_bodies == [b'{"MaxResults": 3}']
    status, _, body, _ = _call(router, "POST", "/Batch", signed, b"[1]")
    assert status == 200 and tokens.sigv4_bodies[-1] == b"[1]"


def test_the_sagemaker_control_plane_is_refused_in_aws_shape() -> None:
    status, headers, body, _ = _call(_router(), "POST", "/", None, b"{}")
    assert status == 401
    assert headers[b"x-amzn-errortype"] == b"AccessForbidden"
    assert msgspec.json.decode(body)["__type"] == "AccessForbidden"
    assert _call(_router(), "POST", "/", "Bearer stolen", b"{}")[0] == 403


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs", "/metrics"])
def test_probes_docs_and_metrics_are_open(path: str) -> None:
    status, _, body, _ = _call(_router(), "GET", path)
    assert status == 200 and msgspec.json.decode(body)["principal"] is None


def test_protected_metrics_need_a_principal() -> None:
    router = _router(protect_metrics=True)
    assert _call(router, "GET", "/metrics")[0] == 401
    assert msgspec.json.decode(_call(router, "GET", "/metrics", "Bearer reader")[2])[
        "principal"] == "reader"
    assert _call(router, "GET", "/healthz")[0] == 200


def test_every_rule_of_a_group_route_names_a_parameter_of_its_template() -> None:
    for (method, template), rule in RULES.items():
        if rule.kind == "group":
            assert "{" + str(rule.param) + "}" in template, (method, template)


def test_a_websocket_is_closed_with_auth_on() -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(_router()({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
