"""server/sigv4.py against requests signed by botocore's own SigV4Auth, and against the exact
requests a boto3 client sends (captured before they leave the client)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tessera.server.sigv4 import SignatureError, SignedRequest, canonical_uri, verify

KEYS = {"AKIDTESSERA": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
URL = ("http://127.0.0.1:8080/FeatureGroup/arn%3Aaws%3Asagemaker%3Aus-east-1%3A000000000000"
       "%3Afeature-group%2Fusers?RecordIdentifierValueAsString=a%20b%2Bc&FeatureName=z"
       "&FeatureName=a&ExpirationTimeResponse=Enabled")


def signed(method: str = "GET", url: str = URL, body: bytes = b"",
           secret: str = KEYS["AKIDTESSERA"], region: str = "eu-west-1",
           service: str = "sagemaker", headers: dict[str, str] | None = None) -> SignedRequest:
    """A request signed by botocore, as the server receives it (the HTTP client adds Host)."""
    req = AWSRequest(method=method, url=url, data=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
    SigV4Auth(Credentials("AKIDTESSERA", secret), service, region).add_auth(req)
    return as_received(req.method, req.url, req.headers.items(), req.body or b"")


def as_received(method: str, url: str, headers: Any, body: bytes | str) -> SignedRequest:
    parts = urlsplit(url)
    raw = [(k.lower().encode(), v.encode() if isinstance(v, str) else v) for k, v in headers]
    if not any(k == b"host" for k, _ in raw):
        raw.append((b"host", parts.netloc.encode()))
    data = body.encode() if isinstance(body, str) else body
    return SignedRequest(method, parts.path.encode(), parts.query.encode(), raw, data)


def refused(request: SignedRequest, **kwargs: Any) -> str:
    with pytest.raises(SignatureError) as info:
        verify(request, KEYS.get, **kwargs)
    assert info.value.code == "AccessForbidden" and info.value.status == 403
    return info.value.message


def test_a_request_signed_with_the_right_secret_verifies() -> None:
    assert verify(signed(), KEYS.get, service="sagemaker") == "AKIDTESSERA"
    post = signed("POST", "http://localhost/BatchGetRecord", b'{"Identifiers": []}')
    assert verify(post, KEYS.get) == "AKIDTESSERA"


def test_a_wrong_secret_or_an_unknown_key_is_refused() -> None:
    assert "does not match" in refused(signed(secret="not-the-secret"))
    with pytest.raises(SignatureError, match="'AKIDTESSERA' is not known"):
        verify(signed(), {}.get)


def test_a_tampered_body_path_query_or_header_is_refused() -> None:
    body = b'{"Record": [{"FeatureName": "clicks", "ValueAsString": "1"}]}'
    good = signed("PUT", "http://127.0.0.1:8080/FeatureGroup/users", body)
    assert verify(good, KEYS.get) == "AKIDTESSERA"
    assert "does not match" in refused(replace(good, body=body.replace(b"1", b"9")))
    assert "does not match" in refused(replace(good, raw_path=b"/FeatureGroup/admins"))
    assert "does not match" in refused(replace(good, method="DELETE"))
    assert "does not match" in refused(replace(good, query_string=b"x=1"))
    host = [(k, b"evil.example" if k == b"host" else v) for k, v in good.headers]
    assert "does not match" in refused(replace(good, headers=host))


def test_a_declared_payload_hash_must_be_the_bodys() -> None:
    body = b'{"a": 1}'
    good = signed("POST", "http://h/BatchWriteRecord", body,
                  headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    assert verify(good, KEYS.get) == "AKIDTESSERA"
    assert "not the SHA-256 of the body" in refused(replace(good, body=b'{"a": 2}'))
    unsigned = signed("POST", "http://h/BatchWriteRecord", body,
                      headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert "unsigned" in refused(unsigned)


def test_an_expired_or_future_signature_is_refused() -> None:
    request = signed()
    now = time.time()
    assert verify(request, KEYS.get, now_s=now + 299) == "AKIDTESSERA"
    assert "expired" in refused(request, now_s=now + 301)
    assert "from the future" in refused(request, now_s=now - 600)
    assert "expired" in refused(request, now_s=now + 30, max_skew_s=10)


def test_malformed_or_missing_signatures_are_refused_with_reasons() -> None:
    request = signed()
    no_auth = [(k, v) for k, v in request.headers if k != b"authorization"]
    assert "not signed" in refused(replace(request, headers=no_auth))
    garbled = [(k, b"Basic dXNlcjpwYXNz" if k == b"authorization" else v)
               for k, v in request.headers]
    assert "not an AWS4-HMAC-SHA256 signature" in refused(replace(request, headers=garbled))
    assert "for service 'sagemaker', not 's3'" in refused(request, service="s3")
    no_date = [(k, v) for k, v in request.headers if k != b"x-amz-date"]
    assert "x-amz-date" in refused(replace(request, headers=no_date))
    auth = dict(request.headers)[b"authorization"]
    unsigned_host = auth.replace(b"SignedHeaders=content-type;host;x-amz-date",
                                 b"SignedHeaders=content-type;x-amz-date")
    assert unsigned_host != auth
    swapped = [(k, unsigned_host if k == b"authorization" else v) for k, v in request.headers]
    assert "'host' must be signed" in refused(replace(request, headers=swapped))


def test_canonical_uri_removes_dot_segments_and_encodes_again() -> None:
    assert canonical_uri("/a/./b/../c//d/") == "/a/c/d/"
    assert canonical_uri("/FeatureGroup/a%2Fb") == "/FeatureGroup/a%252Fb"
    assert canonical_uri("") == "/"


def test_the_requests_boto3_sends_verify() -> None:
    """Every runtime operation as a real boto3 client sends it (captured before the network)."""
    client = boto3.client(
        "sagemaker-featurestore-runtime", endpoint_url="http://127.0.0.1:8080",
        region_name="us-east-1", aws_access_key_id="AKIDTESSERA",
        aws_secret_access_key=KEYS["AKIDTESSERA"])
    captured: list[SignedRequest] = []

    class Sent(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        captured.append(as_received(request.method, request.url, request.headers.items(),
                                    request.body or b""))
        raise Sent

    client.meta.events.register("before-send", capture)
    record = [{"FeatureName": "user_id", "ValueAsString": "ü/ 1"},
              {"FeatureName": "tags", "ValueAsStringList": ["a b", "c"]}]
    calls = [
        lambda: client.put_record(FeatureGroupName="users", Record=record,
                                  TtlDuration={"Unit": "Days", "Value": 1}),
        lambda: client.get_record(FeatureGroupName="arn:aws:sagemaker:us-east-1:000000000000:"
                                  "feature-group/users", RecordIdentifierValueAsString="ü/ 1+2",
                                  FeatureNames=["b", "a"]),
        lambda: client.delete_record(FeatureGroupName="users", RecordIdentifierValueAsString="x",
                                     EventTime="2026-01-01T00:00:00Z",
                                     TargetStores=["OnlineStore", "OfflineStore"]),
        lambda: client.batch_get_record(Identifiers=[
            {"FeatureGroupName": "users", "RecordIdentifiersValueAsString": ["a"]}]),
        lambda: client.list_records(FeatureGroupName="users", MaxResults=5),
    ]
    for call in calls:
        with pytest.raises(Sent):
            call()
    assert len(captured) == len(calls)
    for request in captured:
        assert verify(request, KEYS.get, service="sagemaker") == "AKIDTESSERA"
        assert "does not match" in refused(replace(request, body=request.body + b" "))
