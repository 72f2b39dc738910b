"""The HTTP fast path's router (server/http_fast.py), driven as an ASGI app: matching, fall
through, bodies and their limit, errors, metrics. The real server serves it in
tests/integration/test_rest_runtime.py."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tessera.core.errors import FeatureGroupNotFoundError
from tessera.server import metrics
from tessera.server.http_fast import (
    FastRequest,
    FastResponse,
    FastRouter,
    Message,
    json_response,
)


class _Fallback:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"fallback"})


def _call(
    router: FastRouter, method: str, raw_path: str, body: bytes | list[bytes] = b"",
    headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b"",
) -> tuple[int, dict[bytes, bytes], bytes]:
    chunks = body if isinstance(body, list) else [body]
    incoming: list[Message] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": raw_path, "raw_path": raw_path.encode(),
             "query_string": query, "headers": headers or []}
    asyncio.run(router(scope, receive, send))
    start, end = sent
    return start["status"], dict(start["headers"]), end["body"]


def _echo(req: FastRequest) -> FastResponse:
    return json_response(200, {"route": req.route, "params": req.params,
                               "q": req.query_one("q"), "body": req.body.decode()})


def _router(**kw: Any) -> tuple[FastRouter, _Fallback]:
    fallback = _Fallback()
    router = FastRouter(fallback, **kw)
    router.add("GET", "/v1/groups/{group}/records/{record_id}", _echo)
    router.add("POST", "/v1/groups/{group}/records:batchGet", _echo)
    return router, fallback


def test_exact_template_match_gives_decoded_params_and_query() -> None:
    router, fallback = _router()
    status, headers, body = _call(router, "GET", "/v1/groups/users/records/a%2Fb%20c",
                                  query=b"q=x%20y&q=z")
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert msgspec.json.decode(body) == {
        "route": "/v1/groups/{group}/records/{record_id}",
        "params": {"group": "users", "record_id": "a/b c"}, "q": "x y", "body": ""}
    assert fallback.paths == []


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/v1/groups/users/records/1"),        # another method: FastAPI answers 405
    ("GET", "/v1/groups/users/records/1/x"),      # more segments
    ("GET", "/v1/groups/users/records/"),         # an empty parameter
    ("GET", "/v1/groups/users/Records/1"),        # literals match case-sensitively
    ("POST", "/v1/groups/users/records:batchget"),
    ("GET", "/healthz"),
])
def test_everything_not_matched_falls_through(method: str, path: str) -> None:
    router, fallback = _router()
    assert _call(router, method, path)[2] == b"fallback"
    assert fallback.paths == [path]


def test_body_arrives_whole_from_several_messages() -> None:
    router, _ = _router()
    _, _, body = _call(router, "POST", "/v1/groups/g/records:batchGet", [b"ab", b"", b"cd"])
    assert msgspec.json.decode(body)["body"] == "abcd"


def test_oversized_body_is_413_by_declared_length_and_by_bytes_read() -> None:
    router, _ = _router(max_body_bytes=10)
    status, _, body = _call(router, "POST", "/v1/groups/g/records:batchGet", b"x",
                            headers=[(b"content-length", b"11")])
    assert status == 413
    assert msgspec.json.decode(body)["error"]["code"] == "TooLarge"
    status, _, body = _call(router, "POST", "/v1/groups/g/records:batchGet", [b"x" * 6] * 2)
    assert status == 413 and b"at most 10" in body
    assert _call(router, "POST", "/v1/groups/g/records:batchGet", b"x" * 10)[0] == 200


def test_errors_map_to_tessera_bodies_and_unexpected_ones_hide_the_traceback() -> None:
    router = FastRouter(_Fallback())

    async def missing(req: FastRequest) -> FastResponse:
        raise FeatureGroupNotFoundError(req.params["g"])

    def broken(_: FastRequest) -> FastResponse:
        raise ValueError("secret detail")

    router.add("GET", "/missing/{g}", missing)
    router.add("GET", "/broken", broken)
    status, _, body = _call(router, "GET", "/missing/users")
    assert status == 404
    assert msgspec.json.decode(body) == {
        "error": {"code": "NotFound", "message": "feature group 'users' does not exist"}}
    status, _, body = _call(router, "GET", "/broken")
    assert status == 500 and b"secret" not in body and b"request id" in body


def test_a_route_can_answer_errors_in_its_own_shape() -> None:
    router = FastRouter(_Fallback())

    def refuse(_: FastRequest) -> FastResponse:
        raise FeatureGroupNotFoundError("g")

    def aws(_: FastRequest, exc: Exception) -> FastResponse:
        return FastResponse(400, [(b"x-amzn-errortype", b"ValidationError")], str(exc).encode())

    router.add("POST", "/aws", refuse, errors=aws, max_body_bytes=2)
    assert _call(router, "POST", "/aws")[:2] == (400, {
        b"x-amzn-errortype": b"ValidationError", b"content-length": b"32"})
    status, _, body = _call(router, "POST", "/aws", b"xyz")  # too large: the same mapper
    assert status == 400 and b"at most 2" in body


def test_response_headers_and_metrics_per_route_template() -> None:
    router, _ = _router(response_headers=[(b"x-tessera-pid", b"42")])
    template = "/v1/groups/{group}/records/{record_id}"

    def count() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "tessera_http_requests_total",
            {"method": "GET", "route": template, "status": "200"})
        return value or 0.0

    before = count()
    _, headers, _ = _call(router, "GET", "/v1/groups/g/records/1")
    _call(router, "GET", "/v1/groups/g/records/2")
    assert headers[b"x-tessera-pid"] == b"42"
    assert count() == before + 2
    assert (metrics.REGISTRY.get_sample_value(
        "tessera_http_request_duration_seconds_count", {"method": "GET", "route": template})
        or 0) >= 2


def test_bad_templates_are_refused() -> None:
    router = FastRouter()
    with pytest.raises(ValueError, match="whole segment"):
        router.add("GET", "/v1/{group}:batchGet", _echo)
    with pytest.raises(ValueError, match="start with"):
        router.add("GET", "v1/x", _echo)


def test_responses_that_fall_through_carry_the_response_headers_too() -> None:
    router, _ = _router(response_headers=[(b"x-tessera-pid", b"42")])
    status, headers, body = _call(router, "GET", "/healthz")
    assert (status, headers[b"x-tessera-pid"], body) == (299, b"42", b"fallback")


def test_a_route_without_a_body_does_not_wait_for_one() -> None:
    router = FastRouter(_Fallback())
    router.add("GET", "/nobody", _echo, body=False)
    received: list[Message] = []

    async def receive() -> Message:  # would block forever if awaited
        received.append({})
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/nobody", "raw_path": b"/nobody",
             "query_string": b"", "headers": []}
    asyncio.run(asyncio.wait_for(router(scope, receive, send), 5))
    assert received == [] and sent[0]["status"] == 200
    assert msgspec.json.decode(sent[1]["body"])["body"] == ""


def test_fastapi_requests_are_counted_per_route_template_by_the_router() -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/things/{thing}")
    async def thing(thing: str) -> dict[str, str]:
        return {"thing": thing}

    router = FastRouter(app)

    def count(route: str, status: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "tessera_http_requests_total",
            {"method": "GET", "route": route, "status": status}) or 0.0

    before, missing = count("/things/{thing}", "200"), count("unmatched", "404")
    status, _, body = _call(router, "GET", "/things/a")
    assert (status, msgspec.json.decode(body)) == (200, {"thing": "a"})
    assert _call(router, "GET", "/nothing/here")[0] == 404
    assert count("/things/{thing}", "200") == before + 1
    assert count("unmatched", "404") == missing + 1
