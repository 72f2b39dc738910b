"""The HTTP fast path: a pure-ASGI router in front of the FastAPI app for the hot runtime routes.

FastAPI pays, per request, for its routing, dependency solving, pydantic validation and
Starlette's request/response objects; a runtime route (a record read or write) needs none of
that: its body is parsed once by msgspec (or protobuf) and validated by the same code as the
gRPC API. `FastRouter` matches a request's method and path template exactly, hands the handler
the raw body bytes and sends back the bytes it returns; a request that matches no fast route
(the control plane, /metrics, /docs, ...) goes on to the FastAPI app unchanged.

Registering routes (server/rest_runtime.py, server/sagemaker_runtime.py)::

    async def get_thing(req: FastRequest) -> FastResponse:
        name = req.params["name"]                 # path parameter, percent-decoded
        limit = req.query_one("limit")            # str | None (first value)
        accept = req.header(b"accept")            # bytes | None (header names lower-case)
        doc = msgspec.json.decode(req.body)       # the raw body (bytes)
        return json_response(200, {"name": name})  # or FastResponse(status, headers, body)

    router.add("GET", "/v1/things/{name}", get_thing)
    router.add("POST", "/Batch", batch, errors=aws_errors, max_body_bytes=1 << 20)
    router.add("DELETE", "/v1/things/{name}", delete_thing, body=False)

- `template`: literal segments and whole-segment parameters `{name}`; a parameter matches one
  non-empty segment (an encoded `/`, `%2F`, stays inside it). Literals compare exactly (case
  matters; `records:batchGet` is one literal segment). The first route registered for a
  method and path wins; a path that matches with another method falls through to FastAPI (which
  answers 404 / 405 as before).
- `handler(req)` returns a `FastResponse` (status, headers, body), or an awaitable of one: a read
  that needs no I/O can answer without a coroutine. `content-length` is added by the router.
  `body=False`: the route takes no body (the router does not wait for one; `req.body` is b"").
- `errors(req, exc)` turns an exception raised by the handler into the response (default:
  `tessera_errors`: a TesseraError's status and Tessera's body `{"error": {"code", "message"}}`;
  a disk or I/O failure 503; anything else 500 with a request id, traceback to the log). A
  body over `max_body_bytes` (default: the router's) is refused before the handler runs with
  `BodyTooLargeError` (HTTP 413), through the same `errors`, so each API answers in its own
  error shape.
- Who may call (server/http_auth.py): with authentication on, every request but the open ones
  (probes, docs, /metrics unless protected) is authenticated here, once, before any route runs:
  `Authorization: Bearer <API key or JWT>`, or a SigV4 signature (verified over the raw path,
  query, headers and the body, which the router then hands on unchanged); 401 otherwise
  (through the route's `errors`: each API answers in its own shape). The principal is
  `FastRequest.principal` and `scope["tessera.principal"]`; a fast route's rule (`rule=`,
  default its entry in http_auth.RULES) is checked before its handler, the app's by its own
  dependency (server/http_app.py).
- Every request, fast or not, is counted and timed (metrics.HTTP_REQUESTS and HTTP_LATENCY,
  labelled with the method and the route template: the fast route's, or the one FastAPI
  matched) and carries the router's `response_headers` (x-tessera-pid in a serving process of
  --workers N).

Wiring: server/front.py builds the router (with the serving process's response headers and
body limit) and the `FeatureStoreService` the gRPC servicer uses, and passes both to
`create_app` (server/http_app.py), which makes its FastAPI app the router's `app`. Each runtime
module has a `register(router, ...)` (called by create_app for the SageMaker runtime, by
front.py for rest_runtime) that also lists its paths in the FastAPI OpenAPI schema. The HTTP
server (granian, server/roles.py HttpRole) serves the router.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

import msgspec

from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.server import http_auth, metrics
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.permissions import LOCAL, Principal
from tessera.server.storage_health import storage_failure

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: The `code` of Tessera's HTTP error body, by status (the FastAPI app uses the same).
ERROR_CODES = {422: "InvalidRequest", 404: "NotFound", 409: "Conflict", 503: "Unavailable",
               413: "TooLarge", 504: "Timeout", 401: "Unauthenticated", 403: "PermissionDenied"}
JSON: Headers = [(b"content-type", b"application/json")]
PROTOBUF: Headers = [(b"content-type", b"application/x-protobuf")]
#: The default largest request body of a fast route (a route may set its own).
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

_encode_json = msgspec.json.Encoder().encode


class BodyTooLargeError(InvalidRequestError):
    """The request body is larger than the route accepts: HTTP 413."""

    http_status = 413


class FastRequest:
    """What a fast handler gets: the method, the matched route template, its path parameters,
    the raw query string, the raw headers (names lower-case, as ASGI gives them), the body and
    the caller (`principal`: LOCAL with authentication off; server/http_auth.py)."""

    __slots__ = ("method", "route", "params", "query_string", "headers", "body", "_query",
                 "principal")

    def __init__(self, method: str, route: str, params: dict[str, str], query_string: bytes,
                 headers: Headers, body: bytes) -> None:
        self.method, self.route, self.params = method, route, params
        self.query_string, self.headers, self.body = query_string, headers, body
        self._query: dict[str, list[str]] | None = None
        self.principal: Principal = LOCAL

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def query(self) -> dict[str, list[str]]:
        """The query parameters, each with its values in order (blank values kept)."""
        if self._query is None:
            out: dict[str, list[str]] = {}
            if self.query_string:
                for key, value in parse_qsl(self.query_string.decode("latin-1"),
                                            keep_blank_values=True):
                    out.setdefault(key, []).append(value)
            self._query = out
        return self._query

    def query_one(self, name: str) -> str | None:
        """The first value of query parameter `name`, or None."""
        if not self.query_string:
            return None
        values = self.query.get(name)
        return values[0] if values else None


class FastResponse(NamedTuple):
    status: int
    headers: Headers
    body: bytes


Handler = Callable[[FastRequest], "FastResponse | Awaitable[FastResponse]"]
ErrorMapper = Callable[[FastRequest, Exception], FastResponse]


def json_response(status: int, content: Any, headers: Headers | None = None) -> FastResponse:
    """`content` as JSON (msgspec: dicts, lists, str, int, float, bool, None, bytes as base64)."""
    return FastResponse(status, JSON if headers is None else JSON + headers,
                        _encode_json(content))


def error_response(status: int, message: str) -> FastResponse:
    """Tessera's HTTP error: `{"error": {"code": ..., "message": ...}}` with `status` (a 401
    also names the scheme it wants: `WWW-Authenticate: Bearer`)."""
    # A message may quote a lone surrogate sent in JSON: escaped, it still encodes as UTF-8.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"code": ERROR_CODES.get(status, "Internal"), "message": message}}
    return FastResponse(status, _CHALLENGE if status == 401 else JSON, _encode_json(body))


_CHALLENGE: Headers = [*JSON, (b"www-authenticate", b'Bearer realm="tessera"')]


def tessera_errors(req: FastRequest, exc: Exception) -> FastResponse:
    """The default `ErrorMapper`: Tessera's error body with the status of the error class."""
    if isinstance(exc, TesseraError):
        return error_response(exc.http_status, exc.message)
    request_id = uuid.uuid4().hex[:16]
    log.error("%s %s failed (request id %s)", req.method, req.route, request_id, exc_info=exc)
    if storage_failure(exc):  # disk full, I/O error: retryable, like a StorageError
        return error_response(503, f"storage unavailable (disk full or I/O error); retry later; "
                                   f"request id {request_id}")
    return error_response(500, f"internal error; request id {request_id}")


class _Route:
    __slots__ = ("method", "template", "segments", "handler", "errors", "max_body_bytes",
                 "body", "latency", "counters", "rule", "operation")

    def __init__(self, method: str, template: str, handler: Handler, errors: ErrorMapper,
                 max_body_bytes: int, body: bool, rule: http_auth.Rule | None) -> None:
        if not template.startswith("/"):
            raise ValueError(f"route template {template!r} must start with '/'")
        segments: list[str | None] = []
        names: list[str] = []
        for seg in template[1:].split("/"):
            if seg.startswith("{") and seg.endswith("}") and seg[1:-1].isidentifier():
                names.append(seg[1:-1])
                segments.append(None)
            elif "{" in seg or "}" in seg:
                raise ValueError(f"route template {template!r}: a parameter is a whole segment")
            else:
                segments.append(seg)
        self.method, self.template, self.handler = method, template, handler
        it = iter(names)
        #: (literal, None) or (None, parameter name) per segment.
        self.segments = tuple((s, None if s is not None else next(it)) for s in segments)
        self.errors, self.max_body_bytes, self.body = errors, max_body_bytes, body
        #: Who may call it (None: undeclared, only an admin), and its name in audit lines.
        self.rule, self.operation = rule, f"{method} {template}"
        self.latency = metrics.HTTP_LATENCY.labels(method, template)
        self.counters: dict[int, Any] = {}

    def match(self, parts: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for part, (literal, name) in zip(parts, self.segments, strict=True):
            if name is None:
                if part != literal:
                    return None
            elif part:
                params[name] = unquote(part) if "%" in part else part
            else:
                return None
        return params

    def count(self, status: int) -> None:
        counter = self.counters.get(status)
        if counter is None:
            counter = self.counters[status] = metrics.HTTP_REQUESTS.labels(
                self.method, self.template, str(status))
        counter.inc()


class FastRouter:
    """The ASGI app: fast routes first, then `app` (see the module docstring)."""

    def __init__(self, app: ASGIApp | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 response_headers: Headers | None = None,
                 auth: Authenticator = OPEN_ACCESS, protect_metrics: bool = False) -> None:
        #: Where every request no fast route matches goes (create_app sets the FastAPI app).
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.response_headers: Headers = list(response_headers or [])
        #: Resolves each request's credentials to a principal (server/auth).
        self.auth = auth
        #: Paths the app answers without credentials (server/http_auth.py: OPEN, METRICS).
        self.open_paths = (http_auth.OPEN_PATHS if protect_metrics
                           else http_auth.OPEN_PATHS | {"/metrics"})
        # By (method, number of path segments): a request looks only at routes of its shape.
        self._routes: dict[tuple[str, int], list[_Route]] = {}

    def add(self, method: str, template: str, handler: Handler, *,
            errors: ErrorMapper = tessera_errors, max_body_bytes: int | None = None,
            body: bool = True, rule: http_auth.Rule | None = None) -> None:
        """Answer `method template` with `handler` (see the module docstring). `rule`: who may
        call it; default: the route's entry in http_auth.RULES (none: only an admin)."""
        method = method.upper()
        route = _Route(method, template, handler, errors,
                       self.max_body_bytes if max_body_bytes is None else max_body_bytes, body,
                       rule or http_auth.rule_for(method, template))
        self._routes.setdefault((route.method, len(route.segments)), []).append(route)

    def routes(self) -> list[tuple[str, str]]:
        """The fast routes, as (method, template), in registration order per shape."""
        return [(r.method, r.template) for rs in self._routes.values() for r in rs]

    def rules(self) -> dict[tuple[str, str], http_auth.Rule | None]:
        """Each fast route's rule (None: undeclared)."""
        return {(r.method, r.template): r.rule for rs in self._routes.values() for r in rs}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            path = raw.decode("latin-1") if raw else scope["path"]
            parts = path[1:].split("/")
            candidates = self._routes.get((scope["method"], len(parts)))
            if candidates:
                for route in candidates:
                    params = route.match(parts)
                    if params is not None:
                        await self._serve(route, params, scope, receive, send)
                        return
        if self.app is None:
            raise RuntimeError("the fast router has no app to pass unmatched requests to")
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self.auth.enabled:
                # No route takes a WebSocket; with --auth none is let through unchecked.
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if self.auth.enabled and scope["path"] not in self.open_paths:
            await self._fall_through_authenticated(self.app, scope, receive, send)
            return
        await self._fall_through(self.app, scope, receive, send)

    def _authenticate(self, scope: Scope, authorization: bytes | None,
                      body: bytes | None) -> Principal:
        """The caller of a request: a SigV4 signature (over the raw path, query, headers and
        `body`) or a bearer token; UnauthenticatedError."""
        if authorization is not None and authorization.startswith(_SIGV4):
            raw = scope.get("raw_path") or scope["path"].encode()
            return self.auth.authenticate_sigv4(
                scope["method"], raw.decode("latin-1"),
                scope.get("query_string", b"").decode("latin-1"), scope["headers"],
                body or b"")
        return self.auth.authenticate(
            None if authorization is None else authorization.decode("latin-1"))

    async def _fall_through_authenticated(self, app: ASGIApp, scope: Scope, receive: Receive,
                                          send: Send) -> None:
        """A request for the app with authentication on: its principal at
        scope["tessera.principal"] (the app's routes check their rule: server/http_app.py), or
        401 here. A SigV4-signed request's body is read first (the signature covers it) and
        handed to the app as it came."""
        headers: Headers = scope["headers"]
        authorization = _header(headers, b"authorization")
        aws = _is_aws(scope, authorization)
        body: bytes | None = None
        try:
            if authorization is not None and authorization.startswith(_SIGV4):
                body = await _read_body(headers, receive, self.max_body_bytes)
                if body is None:  # the client went away
                    return
            principal = self._authenticate(scope, authorization, body)
        except Exception as exc:
            response = (http_auth.aws_error_response(exc) if aws
                        else tessera_errors(_request_of(scope), exc))
            await self._fall_through(_responder(response), scope, receive, send)
            return
        scope["tessera.principal"] = principal
        if body is not None:
            receive = _replay(body, receive)
        await self._fall_through(app, scope, receive, send)

    async def _fall_through(self, app: ASGIApp, scope: Scope, receive: Receive,
                            send: Send) -> None:
        """`app` answers, counted and timed per route template like the fast routes (pure ASGI:
        Starlette's BaseHTTPMiddleware cost a task and a response wrapper per request). The
        template is the route FastAPI matched (Starlette leaves it in the scope); "unmatched"
        otherwise."""
        start = time.perf_counter()
        status = 500  # the app raised before answering
        extra = self.response_headers

        async def sender(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await app(scope, receive, sender)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - start)

    async def _serve(self, route: _Route, params: dict[str, str], scope: Scope,
                     receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        headers: Headers = scope["headers"]
        req = FastRequest(route.method, route.template, params, scope.get("query_string", b""),
                          headers, b"")
        authorization: bytes | None = None
        signed = False
        try:
            if self.auth.enabled:
                # Bearer: refused before the body is read; SigV4: the signature covers it.
                authorization = _header(headers, b"authorization")
                signed = authorization is not None and authorization.startswith(_SIGV4)
                if not signed:
                    req.principal = self._authenticate(scope, authorization, None)
            if route.body:
                body = await _read_body(headers, receive, route.max_body_bytes)
                if body is None:  # the client went away
                    return
                req.body = body
            if self.auth.enabled:
                if signed:
                    req.principal = self._authenticate(scope, authorization, req.body)
                scope["tessera.principal"] = req.principal
                if route.rule is None:
                    http_auth.undeclared(route.method, route.template, req.principal)
                else:
                    route.rule.check(req.principal, params, route.operation)
            result = route.handler(req)
            response = result if isinstance(result, tuple) else await result
        except Exception as exc:
            try:
                response = route.errors(req, exc)
            except Exception as inner:
                response = tessera_errors(req, inner)
        status, out_headers, out = response
        all_headers = [*out_headers, *self.response_headers,
                       (b"content-length", str(len(out)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": out})
        route.count(status)
        route.latency.observe(time.perf_counter() - start)


_SIGV4 = b"AWS4-HMAC-SHA256 "


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _is_aws(scope: Scope, authorization: bytes | None) -> bool:
    """Whether a request for the app is the SageMaker control plane's (answered in AWS's
    error shape): `POST /`, or SigV4-signed."""
    return scope["path"] == "/" or (authorization is not None and
                                    authorization.startswith(_SIGV4))


def _request_of(scope: Scope) -> FastRequest:
    return FastRequest(scope["method"], scope["path"], {}, scope.get("query_string", b""),
                       scope["headers"], b"")


def _responder(response: tuple[int, Headers, bytes]) -> ASGIApp:
    """An ASGI app that answers `response` (the router's 401 for the app's routes)."""

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, body = response
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return respond


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, then waits on the client's (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _read_body(headers: Headers, receive: Receive, limit: int) -> bytes | None:
    """The request body; BodyTooLargeError past `limit` bytes (refused on its content-length
    before reading it, when it has one); None when the client disconnected. A refused body is
    read and dropped first (up to _DISCARD_MAX bytes), so the client, still sending it, reads
    the 413 instead of a reset connection."""
    for key, value in headers:
        if key == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidRequestError(f"content-length {value!r} is not a number") from None
            if declared > limit:
                await _discard(receive, declared)
                raise BodyTooLargeError(
                    f"the request body is {declared} bytes; at most {limit} are accepted")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if chunk:
            size += len(chunk)
            if size > limit:
                if more:
                    await _discard(receive, size)
                raise BodyTooLargeError(
                    f"the request body is over {limit} bytes; at most {limit} are accepted")
            chunks.append(chunk)
        if not more:
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


#: The most of a refused body read (and dropped) before answering 413; past it, the answer
#: goes out at once (and the client may see its connection reset while it sends).
_DISCARD_MAX = 64 * 1024 * 1024


async def _discard(receive: Receive, size: int) -> None:
    """Read and drop the rest of a body whose size (so far, or declared) is `size`."""
    while size <= _DISCARD_MAX:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
