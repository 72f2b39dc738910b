"""A client's credentials and TLS, in one place for the sync and the asyncio client: the API key
(sent as `authorization: Bearer <key>` on every gRPC call and every HTTP request), the CA bundle
the server's certificate must chain to, and the client certificate of mutual TLS.

The files are read once, when the client is built; a missing or unreadable one is an
InvalidRequestError naming it. Failures of the connection itself (a plaintext client at a TLS
port and the other way round, a certificate the other side refuses) are explained by
`connection_hint`, added to the StorageError the call raises.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tessera.core.errors import InvalidRequestError

API_KEY_ENV = "TESSERA_API_KEY"

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ClientSecurity:
    """What a client sends and trusts; built by `client_security`. Its repr never shows the API
    key or the private key."""

    api_key: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_pem: bytes | None = None
    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def grpc_metadata(self) -> Metadata | None:
        """The metadata of every gRPC call (None: nothing to send)."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else None

    @property
    def http_headers(self) -> dict[str, str]:
        """The headers of every HTTP request."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def mutual(self) -> bool:
        return self.cert_pem is not None

    def grpc_credentials(self) -> grpc.ChannelCredentials | None:
        """The channel's TLS credentials (None: plaintext). Without a CA bundle, grpc's own
        roots verify the server."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    def http_verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify=`: the SSL context with the CA bundle and the client certificate
        (httpx ignores its own `cert=` when `verify` is a path), or True (the system's CAs)."""
        return self.ssl_context if self.ssl_context is not None else True

    def http_url(self, url: str, default: str) -> str:
        """The control plane URL: with TLS the default URL becomes https, a URL without a scheme
        gets one; an http:// URL with TLS options is an InvalidRequestError (both ports speak
        TLS or neither)."""
        if "://" not in url:
            return f"{'https' if self.tls else 'http'}://{url}"
        if self.tls and url.startswith("http://"):
            if url == default:
                return "https://" + url[len("http://"):]
            raise InvalidRequestError(
                f"http={url!r} is plaintext but TLS options were given (tls_ca / tls_cert): "
                "use an https:// URL")
        return url

    def connection_hint(self, message: str, http_url: str | None = None) -> str:
        """What a connection failure most likely means, to add to its message ('' if no
        guess). `http_url`: the URL of an HTTP request that failed (None: a gRPC call)."""
        text = message.lower()
        plaintext = not self.tls if http_url is None else http_url.startswith("http://")
        # grpc reports a connection the server closed during the handshake as "Socket
        # closed" while connecting; the same words on an established connection (a server
        # that died) are no hint.
        closed = "socket closed" in text and (http_url is not None or "failed to connect" in text)
        if plaintext and (
            closed or "illegal request line" in text or "connection reset" in text
            or "disconnected without sending" in text or "remoteprotocolerror" in text
        ):
            return ("; the server may require TLS: pass tls_ca=PATH (CLI: --tls-ca)"
                    + ("" if http_url is None else " and an https:// URL"))
        if plaintext:
            return ""
        if "wrong_version_number" in text:
            return "; the server may not use TLS (it answered in plaintext)"
        if "certificate_verify_failed" in text or "certificate verify failed" in text:
            return ("; the server's certificate does not chain to the CA bundle (tls_ca) or "
                    "is not valid now (expired?) or not for this host name")
        if not self.mutual and (
            "certificate required" in text or "certificate_required" in text or closed
        ):
            return ("; the server may require a client certificate (mutual TLS): pass "
                    "tls_cert=PATH and tls_key=PATH (CLI: --tls-cert, --tls-key)")
        if self.mutual and (
            "unknown ca" in text or "unknown_ca" in text or "bad certificate" in text or closed
        ):
            return ("; the server may have refused the client certificate (tls_cert): it "
                    "must chain to the server's client CA")
        return ""


def client_security(
    api_key: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    tls: bool | None = None,
) -> ClientSecurity:
    """A client's security from its arguments. `api_key` None: $TESSERA_API_KEY if set ('' sends
    none). TLS is on with `tls_ca` (the CA bundle, PEM) or a client certificate (`tls_cert` and
    `tls_key`, PEM; mutual TLS), or `tls=True` (the system's CAs)."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    if (tls_cert is None) != (tls_key is None):
        raise InvalidRequestError(
            "a client certificate needs its key: pass both tls_cert and tls_key (CLI: "
            "--tls-cert, --tls-key)")
    if tls is False and (tls_ca is not None or tls_cert is not None):
        raise InvalidRequestError("tls=False contradicts tls_ca / tls_cert")
    ca_path = Path(tls_ca) if tls_ca is not None else None
    cert_path = Path(tls_cert) if tls_cert is not None else None
    key_path = Path(tls_key) if tls_key is not None else None
    on = bool(tls) or ca_path is not None or cert_path is not None
    return ClientSecurity(
        api_key=api_key or None,
        tls=on,
        ca_pem=_read(ca_path, "TLS CA bundle") if ca_path else None,
        ca_path=ca_path,
        cert_path=cert_path,
        key_path=key_path,
        cert_pem=_read(cert_path, "TLS client certificate") if cert_path else None,
        key_pem=_read(key_path, "TLS client key") if key_path else None,
        ssl_context=_ssl_context(ca_path, cert_path, key_path),
    )


def _ssl_context(
    ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext | None:
    if ca is None and cert is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequestError(f"the TLS CA bundle {ca} is not PEM certificates: "
                                  f"{getattr(exc, 'reason', None) or exc}") from exc
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidRequestError(
                f"the TLS client certificate {cert} and key {key} are not a PEM certificate "
                f"and its private key: {getattr(exc, 'reason', None) or exc}") from exc
    return context


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read the {what} {path}: {exc.strerror}") from exc
