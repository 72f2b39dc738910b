"""AWS Signature Version 4: verifying a signed request (the one place Tessera does it).

boto3 signs every request of the SageMaker-compatible APIs (server/sagemaker_runtime.py, the
control plane) with SigV4. With authentication on (`--auth`), the HTTP edge (server/http_fast.py)
hands every request whose Authorization is a SigV4 signature, with its raw path, query, headers
and body, to the authenticator (server/auth/authenticator.py), which calls `verify` with the
secrets of the access keys `tessera keys create --sigv4` made: it rebuilds the signature from
the request as it arrived and the secret of the access key the request names, and compares.
Without authentication signatures are not checked (any, or none, is served).

The steps (AWS's "Create a signed AWS API request", as botocore's `SigV4Auth` signs):
1. canonical request: method, canonical URI (the path as sent, dot segments and repeated slashes
   removed, then URI-encoded once more: services other than S3 sign the encoded path encoded
   again), canonical query (each name and value URI-encoded, pairs sorted), the signed headers
   (lower-case names, values trimmed and inner spaces collapsed, repeated ones joined by ","),
   the list of their names, and the payload's SHA-256 (`x-amz-content-sha256` when sent: it
   must then be the body's);
2. string to sign: "AWS4-HMAC-SHA256", the request time (`x-amz-date`), the credential scope
   (date/region/service/aws4_request) and the canonical request's SHA-256;
3. signing key: HMAC-SHA256 chain "AWS4" + secret -> date -> region -> service ->
   "aws4_request"; signature: HMAC-SHA256(key, string to sign), hex;
4. compared in constant time (`hmac.compare_digest`); the request time must be within
   `max_skew_s` of the server's clock (AWS allows 5 minutes) and the scope's date be its date;
   `host` and `x-amz-date` must be among the signed headers.

Every refusal is a `SignatureError` (AWS's AccessForbidden, 403) whose message says why.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from tessera.server.sagemaker_common import AwsError

ALGORITHM = "AWS4-HMAC-SHA256"
#: How far a request's time may be from the server's clock (AWS's window).
MAX_SKEW_S = 300.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-fA-F]+)\s*"
)
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class SignatureError(AwsError):
    """A request whose signature does not verify (AccessForbidden, 403); the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__("AccessForbidden", message, 403)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request as it arrived: the raw path and query string (as sent, percent-encoded), the
    headers (names in any case; repeated ones kept) and the body."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Credential:
    """What the `Credential=` of an Authorization header names."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def verify(
    request: SignedRequest,
    secret_for_access_key: Callable[[str], str | None],
    *,
    now_s: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
    service: str | None = None,
) -> str:
    """The access key id that signed `request`; SignatureError when it is not signed, signed by
    an unknown key (`secret_for_access_key` returns None), for another `service`, too far from
    the clock (`now_s`: epoch seconds, default now), or the signature does not match."""
    headers = _header_map(request.headers)
    auth = _one(headers, "authorization")
    if auth is None:
        raise SignatureError("the request is not signed: no Authorization header")
    m = _AUTHORIZATION.fullmatch(auth.strip())
    if m is None:
        raise SignatureError(
            f"the Authorization header is not an {ALGORITHM} signature: expected "
            f"'{ALGORITHM} Credential=<key>/<date>/<region>/<service>/aws4_request, "
            "SignedHeaders=<names>, Signature=<hex>'"
        )
    credential = _credential(m.group("credential"))
    if service is not None and credential.service != service:
        raise SignatureError(
            f"the request is signed for service '{credential.service}', not '{service}'"
        )
    signed = m.group("signed").split(";")
    for name in ("host", "x-amz-date"):
        if name not in signed:
            raise SignatureError(f"the header '{name}' must be signed (SignedHeaders lacks it)")
    if signed != sorted(set(signed)) or any(n != n.lower() for n in signed):
        raise SignatureError("SignedHeaders must list lower-case header names, sorted, once each")
    amz_date = _one(headers, "x-amz-date") or ""
    _check_time(amz_date, credential, time.time() if now_s is None else now_s, max_skew_s)
    secret = secret_for_access_key(credential.access_key_id)
    if secret is None:
        raise SignatureError(f"the access key id '{credential.access_key_id}' is not known")
    canonical = canonical_request(request, headers, signed)
    expected = signature(secret, credential, amz_date, canonical)
    if not hmac.compare_digest(expected, m.group("signature").lower()):
        raise SignatureError(
            "the signature does not match: the request (method, path, query, signed headers "
            "or body) is not the one signed, or the secret key is not this access key's"
        )
    return credential.access_key_id


def canonical_request(
    request: SignedRequest, headers: dict[str, list[str]], signed: Sequence[str]
) -> str:
    """Step 1 (module docstring); `headers` as `_header_map` makes them."""
    lines = []
    for name in signed:
        values = headers.get(name)
        if values is None:
            raise SignatureError(f"the signed header '{name}' is not in the request")
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}")
    return "\n".join([
        request.method.upper(),
        canonical_uri(request.raw_path.decode("latin-1")),
        canonical_query(request.query_string.decode("latin-1")),
        "\n".join(lines) + "\n",
        ";".join(signed),
        payload_hash(request.body, _one(headers, "x-amz-content-sha256")),
    ])


def canonical_uri(raw_path: str) -> str:
    """The path as sent, dot segments and empty segments removed, URI-encoded once more."""
    if not raw_path:
        return "/"
    parts: list[str] = []
    for seg in raw_path.split("/"):
        if seg == "..":
            if parts:
                parts.pop()
        elif seg and seg != ".":
            parts.append(seg)
    path = "/" + "/".join(parts) if raw_path.startswith("/") else "/".join(parts)
    if raw_path.endswith("/") and parts:
        path += "/"
    return quote(path, safe="/~")


def canonical_query(query: str) -> str:
    """Each name and value URI-encoded (RFC 3986 unreserved characters kept), pairs sorted."""
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        pairs.append((_encode(key), _encode(value)))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _encode(text: str) -> str:
    return quote(unquote(text), safe="-_.~")


def payload_hash(body: bytes, declared: str | None) -> str:
    """The body's SHA-256 (hex); a declared `x-amz-content-sha256` must be it."""
    actual = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    if declared is None:
        return actual
    if _SHA256_HEX.fullmatch(declared) is None:
        raise SignatureError(
            f"x-amz-content-sha256 {declared[:80]!r} is not a SHA-256 in hex (unsigned and "
            "streaming payloads are not accepted)"
        )
    if not hmac.compare_digest(declared, actual):
        raise SignatureError("x-amz-content-sha256 is not the SHA-256 of the body received")
    return declared


def signing_key(secret: str, credential: Credential) -> bytes:
    """Step 3's HMAC chain (the same for every request of a key's day, region and service:
    kept, a quarter of a verification's CPU)."""
    return _signing_key(secret, credential.date, credential.region, credential.service)


@functools.lru_cache(maxsize=1024)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def signature(secret: str, credential: Credential, amz_date: str, canonical: str) -> str:
    """Steps 2 and 3: the hex signature of a canonical request."""
    to_sign = "\n".join([ALGORITHM, amz_date, credential.scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.digest(signing_key(secret, credential), to_sign.encode(), "sha256").hex()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, msg.encode(), "sha256")


def _credential(text: str) -> Credential:
    parts = text.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts[:4]):
        raise SignatureError(
            f"Credential {text[:120]!r} is not <access key id>/<YYYYMMDD>/<region>/<service>/"
            "aws4_request"
        )
    return Credential(*parts[:4])


def _check_time(amz_date: str, credential: Credential, now_s: float, max_skew_s: float) -> None:
    m = _AMZ_DATE.fullmatch(amz_date)
    if m is None:
        raise SignatureError(
            f"x-amz-date {amz_date[:40]!r} is not a time in the form YYYYMMDDTHHMMSSZ"
        )
    if amz_date[:8] != credential.date:
        raise SignatureError(
            f"the credential scope's date {credential.date} is not x-amz-date's {amz_date[:8]}"
        )
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups())
        signed_s = datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError:
        raise SignatureError(f"x-amz-date {amz_date!r} is not a valid time") from None
    skew = signed_s - now_s
    if abs(skew) > max_skew_s:
        raise SignatureError(
            f"the signature {'expired' if skew < 0 else 'is from the future'}: signed at "
            f"{amz_date}, {abs(skew):.0f} s from the server's clock (allowed: "
            f"{max_skew_s:.0f} s)"
        )


def _header_map(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _one(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None
