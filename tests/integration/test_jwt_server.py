"""JWT / OIDC bearer tokens on a real server (`tessera serve --workers 1 --auth --jwt-jwks URL
--jwt-issuer --jwt-audience`): the issuer's JWKS served over HTTP by this test, tokens signed
with its RSA and EC keys, on both edges (HTTP and gRPC); the refusals, their metric and
their audit lines."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tessera.server.auth.keys import KeyStore
from tests.integration.wire_helpers import rpc_error
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

ISSUER = "https://idp.test"
AUDIENCE = "tessera-prod"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
    return {**json.loads(algo.to_jwk(private.public_key())), "kid": kid, "alg": alg}


JWKS = json.dumps({"keys": [_jwk(RSA_KEY, "r1", "RS256"), _jwk(EC_KEY, "e1", "ES256")]}).encode()


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(JWKS)))
        self.end_headers()
        self.wfile.write(JWKS)

    def log_message(self, *args: Any) -> None:
        pass


def token(key: Any = RSA_KEY, kid: str = "r1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "svc-ranker", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
            "roles": "read:users", **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@dataclass
class JwtServer:
    proc: ServerProcess
    stub: pb_grpc.FeatureStoreStub

    def get(self, path: str, bearer: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.get(self.proc.http_url + path, headers=headers, timeout=30)

    def get_record(self, bearer: str, group: str = "users") -> Any:
        return self.stub.GetRecord(pb.GetRecordRequest(feature_group_name=group,
                                                        record_identifier="u1"),
                                   metadata=(("authorization", f"Bearer {bearer}"),), timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtServer]:
    idp = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    data: Path = tmp_path_factory.mktemp("jwt") / "data"
    admin = KeyStore(data).create("admin", ["admin"]).secret
    proc = ServerProcess(data, workers=1, extra_env={
        "TESSERA_AUTH__ENABLED": "true",
        "TESSERA_AUTH__JWT_JWKS": f"http://127.0.0.1:{idp.server_address[1]}/jwks.json",
        "TESSERA_AUTH__JWT_ISSUER": ISSUER, "TESSERA_AUTH__JWT_AUDIENCE": AUDIENCE,
        "TESSERA_AUTH__JWT_PERMISSIONS_CLAIM": "roles"})
    proc.start(timeout_s=120)  # a busy 2-core machine is slow to start a server
    channel = grpc.insecure_channel(proc.grpc_target)
    try:
        for name in ("users", "payments"):
            resp = httpx.post(f"{proc.http_url}/v1/feature-groups", timeout=30,
                              headers={"authorization": f"Bearer {admin}"}, json={
                "feature_group_name": name, "record_identifier_feature_name": "id",
                "event_time_feature_name": "ts", "feature_definitions": [
                    {"feature_name": "id", "feature_type": "String"},
                    {"feature_name": "ts", "feature_type": "Fractional"}]})
            assert resp.status_code == 201, resp.text
        stub = pb_grpc.FeatureStoreStub(channel)
        stub.PutRecord(pb.PutRecordRequest(feature_group_name="users",
                                           record=to_record({"id": "u1", "ts": 1.0})),
                       metadata=(("authorization", f"Bearer {admin}"),), timeout=30)
        yield JwtServer(proc, stub)
    finally:
        channel.close()
        proc.stop()
        idp.shutdown()
        idp.server_close()


def test_a_valid_token_reads_what_its_claim_allows(server: JwtServer) -> None:
    for t in (token(), token(EC_KEY, "e1", "ES256")):
        listed = server.get("/v1/feature-groups", t)
        assert listed.status_code == 200, listed.text
        assert [g["feature_group_name"] for g in listed.json()["feature_groups"]] == ["users"]
        assert server.get_record(t).record
    denied = rpc_error(lambda: server.get_record(token(), "payments"))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "'svc-ranker' lacks the permission read on feature group 'payments'" in (
        denied.details())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bad", "reason", "message"),
    [
        (lambda: token(exp=int(time.time()) - 300), "expired", "the JWT has expired"),
        (lambda: token(iss="https://evil.test"), "wrong_issuer", "issuer (iss) is not"),
        (lambda: token(aud="other"), "wrong_audience", "audience (aud) is not"),
        (lambda: token(STRANGER), "bad_signature", "does not verify"),
        (lambda: token(roles=["read:users", "root"]), "bad_permissions", "'root' is not"),
    ],
    ids=["expired", "wrong_issuer", "wrong_audience", "bad_signature", "bad_permissions"],
)
def test_refused_tokens_on_both_edges(server: JwtServer, bad: Any, reason: str,
                                      message: str) -> None:
    def failures() -> float:
        text = server.get("/metrics", None).text
        m = re.search(rf'tessera_auth_failures_total\{{[^}}]*reason="{reason}"[^}}]*\}} '
                      r"([0-9.e+]+)", text)
        return float(m.group(1)) if m else 0.0

    before = failures()
    t = bad()
    resp = server.get("/v1/feature-groups", t)
    assert resp.status_code == 401 and message in resp.json()["error"]["message"]
    err = rpc_error(lambda: server.get_record(t))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert message in err.details()  # type: ignore[attr-defined]
    assert failures() == before + 2
    lines = [json.loads(x) for x in (server.proc.data_dir / "audit.log").read_text()
             .splitlines()]
    assert sum(1 for x in lines if str(x.get("reason", "")).startswith(f"{reason}:")) >= 2
    assert t not in (server.proc.data_dir / "audit.log").read_text()
