"""The clients' credentials and TLS options (client/_security.py): the API key on every gRPC call
(a real channel to an in-process servicer that checks it) and on every HTTP request, its
default from $TESSERA_API_KEY, UNAUTHENTICATED / PERMISSION_DENIED raised as their own errors and
never retried, and the options' precise errors. Real handshakes: tests/integration/test_tls.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest

from tessera.client import (
    AsyncFeatureStoreClient,
    FeatureStoreClient,
    InvalidRequestError,
    PermissionDeniedError,
    RetryPolicy,
    UnauthenticatedError,
    _admin,
)
from tessera.client._security import client_security
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc
from tests.certs import make_certs

GOOD, READER = "tsk_good", "tsk_reader"


class KeyCheckingStore(feature_store_pb2_grpc.FeatureStoreServicer):
    """Reads need GOOD or READER, writes GOOD; records the authorization metadata of each call."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def _key(self, context: grpc.ServicerContext) -> str | None:
        auth = dict(context.invocation_metadata()).get("authorization")
        self.seen.append(auth)
        if auth is None or not auth.startswith("Bearer "):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no API key")
        key = auth.removeprefix("Bearer ")
        if key not in (GOOD, READER):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        return key

    def GetRecord(self, request: pb.GetRecordRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]  # noqa: N802
        self._key(context)
        record = pb.Record(features=[pb.FeatureValue(feature_name="clicks", int_value=3)])
        return pb.GetRecordResponse(record=record)

    def PutRecord(self, request: pb.PutRecordRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]  # noqa: N802
        if self._key(context) != GOOD:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"permission 'write' on feature group '{request.feature_group_name}' "
                          "is needed")
        return pb.PutRecordResponse(applied=True)


@pytest.fixture
def store() -> Iterator[tuple[KeyCheckingStore, str]]:
    servicer = KeyCheckingStore()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    feature_store_pb2_grpc.add_FeatureStoreServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


FAST = RetryPolicy(retries=3, initial_backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)


def test_api_key_goes_with_every_grpc_call(store: tuple[KeyCheckingStore, str]) -> None:
    servicer, target = store
    with FeatureStoreClient(grpc=target, http=None, api_key=GOOD, retry_policy=FAST) as fs:
        assert fs.get_record("users", "u1") == {"clicks": 3}
        assert fs.put_record("users", {"user_id": "u1"})
    assert servicer.seen == [f"Bearer {GOOD}"] * 2


def test_api_key_defaults_to_the_environment(
    store: tuple[KeyCheckingStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, target = store
    monkeypatch.setenv("TESSERA_API_KEY", READER)
    with FeatureStoreClient(grpc=target, http=None, retry_policy=FAST) as fs:
        fs.get_record("users", "u1")
    with FeatureStoreClient(grpc=target, http=None, api_key=GOOD, retry_policy=FAST) as fs:
        fs.get_record("users", "u1")  # an explicit key wins
    assert servicer.seen == [f"Bearer {READER}", f"Bearer {GOOD}"]


def test_missing_key_is_unauthenticated_and_not_retried(
    store: tuple[KeyCheckingStore, str]
) -> None:
    servicer, target = store
    with (
        FeatureStoreClient(grpc=target, http=None, retry_policy=FAST) as fs,
        pytest.raises(UnauthenticatedError, match="no API key"),
    ):
        fs.get_record("users", "u1")
    assert servicer.seen == [None]


def test_missing_permission_is_permission_denied_and_not_retried(
    store: tuple[KeyCheckingStore, str]
) -> None:
    servicer, target = store
    with (
        FeatureStoreClient(grpc=target, http=None, api_key=READER, retry_policy=FAST) as fs,
        pytest.raises(PermissionDeniedError, match="'write' on feature group 'users'"),
    ):
        fs.put_record("users", {"user_id": "u1"})
    assert len(servicer.seen) == 1


def test_async_client_sends_the_key_and_maps_unauthenticated(
    store: tuple[KeyCheckingStore, str]
) -> None:
    servicer, target = store

    async def calls() -> None:
        async with AsyncFeatureStoreClient(grpc=target, http=None, api_key=GOOD,
                                           retry_policy=FAST) as fs:
            assert await fs.get_record("users", "u1") == {"clicks": 3}
        async with AsyncFeatureStoreClient(grpc=target, http=None, api_key="tsk_revoked",
                                           retry_policy=FAST) as fs:
            with pytest.raises(UnauthenticatedError, match="unknown API key"):
                await fs.get_record("users", "u1")

    asyncio.run(calls())
    assert servicer.seen == [f"Bearer {GOOD}", "Bearer tsk_revoked"]


def test_api_key_goes_with_every_http_request() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != f"Bearer {GOOD}":
            return httpx.Response(401, json={"error": {"code": "UNAUTHENTICATED",
                                                       "message": "unknown API key"}})
        if request.method != "GET":
            return httpx.Response(403, json={"error": {
                "code": "PERMISSION_DENIED", "message": "permission 'admin' is needed"}})
        return httpx.Response(200, json={"feature_groups": []})

    security = client_security(api_key=GOOD)
    transport = _admin.AdminTransport("http://cp", 1.0, 0, transport=httpx.MockTransport(handler),
                                      security=security)
    assert transport.send(_admin.list_feature_groups()) == []
    with pytest.raises(PermissionDeniedError, match="'admin'"):
        transport.send(_admin.delete_feature_group("users"))
    transport.close()
    anonymous = _admin.AdminTransport("http://cp", 1.0, 0,
                                      transport=httpx.MockTransport(handler))
    with pytest.raises(UnauthenticatedError, match="unknown API key"):
        anonymous.send(_admin.list_feature_groups())
    anonymous.close()
    assert seen == [f"Bearer {GOOD}", f"Bearer {GOOD}", None]


def test_an_empty_key_sends_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_API_KEY", GOOD)
    assert client_security(api_key="").grpc_metadata is None
    assert client_security(api_key="").http_headers == {}
    assert client_security().grpc_metadata == (("authorization", f"Bearer {GOOD}"),)


def test_tls_options_are_checked_when_the_client_is_built(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    with pytest.raises(InvalidRequestError, match="needs its key: pass both tls_cert and tls_key"):
        FeatureStoreClient(tls_ca=certs.ca, tls_cert=certs.client.cert)
    with pytest.raises(InvalidRequestError, match=r"cannot read the TLS CA bundle .*nope\.pem"):
        FeatureStoreClient(tls_ca=tmp_path / "nope.pem")
    with pytest.raises(InvalidRequestError, match="not a PEM certificate and its private key"):
        FeatureStoreClient(tls_ca=certs.ca, tls_cert=certs.client.cert,
                           tls_key=certs.other_client.key)
    with pytest.raises(InvalidRequestError, match="is plaintext but TLS options were given"):
        FeatureStoreClient(http="http://tessera.internal:8080", tls_ca=certs.ca)


def test_tls_urls() -> None:
    default = "http://127.0.0.1:8080"
    tls, plain = client_security(tls=True), client_security()
    assert tls.http_url(default, default) == "https://127.0.0.1:8080"
    assert tls.http_url("tessera.internal:8443", default) == "https://tessera.internal:8443"
    assert plain.http_url(default, default) == default
    assert plain.http_url("tessera.internal:8080", default) == "http://tessera.internal:8080"
    assert plain.http_url("https://x:1", default) == "https://x:1"
    assert tls.grpc_credentials() is not None and plain.grpc_credentials() is None


#: What grpcio and httpx report for each failure (seen against real servers, test_tls.py).
_REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
_HANDSHAKE = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
              "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
              "routines:OPENSSL_internal:")


@pytest.mark.parametrize(("tls", "mutual", "message", "http_url", "hint"), [
    (False, False, _REFUSED + "Socket closed", None, "the server may require TLS"),
    (False, False, "RemoteProtocolError: illegal request line", "http://h:1",
     "may require TLS: pass tls_ca=PATH (CLI: --tls-ca) and an https:// URL"),
    (True, False, _HANDSHAKE + "WRONG_VERSION_NUMBER", None, "may not use TLS"),
    (True, False, _HANDSHAKE + "CERTIFICATE_VERIFY_FAILED: certificate has expired", None,
     "not valid now (expired?)"),
    (True, False, "ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
     "https://h:1", "does not chain to the CA bundle"),
    (True, False, _REFUSED + "Socket closed", None, "may require a client certificate"),
    (True, False, "ReadError: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate "
     "required", "https://h:1", "may require a client certificate"),
    (True, True, _REFUSED + "Socket closed", None, "refused the client certificate"),
    (True, True, "ReadError: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca",
     "https://h:1", "refused the client certificate"),
    # No guess: a server that is down, or that closed an established connection.
    (False, False, _REFUSED + "Connection refused", None, ""),
    (False, False, "Socket closed", None, ""),
    (True, False, _REFUSED + "Connection refused", None, ""),
])
def test_connection_failures_say_what_they_most_likely_mean(
    tmp_path: Path, tls: bool, mutual: bool, message: str, http_url: str | None, hint: str
) -> None:
    certs = make_certs(tmp_path) if mutual else None
    security = client_security(
        tls=tls or None, tls_cert=certs.client.cert if certs else None,
        tls_key=certs.client.key if certs else None)
    said = security.connection_hint(message, http_url)
    assert (hint in said) if hint else said == ""


def test_the_repr_shows_no_secret(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    security = client_security(api_key="tsk_secret_value", tls_ca=certs.ca,
                               tls_cert=certs.client.cert, tls_key=certs.client.key)
    key_pem = certs.client.key.read_bytes()
    assert "tsk_secret_value" not in repr(security) and str(key_pem) not in repr(security)
    assert "PRIVATE KEY" not in repr(security)
