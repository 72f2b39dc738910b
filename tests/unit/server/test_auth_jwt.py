"""JWT / OIDC bearer tokens (server/auth/jwt.py) through the authenticator: real RSA and EC
keys, tokens signed by PyJWT, a JWKS in a file and served over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tessera.core.errors import StorageError, UnauthenticatedError
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.jwt import JwksSource, JwtVerifier
from tessera.server.auth.keys import KeyIndex, KeyStore
from tessera.server.auth.permissions import Action

ISSUER = "https://idp.example"
AUDIENCE = "tessera"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(*keys: tuple[Any, str, str]) -> dict[str, Any]:
    out = []
    for private, kid, alg in keys:
        algo = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
        jwk = json.loads(algo.to_jwk(private.public_key()))
        out.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
    return {"keys": out}


JWKS = _jwks((RSA_KEY, "rsa1", "RS256"), (EC_KEY, "ec1", "ES256"))


def _token(key: Any = RSA_KEY, kid: str | None = "rsa1", alg: str = "RS256",
           **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300,
            "permissions": ["read:users_*", "write:clicks"], **claims}
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    return path


def _auth(tmp_path: Path, jwks: str, *, issuer: str | None = ISSUER,
          audience: str | None = AUDIENCE, claim: str = "permissions") -> KeyAuthenticator:
    verifier = JwtVerifier(JwksSource(jwks), issuer, audience, claim)
    return KeyAuthenticator(KeyIndex(tmp_path), verifier)


def test_rsa_and_ec_tokens_resolve_to_their_subject(tmp_path: Path, jwks_file: Path) -> None:
    auth = _auth(tmp_path, str(jwks_file))
    for token in (_token(), _token(EC_KEY, "ec1", "ES256", sub="bob")):
        principal = auth.authenticate(f"Bearer {token}")
        assert principal.kind == "jwt"
        assert principal.can(Action.READ, "users_eu") and not principal.can(Action.READ, "x")
    assert principal.name == "bob"


def test_api_keys_still_work_next_to_jwts(tmp_path: Path, jwks_file: Path) -> None:
    created = KeyStore(tmp_path).create("svc", ["admin"])
    auth = _auth(tmp_path, str(jwks_file))
    assert auth.authenticate(f"Bearer {created.secret}").name == "svc"
    assert auth.authenticate(f"Bearer {_token()}").name == "alice"


@pytest.mark.parametrize(
    ("token", "reason", "message"),
    [
        (lambda: _token(exp=int(time.time()) - 120), "expired", "has expired"),
        (lambda: _token(nbf=int(time.time()) + 600), "not_yet_valid", "not valid yet"),
        (lambda: _token(iss="https://evil.example"), "wrong_issuer", "issuer (iss) is not"),
        (lambda: _token(aud="other"), "wrong_audience", "audience (aud) is not 'tessera'"),
        (lambda: _token(OTHER_RSA), "bad_signature", "does not verify"),
        (lambda: _token(kid="nope"), "unknown_key", "'nope' is not in the issuer's JWKS"),
        (lambda: _token(kid="k" * 5000), "unknown_key", f"'{'k' * 100}' is not in the"),
        (lambda: _token(sub=None), "malformed", "lacks the claim 'sub'"),
        (lambda: _token(exp=None), "malformed", "lacks the claim 'exp'"),
        (lambda: _token(permissions=["read:x", "drop:all"]), "bad_permissions",
         "'drop:all' is not read:GLOB"),
        (lambda: _token(permissions={"read": "x"}), "bad_permissions", "is not a list"),
        (lambda: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", "bad_signature",
         "algorithm 'none' is not accepted"),
        (lambda: "eyJ!!.eyJ.sig", "malformed", "not a JWT"),
    ],
)
def test_refused_tokens_name_their_reason(
    tmp_path: Path, jwks_file: Path, token: Any, reason: str, message: str
) -> None:
    with pytest.raises(UnauthenticatedError, match=re.escape(message)) as err:
        _auth(tmp_path, str(jwks_file)).authenticate(f"Bearer {token()}")
    assert err.value.reason == reason


def test_an_hmac_token_keyed_by_the_public_key_is_refused(
    tmp_path: Path, jwks_file: Path
) -> None:
    """The classic confusion: HS256 with the RSA public key (PEM) as the HMAC secret."""
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "mallory", "exp": int(time.time()) + 60, "iss": ISSUER,
                              "aud": AUDIENCE, "permissions": ["admin"]}).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{b64(mac)}"
    with pytest.raises(UnauthenticatedError, match="algorithm 'HS256' is not accepted") as err:
        _auth(tmp_path, str(jwks_file)).authenticate(f"Bearer {forged}")
    assert err.value.reason == "bad_signature"


def test_a_token_with_a_wrong_alg_for_the_key_is_refused(tmp_path: Path, jwks_file: Path) -> None:
    token = _token(RSA_KEY, "ec1", "RS256")  # an RSA signature claiming the EC key
    with pytest.raises(UnauthenticatedError) as err:
        _auth(tmp_path, str(jwks_file)).authenticate(f"Bearer {token}")
    assert err.value.reason == "bad_signature"


def test_permissions_claim_as_string_and_nested(tmp_path: Path, jwks_file: Path) -> None:
    auth = _auth(tmp_path, str(jwks_file), claim="scope")
    principal = auth.authenticate(f"Bearer {_token(scope='read:a write:b')}")
    assert principal.can(Action.READ, "a") and principal.can(Action.WRITE, "b")
    nested = _auth(tmp_path, str(jwks_file), claim="realm_access.roles")
    token = _token(realm_access={"roles": ["admin"]})
    assert nested.authenticate(f"Bearer {token}").is_admin


def test_no_permissions_claim_means_no_permissions(tmp_path: Path, jwks_file: Path) -> None:
    principal = _auth(tmp_path, str(jwks_file)).authenticate(
        f"Bearer {_token(permissions=None)}")
    assert principal.name == "alice" and principal.permissions == ()


def test_issuer_and_audience_unchecked_when_not_configured(
    tmp_path: Path, jwks_file: Path
) -> None:
    auth = _auth(tmp_path, str(jwks_file), issuer=None, audience=None)
    assert auth.authenticate(f"Bearer {_token(iss='x', aud='y')}").name == "alice"


def test_a_verified_token_is_cached_until_it_expires(tmp_path: Path, jwks_file: Path) -> None:
    auth = _auth(tmp_path, str(jwks_file))
    token = _token(exp=int(time.time()) + 2)
    first = auth.authenticate(f"Bearer {token}")
    assert auth.authenticate(f"Bearer {token}") is first  # no second verification
    time.sleep(2.1)
    # past exp the cache is not used; within the leeway the token still verifies
    assert auth.authenticate(f"Bearer {token}") is not first


def test_a_changed_jwks_file_is_reread(tmp_path: Path, jwks_file: Path) -> None:
    auth = _auth(tmp_path, str(jwks_file))
    rotated = _token(OTHER_RSA, "rsa2")
    with pytest.raises(UnauthenticatedError):
        auth.authenticate(f"Bearer {rotated}")
    jwks_file.write_text(json.dumps(_jwks((OTHER_RSA, "rsa2", "RS256"))))
    assert auth.authenticate(f"Bearer {rotated}").name == "alice"


def test_encryption_and_symmetric_keys_of_the_set_are_not_used(
    tmp_path: Path, jwks_file: Path
) -> None:
    enc = _jwks((OTHER_RSA, "enc1", "RS256"))["keys"][0] | {"use": "enc"}
    secret = b"s" * 32
    hmac_key = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(),
                "kid": "hs1", "alg": "HS256"}
    jwks_file.write_text(json.dumps({"keys": [*JWKS["keys"], enc, hmac_key]}))
    auth = _auth(tmp_path, str(jwks_file))
    assert auth.authenticate(f"Bearer {_token()}").name == "alice"
    with pytest.raises(UnauthenticatedError, match="'enc1' is not in the issuer's JWKS"):
        auth.authenticate(f"Bearer {_token(OTHER_RSA, 'enc1')}")
    forged = jwt.encode({"sub": "m", "exp": int(time.time()) + 60}, secret, algorithm="HS256",
                        headers={"kid": "hs1"})
    with pytest.raises(UnauthenticatedError, match="algorithm 'HS256' is not accepted"):
        auth.authenticate(f"Bearer {forged}")


def test_a_bad_jwks_file_fails_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(StorageError, match="is not a JSON Web Key Set"):
        JwksSource(str(bad))
    with pytest.raises(StorageError, match="cannot be read"):
        JwksSource(str(tmp_path / "missing.json"))


class _JwksHandler(BaseHTTPRequestHandler):
    body = json.dumps(JWKS).encode()
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _JwksHandler.hits = 0
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_served_over_http(tmp_path: Path, jwks_url: str) -> None:
    auth = _auth(tmp_path, jwks_url)
    assert auth.authenticate(f"Bearer {_token()}").name == "alice"
    assert auth.authenticate(f"Bearer {_token(EC_KEY, 'ec1', 'ES256', sub='b')}").name == "b"
    assert _JwksHandler.hits == 1  # the set is cached
    for kid in ("x1", "x2", "x3"):  # unknown kids: one refetch, then the cooldown holds
        with pytest.raises(UnauthenticatedError) as err:
            auth.authenticate(f"Bearer {_token(kid=kid)}")
        assert err.value.reason == "unknown_key"
    assert _JwksHandler.hits == 2


def test_an_old_set_is_refreshed_off_the_calling_thread(tmp_path: Path, jwks_url: str) -> None:
    verifier = JwtVerifier(JwksSource(jwks_url, lifespan_s=0.2), ISSUER, AUDIENCE)
    auth = KeyAuthenticator(KeyIndex(tmp_path), verifier)
    assert _JwksHandler.hits == 1
    time.sleep(0.3)
    assert auth.authenticate(f"Bearer {_token(sub='x')}").name == "x"  # the old set serves
    deadline = time.monotonic() + 10
    while _JwksHandler.hits < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _JwksHandler.hits == 2


def test_unreachable_jwks_url_is_unavailable_not_unauthenticated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = _auth(tmp_path, "http://127.0.0.1:9/jwks.json")  # starts: API keys still work
    assert "JWTs are refused until it can be" in caplog.text
    for _ in range(2):  # fetched again, then refused without a fetch during the cooldown
        with pytest.raises(StorageError, match="cannot be fetched"):
            auth.authenticate(f"Bearer {_token()}")
