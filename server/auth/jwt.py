"""JWT / OIDC bearer tokens (README: Security): `--jwt-jwks PATH_OR_URL`, `--jwt-issuer`,
`--jwt-audience`, `--jwt-permissions-claim`.

A token is accepted when its signature verifies with a key of the issuer's JWKS (chosen by the
token's `kid`; the only key when the set has one and the token names none), with that key's
own algorithm (RS*/PS*/ES*/EdDSA: a token cannot pick "none" or an HMAC keyed by a public key),
it has `exp` and `sub`, `exp`/`nbf` hold within `LEEWAY_S`, and `iss` / `aud` are the
configured ones (each checked when configured). The principal is `sub` (kind "jwt"); its
permissions are the claim `--jwt-permissions-claim` names (a list of `read:GLOB`, `write:GLOB`,
`admin`, or one space-separated string; a dotted name reaches into nested claims, e.g.
`realm_access.roles`). No claim: no permissions (403 on every call); an entry that is not a
permission: 401 `bad_permissions`.

The JWKS: a file is read at start and again when it changes (checked on a cache miss). A URL is
fetched with PyJWKClient at start (an unreachable issuer is logged, and JWTs are refused with
503 until it answers; API keys keep working) and again, on a thread of its own, once the set is
`JWKS_LIFESPAN_S` old (the serving thread never waits for it). A `kid` not in the set fetches
it on the calling thread, at most once per `REFETCH_COOLDOWN_S` (a rotation is picked up at
once; a stream of made-up kids cannot hammer the issuer nor stall serving).

A verified token is cached until its `exp` (one dict lookup and a clock read per later call):
verifying a signature costs ~30-100 us of CPU. A key removed from the JWKS therefore stops
tokens it signed earlier only when they expire (tokens are short-lived; revoke at the issuer).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet
from jwt.types import Options

from tessera.core.errors import InvalidRequestError, StorageError, UnauthenticatedError
from tessera.server.auth.permissions import Permission, Principal, parse_permission
from tessera.server.settings import AuthSettings

log = logging.getLogger(__name__)

LEEWAY_S = 30.0
JWKS_LIFESPAN_S = 300.0
REFETCH_COOLDOWN_S = 30.0
_CACHE_LIMIT = 4096
#: Asymmetric algorithms only: the JWKS holds public keys.
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})


class JwksSource:
    """The issuer's keys, from a file or a URL (the module docstring)."""

    def __init__(self, location: str, lifespan_s: float = JWKS_LIFESPAN_S) -> None:
        self.location = location
        self.lifespan_s = lifespan_s
        self._lock = threading.Lock()
        self._last_fetch_try = -REFETCH_COOLDOWN_S
        self._fetched_at = 0.0
        self._refreshing = False
        self._client: jwt.PyJWKClient | None = None
        self._file_stamp: tuple[int, int] | None = None
        self._keys: dict[str | None, PyJWK] = {}
        if location.startswith(("http://", "https://")):
            # The set is cached here, not in the client: a refresh runs off the serving thread.
            self._client = jwt.PyJWKClient(location, cache_jwk_set=False, timeout=10)
            try:
                self._fetch()
            except StorageError as exc:  # the issuer down: API keys still work; retried later
                log.warning("%s; JWTs are refused until it can be (retried every %.0f s)",
                            exc.message, REFETCH_COOLDOWN_S)
        else:
            self._load_file()

    def key_for(self, kid: str | None) -> PyJWK:
        """The key a token's `kid` names; UnauthenticatedError(unknown_key) when none."""
        keys = self._current()
        key = keys.get(kid) if kid is not None else None
        if key is None and kid is None and len(keys) == 1:
            key = next(iter(keys.values()))
        if key is None and kid is not None and self._client is not None and self._may_fetch():
            # A key the issuer may have just added: fetched now, at most once per cooldown.
            self._fetch()
            key = self._keys.get(kid)
        if key is None:
            known = ", ".join(sorted(str(k) for k in keys)) or "(none)"
            raise UnauthenticatedError(
                f"the JWT's key id {kid[:100]!r} is not in the issuer's JWKS ({self.location}; key "
                f"ids: {known})" if kid is not None else
                f"the JWT names no key id (kid) and the issuer's JWKS has {len(keys)} keys",
                reason="unknown_key")
        return key

    def _current(self) -> dict[str | None, PyJWK]:
        if self._client is None:
            self._load_file()
            return self._keys
        if not self._keys:  # never fetched: try now (at most once per cooldown)
            if not self._may_fetch():
                raise StorageError(f"the JWT issuer's JWKS at {self.location} cannot be "
                                   f"fetched (retried every {REFETCH_COOLDOWN_S:.0f} s)")
            self._fetch()
        elif time.monotonic() - self._fetched_at > self.lifespan_s:
            self._refresh_in_background()
        return self._keys

    def _fetch(self) -> None:
        client = self._client
        if client is None:  # a file: read by _load_file
            return
        try:
            jwk_set = client.get_jwk_set()
        except jwt.PyJWKClientError as exc:
            raise StorageError(
                f"the JWT issuer's JWKS at {self.location} cannot be fetched: {exc}") from exc
        except jwt.PyJWKSetError as exc:
            raise StorageError(
                f"the JWT issuer's JWKS at {self.location} is not a JSON Web Key Set: {exc}"
            ) from exc
        self._keys = _usable(jwk_set, self.location)
        self._fetched_at = time.monotonic()

    def _refresh_in_background(self) -> None:
        """The set is past its lifespan: fetch it on a thread of its own (the current keys
        keep serving meanwhile; a failure keeps them and retries after the cooldown)."""
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def refresh() -> None:
            try:
                self._fetch()
            except StorageError as exc:
                log.warning("%s; the keys fetched before keep serving", exc.message)
                self._fetched_at = time.monotonic() - self.lifespan_s + REFETCH_COOLDOWN_S
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, name="jwks-refresh", daemon=True).start()

    def _may_fetch(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last_fetch_try < REFETCH_COOLDOWN_S:
                return False
            self._last_fetch_try = now
            return True

    def _load_file(self) -> None:
        path = Path(self.location)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise StorageError(f"the JWKS file {path} cannot be read: {exc}") from exc
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._file_stamp:
            return
        try:
            jwk_set = PyJWKSet.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
            raise StorageError(f"the JWKS file {path} is not a JSON Web Key Set: {exc}") from exc
        self._keys = _usable(jwk_set, str(path))
        self._file_stamp = stamp


def _usable(jwk_set: PyJWKSet, where: str) -> dict[str | None, PyJWK]:
    keys: dict[str | None, PyJWK] = {}
    for key in jwk_set.keys:
        if key.public_key_use not in (None, "sig"):  # an encryption key: never for signatures
            continue
        if key.algorithm_name not in ALGORITHMS:
            log.warning("JWKS %s: key %r (%s) ignored: only asymmetric signatures are accepted",
                        where, key.key_id, key.algorithm_name)
            continue
        keys[key.key_id] = key
    return keys


class JwtVerifier:
    """Verifies bearer JWTs (the module docstring)."""

    def __init__(
        self, jwks: JwksSource, issuer: str | None, audience: str | None,
        permissions_claim: str = "permissions", leeway_s: float = LEEWAY_S,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.claim = permissions_claim
        self.leeway_s = leeway_s
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, exp)
        required = ["exp", "sub"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
        self._options: Options = {"require": required, "verify_aud": bool(audience)}

    @classmethod
    def for_settings(cls, auth: AuthSettings) -> JwtVerifier:
        if not auth.jwt_jwks:
            raise InvalidRequestError("JWT verification needs --jwt-jwks (a file or a URL)")
        for name, value in (("--jwt-issuer", auth.jwt_issuer),
                            ("--jwt-audience", auth.jwt_audience)):
            if not value:
                log.warning("JWTs: no %s: any value of that claim is accepted from tokens "
                            "signed by the JWKS's keys", name)
        return cls(JwksSource(auth.jwt_jwks), auth.jwt_issuer, auth.jwt_audience,
                   auth.jwt_permissions_claim)

    def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise UnauthenticatedError(f"the bearer token is not a JWT: {exc}",
                                       reason="malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise UnauthenticatedError(
                f"the JWT's algorithm {alg!r} is not accepted (asymmetric signatures only: "
                f"{', '.join(sorted(ALGORITHMS))})", reason="bad_signature")
        key = self.jwks.key_for(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name],
                                audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway_s, options=self._options)
        except jwt.PyJWTError as exc:
            raise _refusal(exc, self) from None
        principal = Principal(str(claims["sub"]), self._permissions(claims), kind="jwt")
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def _permissions(self, claims: dict[str, Any]) -> tuple[Permission, ...]:
        value: Any = claims.get(self.claim)
        if value is None and "." in self.claim:
            value = claims
            for part in self.claim.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return ()
        entries = value.split() if isinstance(value, str) else value
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise UnauthenticatedError(
                f"the JWT's claim '{self.claim}' is not a list of permissions (read:GLOB, "
                "write:GLOB, admin) nor a space-separated string of them",
                reason="bad_permissions")
        try:
            return tuple(parse_permission(e) for e in entries)
        except InvalidRequestError as exc:
            raise UnauthenticatedError(f"the JWT's claim '{self.claim}': {exc.message}",
                                       reason="bad_permissions") from None


def _refusal(exc: jwt.PyJWTError, verifier: JwtVerifier) -> UnauthenticatedError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return UnauthenticatedError("the JWT has expired (exp)", reason="expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return UnauthenticatedError("the JWT is not valid yet (nbf / iat in the future)",
                                    reason="not_yet_valid")
    if isinstance(exc, jwt.InvalidIssuerError):
        return UnauthenticatedError(f"the JWT's issuer (iss) is not '{verifier.issuer}'",
                                    reason="wrong_issuer")
    if isinstance(exc, jwt.InvalidAudienceError):
        return UnauthenticatedError(f"the JWT's audience (aud) is not '{verifier.audience}'",
                                    reason="wrong_audience")
    if isinstance(exc, jwt.InvalidSignatureError | jwt.InvalidAlgorithmError):
        return UnauthenticatedError(
            "the JWT's signature does not verify with the issuer's key", reason="bad_signature")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return UnauthenticatedError(f"the JWT lacks the claim '{exc.claim}'", reason="malformed")
    return UnauthenticatedError(f"the JWT is not valid: {exc}", reason="malformed")
