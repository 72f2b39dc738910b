"""The HTTP routes of keys (`tessera keys ... --http URL`): admin only.

- `POST /v1/keys` `{"name": ..., "permissions": ["read:GLOB", ...], "sigv4": false,
  "expires_in_s": null}` -> 201
  `{"key": {...}, "secret": ..., "secret_line": ...}`: the secret, this once (for a SigV4 key
  `secret_line` is `ACCESS_KEY_ID SECRET`);
- `GET /v1/keys` -> `{"keys": [...]}`: every key, revoked ones too, never a secret;
- `DELETE /v1/keys/{name}` -> `{"key": {...}}`: revoked; every serving process refuses it from
  its next call on (server/auth/keys.py).

The caller is the principal the HTTP edge authenticated (`scope["tessera.principal"]`, set by
server/http_fast.py; LOCAL with authentication off); a request that reached here without one on
a server with `--auth` is authenticated here, so these routes never run unauthenticated. Every
key change, and every refused attempt, is written to the audit log (server/auth/audit.py).
A server without `--auth` keeps no key store in use: its routes answer 409 (make keys with
`tessera keys --data-dir` before starting it with --auth).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tessera.core.errors import ConflictError, PermissionDeniedError
from tessera.server.auth import audit
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.authn import Authenticator
from tessera.server.auth.keys import KeyStore
from tessera.server.auth.permissions import LOCAL, Action, Principal


class KeyRequest(BaseModel):
    """A key to create."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique among the keys not revoked")
    permissions: list[str] = Field(description="read:GLOB, write:GLOB or admin", min_length=1)
    sigv4: bool = Field(False, description="an AWS SigV4 access key id and secret")
    expires_in_s: float | None = Field(
        None, gt=0, description="refused after this many seconds (default: never)")


def register_key_routes(app: FastAPI, auth: Authenticator) -> None:
    """`POST /v1/keys`, `GET /v1/keys`, `DELETE /v1/keys/{name}` on `app`."""
    store = KeyStore(auth.keys.data_dir) if isinstance(auth, KeyAuthenticator) else None

    def admin(request: Request, action: str, key: str | None) -> tuple[KeyStore, Principal, str]:
        # the client's own id (bounded: it goes into the audit log), or one of ours
        request_id = (request.headers.get("x-request-id") or "")[:64] or uuid.uuid4().hex[:16]
        principal = request.scope.get("tessera.principal")
        if not isinstance(principal, Principal):
            principal = (auth.authenticate(request.headers.get("authorization"))
                         if auth.enabled else LOCAL)
        if not principal.can(Action.ADMIN):
            audit.record(principal, action, None, audit.DENIED, request_id,
                         reason="lacks the permission admin", key=key)
            raise PermissionDeniedError(f"'{principal.name}' lacks the permission admin "
                                        "(managing keys)")
        if store is None:
            raise ConflictError(
                "this server runs without --auth, so it uses no keys: make them with `tessera "
                "keys create NAME --allow PERM --data-dir DIR` and start it with --auth")
        return store, principal, request_id

    @app.post("/v1/keys", status_code=201, tags=["keys"])
    async def create_key(body: KeyRequest, request: Request) -> dict[str, Any]:
        """Create an API key (or a SigV4 key); the secret is in this answer only. Admin."""
        keys, principal, request_id = admin(request, "CreateKey", body.name)
        try:
            created = await asyncio.to_thread(keys.create, body.name, body.permissions,
                                              sigv4=body.sigv4, expires_in_s=body.expires_in_s)
        except Exception as exc:
            audit.record(principal, "CreateKey", None, audit.ERROR, request_id,
                         reason=str(exc), key=body.name)
            raise
        audit.record(principal, "CreateKey", None, audit.ALLOWED, request_id, key=body.name)
        return {"key": created.info.to_json(), "secret": created.secret,
                "secret_line": created.secret_line}

    @app.get("/v1/keys", tags=["keys"])
    async def list_keys(request: Request) -> dict[str, Any]:
        """Every key (revoked ones too), without secrets. Admin."""
        keys, _, _ = admin(request, "ListKeys", None)
        return {"keys": [k.to_json() for k in await asyncio.to_thread(keys.list)]}

    @app.delete("/v1/keys/{name}", tags=["keys"])
    async def revoke_key(name: str, request: Request) -> dict[str, Any]:
        """Revoke a key: refused from the next call on, in every serving process. Admin."""
        keys, principal, request_id = admin(request, "RevokeKey", name)
        try:
            info = await asyncio.to_thread(keys.revoke, name)
        except Exception as exc:
            audit.record(principal, "RevokeKey", None, audit.ERROR, request_id,
                         reason=str(exc), key=name)
            raise
        audit.record(principal, "RevokeKey", None, audit.ALLOWED, request_id, key=name)
        return {"key": info.to_json()}
