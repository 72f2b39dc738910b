"""The authenticator of a server with `--auth`: API keys and SigV4 keys from the data
directory's key store (server/auth/keys.py) and, when configured, JWTs (server/auth/jwt.py).

A bearer token is told apart by its form: `tsk_...` is an API key, three dot-separated segments
a JWT. Every failure is an UnauthenticatedError whose `reason` labels
`tessera_auth_failures_total` (missing, malformed, unknown_key, revoked, expired,
bad_signature, wrong_issuer, wrong_audience, bad_permissions, jwt_not_configured: `REASONS`);
messages never repeat a secret.

The hot path (an API key already seen): one dict lookup of the raw header value and a clock
read (the key store is stat'ed for a change at most every 0.1 s, and a revoke returns only
after that: server/auth/keys.py). Resolving a new token costs a SHA-256 and a second lookup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from tessera.core.errors import UnauthenticatedError
from tessera.server import metrics
from tessera.server.auth import audit
from tessera.server.auth.keys import API_KEY_PREFIX, KeyEntry, KeyIndex, iso_time
from tessera.server.auth.permissions import Principal
from tessera.server.sigv4 import SignatureError, SignedRequest, verify

#: Every reason an authentication fails for (the labels of tessera_auth_failures_total).
REASONS = ("missing", "malformed", "unknown_key", "revoked", "expired", "not_yet_valid",
           "bad_signature", "wrong_issuer", "wrong_audience", "bad_permissions",
           "jwt_not_configured")
_CACHE_LIMIT = 4096  # distinct authorization values remembered (only ones that authenticated)

_time = time.time

MISSING = ("no credentials: send 'authorization: Bearer <API key or JWT>' (an API key comes "
           "from `tessera keys create`)")


def _refused(exc: UnauthenticatedError) -> None:
    metrics.AUTH_FAILURES.labels(exc.reason).inc()
    audit.record(None, "authenticate", None, audit.DENIED, reason=f"{exc.reason}: {exc.message}")


class TokenVerifier(Protocol):
    """Verifies a JWT (server/auth/jwt.py): its principal, or UnauthenticatedError."""

    def verify(self, token: str) -> Principal: ...


class KeyAuthenticator:
    """API keys and SigV4 keys of a key store, and JWTs when `jwt` is given."""

    enabled = True

    def __init__(self, keys: KeyIndex, jwt: TokenVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt
        # authorization value -> (principal, the key store snapshot it was resolved in, when
        # the key expires: epoch seconds, infinity for never)
        self._api_keys: dict[str, tuple[Principal, object, float]] = {}
        for reason in REASONS:  # every series exists from the start (0): rate() sees the 1st
            metrics.AUTH_FAILURES.labels(reason)

    def authenticate(self, authorization: str | None) -> Principal:
        cached = self._api_keys.get(authorization) if authorization else None
        if cached is not None and cached[1] is self.keys.current() and _time() < cached[2]:
            return cached[0]
        try:
            return self._authenticate(authorization)
        except UnauthenticatedError as exc:
            _refused(exc)
            raise

    def _authenticate(self, authorization: str | None) -> Principal:
        if authorization is None or not authorization.strip():
            raise UnauthenticatedError(MISSING, reason="missing")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError(
                f"the authorization value is not 'Bearer <API key or JWT>' (scheme "
                f"{scheme[:20]!r})" if scheme.lower() != "bearer" else
                "the authorization value 'Bearer' carries no token", reason="malformed")
        if token.startswith(API_KEY_PREFIX):
            return self._api_key(authorization, token)
        if token.count(".") == 2:
            if self.jwt is None:
                raise UnauthenticatedError(
                    "the bearer token is a JWT, but this server verifies none (no --jwt-jwks); "
                    "use an API key", reason="jwt_not_configured")
            return self.jwt.verify(token)
        raise UnauthenticatedError(
            f"the bearer token is neither a Tessera API key ({API_KEY_PREFIX}...) nor a JWT "
            "(three dot-separated segments)", reason="malformed")

    def _api_key(self, authorization: str, token: str) -> Principal:
        snapshot = self.keys.current()
        found = self.keys.lookup_token(token)
        if found is None:
            raise UnauthenticatedError(
                "the API key is not known to this server (`tessera keys list` shows the keys; "
                "a key is shown once, when it is created)", reason="unknown_key")
        principal = found.principal
        if found.revoked:
            raise UnauthenticatedError(f"the API key '{principal.name}' is revoked",
                                       reason="revoked")
        if found.expired(_time()):
            raise UnauthenticatedError(
                f"the API key '{principal.name}' expired at {iso_time(found.expires_at_s)}",
                reason="expired")
        if len(self._api_keys) >= _CACHE_LIMIT:
            self._api_keys.clear()
        self._api_keys[authorization] = (principal, snapshot, found.expires_at_s)
        return principal

    def authenticate_sigv4(
        self, method: str, raw_path: str, query: str, headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Principal:
        try:
            return self._sigv4(method, raw_path, query, headers, body)
        except UnauthenticatedError as exc:
            _refused(exc)
            raise

    def _sigv4(
        self, method: str, raw_path: str, query: str, headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Principal:
        snapshot = self.keys.current()
        now_s = _time()
        seen: list[KeyEntry | None] = []

        def secret_for(access_key_id: str) -> str | None:
            found = snapshot.by_access_key.get(access_key_id)
            seen.append(found)
            if found is None or found.revoked or found.expired(now_s):
                return None
            return found.secret

        request = SignedRequest(method, raw_path.encode("latin-1"), query.encode("latin-1"),
                                headers, body)
        try:
            access_key_id = verify(request, secret_for)
        except SignatureError as exc:
            entry = seen[-1] if seen else None
            if seen and entry is None:
                raise UnauthenticatedError(exc.message, reason="unknown_key") from None
            if entry is not None and entry.revoked:
                raise UnauthenticatedError(
                    f"the SigV4 access key of '{entry.principal.name}' is revoked",
                    reason="revoked") from None
            if entry is not None and entry.expired(now_s):
                raise UnauthenticatedError(
                    f"the SigV4 access key of '{entry.principal.name}' expired at "
                    f"{iso_time(entry.expires_at_s)}", reason="expired") from None
            if not any(name.lower() == b"authorization" for name, _ in headers):
                raise UnauthenticatedError(exc.message, reason="missing") from None
            reason = "expired" if "expired" in exc.message else "bad_signature"
            raise UnauthenticatedError(exc.message, reason=reason) from None
        return snapshot.by_access_key[access_key_id].principal
