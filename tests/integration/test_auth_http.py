"""Authentication and per-group authorization at the HTTP edge (server/http_auth.py) against a
real server started with --auth and keys made offline in its data directory (both layouts):
Tessera's REST runtime and control plane with bearer keys, the SageMaker runtime and control
plane with boto3 signing with a `--sigv4` key, the refusals' shapes and the audit lines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import jwt
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric import rsa

from tessera.server.auth.keys import KeyStore
from tests.integration.wire_helpers import USERS_FEATURES
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

ALLOWED = "users_a"  # the reader and writer keys' groups: users_*
OTHER = "other_b"
SM_ALLOWED = "users_sm"
SM_OTHER = "other_sm"
ISSUER = "https://issuer.test"


@dataclass
class Secured:
    server: ServerProcess
    admin: str
    reader: str
    writer: str
    revoked: str
    sigv4: tuple[str, str]  # access key id, secret: read:users_* and write:users_*
    signing_key: rsa.RSAPrivateKey  # the JWT issuer's (its public key is the server's JWKS)

    def http(self, token: str | None) -> httpx.Client:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.server.http_url, headers=headers, timeout=10)

    def boto(self, service: str, key: tuple[str, str] | None = None) -> Any:
        access, secret = key or self.sigv4
        config = Config(retries={"max_attempts": 1},
                        signature_version=UNSIGNED if key == ("", "") else None)
        return boto3.client(service, endpoint_url=self.server.http_url, region_name="eu-west-1",
                            aws_access_key_id=access, aws_secret_access_key=secret,
                            config=config)

    def jwt(self, permissions: list[str], expires_in_s: float = 600) -> str:
        claims = {"sub": "svc-ranker", "iss": ISSUER, "aud": "tessera",
                  "exp": int(time.time() + expires_in_s), "permissions": permissions}
        return jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": "k1"})

    def audit_lines(self) -> list[dict[str, Any]]:
        path = self.server.data_dir / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()]


def _group(name: str) -> dict[str, Any]:
    return {"feature_group_name": name, "record_identifier_feature_name": "user_id",
            "event_time_feature_name": "ts", "feature_definitions": USERS_FEATURES}


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def secured(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    data: Path = tmp_path_factory.mktemp("auth_http") / "data"
    store = KeyStore(data)
    admin = store.create("ops", ["admin"]).secret
    reader = store.create("inference", ["read:users_*"]).secret
    writer = store.create("ingest", ["write:users_*"]).secret
    revoked = store.create("leaver", ["admin"]).secret
    store.revoke("leaver")
    sig = store.create("boto", ["read:users_*", "write:users_*"], sigv4=True)
    assert sig.info.access_key_id is not None
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwks = data.parent / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    proc = ServerProcess(data, workers=request.param, extra_env={
        "TESSERA_AUTH__ENABLED": "true", "TESSERA_AUTH__JWT_JWKS": str(jwks),
        "TESSERA_AUTH__JWT_ISSUER": ISSUER, "TESSERA_AUTH__JWT_AUDIENCE": "tessera",
    }).start(timeout_s=90)
    secured = Secured(proc, admin, reader, writer, revoked, (sig.info.access_key_id, sig.secret),
                      signing_key)
    with secured.http(admin) as http:
        for name in (ALLOWED, OTHER, SM_ALLOWED, SM_OTHER):
            assert http.post("/v1/feature-groups", json=_group(name)).status_code == 201
    yield secured
    proc.stop()


def test_probes_are_open_and_other_routes_need_credentials(secured: Secured) -> None:
    with secured.http(None) as anon:
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        assert anon.get("/metrics").status_code == 200  # auth.protect_metrics is off
        for method, path in (("GET", "/v1/feature-groups"),
                             ("GET", f"/v1/feature-groups/{ALLOWED}/records/u1"),
                             ("PUT", f"/v1/feature-groups/{ALLOWED}/records")):
            resp = anon.request(method, path, json={"record": {}})
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.json()["error"]["code"] == "Unauthenticated"
    for token, word in (("tsk_not-a-key", "not known"), (secured.revoked, "revoked")):
        with secured.http(token) as http:
            resp = http.get("/v1/feature-groups")
            assert resp.status_code == 401
            assert word in resp.json()["error"]["message"]
            assert token not in resp.text  # a secret is never echoed


def test_rest_runtime_needs_read_and_write_on_the_group(secured: Secured) -> None:
    record = {"user_id": "u1", "ts": 1764410400.0, "clicks": 3}
    with secured.http(secured.writer) as writer, secured.http(secured.reader) as reader:
        put = writer.put(f"/v1/feature-groups/{ALLOWED}/records", json={"record": record})
        assert put.status_code == 200, put.text
        token = put.json()["write_token"]
        denied = writer.put(f"/v1/feature-groups/{OTHER}/records", json={"record": record})
        assert denied.status_code == 403
        assert denied.json()["error"] == {
            "code": "PermissionDenied", "message": denied.json()["error"]["message"]}
        assert ("'ingest' lacks the permission write on feature group 'other_b'"
                in denied.json()["error"]["message"])
        # write does not imply read
        assert writer.get(f"/v1/feature-groups/{ALLOWED}/records/u1").status_code == 403
        got = reader.get(f"/v1/feature-groups/{ALLOWED}/records/u1",
                         params={"consistent_after": token})
        assert got.status_code == 200, got.text
        assert got.json()["record"]["clicks"] == 3
        assert reader.get(f"/v1/feature-groups/{OTHER}/records/u1").status_code == 403
        batch = reader.post(f"/v1/feature-groups/{OTHER}/records:batchGet",
                            json={"record_ids": ["u1"]})
        assert batch.status_code == 403
        assert reader.put(f"/v1/feature-groups/{ALLOWED}/records",
                          json={"record": record}).status_code == 403
        assert reader.delete(f"/v1/feature-groups/{ALLOWED}/records/u1",
                             params={"event_time": "2026-11-29T11:00:00Z"}).status_code == 403
    lines = secured.audit_lines()
    assert any(line["principal"] == "ingest" and line["group"] == OTHER
               and line["outcome"] == "denied" for line in lines)


def test_control_plane_shows_readable_groups_and_changes_need_admin(secured: Secured) -> None:
    with secured.http(secured.reader) as reader:
        names = [g["feature_group_name"] for g in reader.get("/v1/feature-groups").json()[
            "feature_groups"]]
        assert ALLOWED in names and SM_ALLOWED in names
        assert OTHER not in names and SM_OTHER not in names
        assert reader.get(f"/v1/feature-groups/{ALLOWED}").status_code == 200
        assert reader.get(f"/v1/feature-groups/{OTHER}").status_code == 403
        created = reader.post("/v1/feature-groups", json=_group("users_new"))
        assert created.status_code == 403
        assert "lacks the permission admin" in created.json()["error"]["message"]
        assert reader.delete(f"/v1/feature-groups/{ALLOWED}").status_code == 403
        assert reader.patch(f"/v1/feature-groups/{ALLOWED}",
                            json={"description": "x"}).status_code == 403
    with secured.http(secured.admin) as admin:
        listed = admin.get("/v1/feature-groups").json()["feature_groups"]
        assert {ALLOWED, OTHER} <= {g["feature_group_name"] for g in listed}
        assert admin.post("/v1/feature-groups", json=_group("users_tmp")).status_code == 201
        assert admin.delete("/v1/feature-groups/users_tmp").status_code == 204
    lines = secured.audit_lines()
    assert any(line["principal"] == "ops" and line["action"] == "DeleteFeatureGroup"
               and line["group"] == "users_tmp" and line["outcome"] == "allowed"
               for line in lines)
    assert any(line["principal"] == "inference" and line["outcome"] == "denied"
               and line["group"] == OTHER for line in lines)


def test_sagemaker_runtime_verifies_sigv4_and_checks_each_group(secured: Secured) -> None:
    runtime = secured.boto("sagemaker-featurestore-runtime")
    record = [{"FeatureName": "user_id", "ValueAsString": "s1"},
              {"FeatureName": "ts", "ValueAsString": "1764410400.0"},
              {"FeatureName": "clicks", "ValueAsString": "7"}]
    runtime.put_record(FeatureGroupName=SM_ALLOWED, Record=record)
    got = runtime.get_record(FeatureGroupName=SM_ALLOWED, RecordIdentifierValueAsString="s1")
    assert {"FeatureName": "clicks", "ValueAsString": "7"} in got["Record"]
    with pytest.raises(ClientError) as denied:
        runtime.get_record(FeatureGroupName=SM_OTHER, RecordIdentifierValueAsString="s1")
    assert denied.value.response["Error"]["Code"] == "AccessForbidden"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "read on feature group 'other_sm'" in denied.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:  # a group that does not exist: no hint of it
        runtime.get_record(FeatureGroupName="absent", RecordIdentifierValueAsString="s1")
    assert missing.value.response["Error"]["Code"] == "AccessForbidden"
    batch = runtime.batch_get_record(Identifiers=[
        {"FeatureGroupName": SM_ALLOWED, "RecordIdentifiersValueAsString": ["s1"]},
        {"FeatureGroupName": SM_OTHER, "RecordIdentifiersValueAsString": ["s1", "s2"]}])
    assert [r["RecordIdentifierValueAsString"] for r in batch["Records"]] == ["s1"]
    assert [(e["FeatureGroupName"], e["ErrorCode"]) for e in batch["Errors"]] == [
        (SM_OTHER, "AccessForbidden"), (SM_OTHER, "AccessForbidden")]
    written = runtime.batch_write_record(Entries=[
        {"FeatureGroupName": SM_ALLOWED, "Record": record},
        {"FeatureGroupName": SM_OTHER, "Record": record}])
    assert [e["ErrorCode"] for e in written["Errors"]] == ["AccessForbidden"]

    wrong = secured.boto("sagemaker-featurestore-runtime", (secured.sigv4[0], "x" * 40))
    with pytest.raises(ClientError) as bad:
        wrong.get_record(FeatureGroupName=SM_ALLOWED, RecordIdentifierValueAsString="s1")
    assert bad.value.response["Error"]["Code"] == "AccessForbidden"
    assert bad.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "signature does not match" in bad.value.response["Error"]["Message"]
    unsigned = secured.boto("sagemaker-featurestore-runtime", ("", ""))
    with pytest.raises(ClientError) as anon:
        unsigned.get_record(FeatureGroupName=SM_ALLOWED, RecordIdentifierValueAsString="s1")
    assert anon.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert anon.value.response["Error"]["Code"] == "AccessForbidden"


def test_sagemaker_control_plane_verifies_sigv4_and_filters_groups(secured: Secured) -> None:
    control = secured.boto("sagemaker")
    names = {s["FeatureGroupName"] for s in
             control.list_feature_groups(MaxResults=100)["FeatureGroupSummaries"]}
    assert SM_ALLOWED in names and ALLOWED in names
    assert SM_OTHER not in names and OTHER not in names
    found = control.search(Resource="FeatureGroup", MaxResults=100)["Results"]
    assert OTHER not in {r["FeatureGroup"]["FeatureGroupName"] for r in found}
    assert control.describe_feature_group(FeatureGroupName=SM_ALLOWED)[
        "FeatureGroupName"] == SM_ALLOWED
    for call, kwargs in ((control.describe_feature_group, {"FeatureGroupName": SM_OTHER}),
                         (control.delete_feature_group, {"FeatureGroupName": SM_ALLOWED})):
        with pytest.raises(ClientError) as denied:
            call(**kwargs)
        assert denied.value.response["Error"]["Code"] == "AccessForbidden"
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    wrong = secured.boto("sagemaker", (secured.sigv4[0], "y" * 40))
    with pytest.raises(ClientError) as bad:
        wrong.list_feature_groups()
    assert bad.value.response["Error"]["Code"] == "AccessForbidden"
    # A group stays after the refused delete.
    with secured.http(secured.admin) as admin:
        assert admin.get(f"/v1/feature-groups/{SM_ALLOWED}").status_code == 200


def test_a_jwt_of_the_issuer_is_a_principal_with_the_permissions_of_its_claim(
    secured: Secured,
) -> None:
    with secured.http(secured.jwt(["read:users_*"])) as http:
        names = {g["feature_group_name"] for g in http.get("/v1/feature-groups").json()[
            "feature_groups"]}
        assert ALLOWED in names and OTHER not in names
        denied = http.get(f"/v1/feature-groups/{OTHER}")
        assert denied.status_code == 403
        assert "'svc-ranker' lacks the permission read" in denied.json()["error"]["message"]
    with secured.http(secured.jwt(["read:users_*"], expires_in_s=-600)) as http:
        expired = http.get("/v1/feature-groups")
        assert expired.status_code == 401
        assert "expired" in expired.json()["error"]["message"]
