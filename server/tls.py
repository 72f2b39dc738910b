"""TLS on the serving ports: the PEM files of `settings.tls`, read and checked once per process
before a port is bound, and the form each server takes them in (grpc's server credentials,
granian's ssl_* arguments).

Both ports speak TLS or neither. `client_ca` turns on mutual TLS on both: a client must present
a certificate that chains to it, or the handshake fails. A certificate without its key, a key
without a certificate, a client CA without either, an unreadable file or a certificate that is
not the key's is an OSError naming the file: the process exits 1 at start-up (server/cli.py,
roles.run_child) instead of serving plaintext or failing every handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from tessera.server.settings import TlsSettings


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key (PEM bytes), and the client CA of mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """grpc's credentials: with a client CA, a client certificate is required."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.client_ca_pem is not None,
        )


def load_server_tls(settings: TlsSettings | None) -> ServerTls | None:
    """The TLS material of `settings` (None: plaintext); OSError naming the file or the missing
    setting when it cannot serve TLS."""
    if settings is None or (settings.cert is None and settings.key is None):
        if settings is not None and settings.client_ca is not None:
            raise OSError(f"a TLS client CA ({settings.client_ca}) needs the server's "
                          "certificate and key too (--tls-cert, --tls-key)")
        return None
    if settings.cert is None or settings.key is None:
        given, missing = (("--tls-key", "--tls-cert") if settings.cert is None
                          else ("--tls-cert", "--tls-key"))
        raise OSError(f"TLS needs a certificate and its key: {given} "
                      f"({settings.key or settings.cert}) was given without {missing}")
    cert, key = settings.cert.absolute(), settings.key.absolute()
    cert_pem = _read(cert, "TLS certificate")
    key_pem = _read(key, "TLS private key")
    ca = settings.client_ca.absolute() if settings.client_ca is not None else None
    ca_pem = _read(ca, "TLS client CA") if ca is not None else None
    # The PEMs parsed and the key checked against the certificate now, by OpenSSL: grpc would
    # only find out in the first handshake (and fail every one), granian with a bare SSLError.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise OSError(f"the TLS certificate {cert} and key {key} are not a PEM certificate "
                      f"and its private key: {exc.reason or exc}") from exc
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise OSError(f"the TLS client CA {ca} is not a PEM certificate bundle: "
                          f"{exc.reason or exc}") from exc
    return ServerTls(cert, key, ca, cert_pem, key_pem, ca_pem)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read the {what} {path}: {exc.strerror}") from exc
    if not data.strip():
        raise OSError(f"the {what} {path} is empty")
    return data
