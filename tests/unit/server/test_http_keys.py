"""The HTTP key routes (server/http_keys.py) on a bare FastAPI app: who may call them, what
they answer, what they audit. The routes behind the real HTTP edge: tests/integration/
test_keys_cli.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tessera.core.errors import TesseraError
from tessera.server.auth import audit
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.keys import KeyIndex, KeyStore
from tessera.server.http_keys import register_key_routes


class _Client:
    """Requests to an ASGI app in process (httpx's ASGI transport), one event loop each."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


def _client(auth: Authenticator) -> _Client:
    app = FastAPI()

    @app.exception_handler(TesseraError)
    async def _error(_: Request, exc: TesseraError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message}}, status_code=exc.http_status)

    register_key_routes(app, auth)
    return _Client(app)


@pytest.fixture
def audit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.log"
    monkeypatch.setattr(audit, "_current", audit.AuditLog(path))
    return path


def test_admin_creates_lists_and_revokes(tmp_path: Path, audit_path: Path) -> None:
    admin = KeyStore(tmp_path, settle_s=0).create("root", ["admin"]).secret
    client = _client(KeyAuthenticator(KeyIndex(tmp_path)))
    as_admin = {"authorization": f"Bearer {admin}"}
    made = client.post("/v1/keys", headers=as_admin,
                       json={"name": "ranker", "permissions": ["read:users_*"]})
    assert made.status_code == 201
    body = made.json()
    assert body["secret"].startswith("tsk_") and body["secret_line"] == body["secret"]
    assert body["key"] == {"name": "ranker", "kind": "api-key", "permissions": ["read:users_*"],
                           "created_at": body["key"]["created_at"], "expires_at": None,
                           "revoked_at": None}
    sig = client.post("/v1/keys", headers=as_admin,
                      json={"name": "boto", "permissions": ["read:*"], "sigv4": True}).json()
    assert sig["secret_line"] == f"{sig['key']['access_key_id']} {sig['secret']}"

    listed = client.get("/v1/keys", headers=as_admin)
    assert [k["name"] for k in listed.json()["keys"]] == ["root", "ranker", "boto"]
    assert body["secret"] not in listed.text and sig["secret"] not in listed.text

    revoked = client.delete("/v1/keys/ranker", headers=as_admin)
    assert revoked.status_code == 200 and revoked.json()["key"]["revoked_at"]
    assert client.delete("/v1/keys/ranker", headers=as_admin).status_code == 404

    lines = [json.loads(x) for x in audit_path.read_text().splitlines()]
    assert [(x["principal"], x["action"], x["key"], x["outcome"]) for x in lines] == [
        ("root", "CreateKey", "ranker", "allowed"), ("root", "CreateKey", "boto", "allowed"),
        ("root", "RevokeKey", "ranker", "allowed"), ("root", "RevokeKey", "ranker", "error")]
    assert body["secret"] not in audit_path.read_text()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"name": "x", "permissions": ["read"]}, "is not read:GLOB, write:GLOB or admin"),
        ({"name": "a b", "permissions": ["admin"]}, "key name 'a b' is not allowed"),
        ({"name": "root", "permissions": ["admin"]}, "a key named 'root' exists"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(
    tmp_path: Path, audit_path: Path, payload: dict[str, object], message: str
) -> None:
    admin = KeyStore(tmp_path, settle_s=0).create("root", ["admin"]).secret
    client = _client(KeyAuthenticator(KeyIndex(tmp_path)))
    answer = client.post("/v1/keys", headers={"authorization": f"Bearer {admin}"}, json=payload)
    assert answer.status_code in (409, 422) and message in answer.json()["error"]["message"]
    assert [k.name for k in KeyStore(tmp_path).list()] == ["root"]


def test_only_an_admin_may_call_them(tmp_path: Path, audit_path: Path) -> None:
    reader = KeyStore(tmp_path, settle_s=0).create("reader", ["read:*"]).secret
    client = _client(KeyAuthenticator(KeyIndex(tmp_path)))
    assert client.get("/v1/keys").status_code == 401  # no edge in front: checked here
    denied = client.post("/v1/keys", headers={"authorization": f"Bearer {reader}"},
                         json={"name": "x", "permissions": ["admin"]})
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == (
        "'reader' lacks the permission admin (managing keys)")
    line = json.loads(audit_path.read_text().splitlines()[-1])
    assert (line["principal"], line["action"], line["key"], line["outcome"]) == (
        "reader", "CreateKey", "x", "denied")
    assert [k.name for k in KeyStore(tmp_path).list()] == ["reader"]


def test_a_server_without_auth_points_to_the_offline_command(audit_path: Path) -> None:
    answer = _client(OPEN_ACCESS).get("/v1/keys")
    assert answer.status_code == 409
    assert "tessera keys create NAME --allow PERM --data-dir DIR" in (
        answer.json()["error"]["message"])
