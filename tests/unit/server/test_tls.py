"""The serving processes' TLS settings are read and checked before a port is bound
(server/tls.py): each mistake is an OSError naming the file or the missing setting. A server
that refuses to start on them: tests/integration/test_tls.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tessera.server.settings import TlsSettings
from tessera.server.tls import load_server_tls
from tests.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


def test_no_certificate_is_plaintext() -> None:
    assert load_server_tls(None) is None
    assert load_server_tls(TlsSettings()) is None


def test_certificate_and_key_make_tls(certs: Certs) -> None:
    tls = load_server_tls(TlsSettings(cert=certs.server.cert, key=certs.server.key))
    assert tls is not None and tls.client_ca is None
    assert tls.cert_pem == certs.server.cert.read_bytes()
    assert isinstance(tls.grpc_credentials(), grpc.ServerCredentials)
    mutual = load_server_tls(TlsSettings(cert=certs.server.cert, key=certs.server.key,
                                         client_ca=certs.ca))
    assert mutual is not None and mutual.client_ca_pem == certs.ca.read_bytes()


@pytest.mark.parametrize(("settings_of", "message"), [
    (lambda c: TlsSettings(cert=c.server.cert), "--tls-cert .*server.pem. was given without "
                                                "--tls-key"),
    (lambda c: TlsSettings(key=c.server.key), "--tls-key .*server.key. was given without "
                                              "--tls-cert"),
    (lambda c: TlsSettings(client_ca=c.ca), r"client CA .*ca\.pem.* needs the server's "
                                            "certificate and key"),
    (lambda c: TlsSettings(cert=c.server.cert, key=c.other_server.key),
     "server.pem and key .*other-server.key are not a PEM certificate and its private key: "
     "KEY_VALUES_MISMATCH"),
    (lambda c: TlsSettings(cert=c.server.cert, key=c.server.key.with_name("missing.key")),
     r"cannot read the TLS private key .*missing\.key: No such file"),
    (lambda c: TlsSettings(cert=c.ca.with_name("empty.pem"), key=c.server.key),
     r"the TLS certificate .*empty\.pem is empty"),
    (lambda c: TlsSettings(cert=c.server.key, key=c.server.key),
     "are not a PEM certificate and its private key"),
    (lambda c: TlsSettings(cert=c.server.cert, key=c.server.key, client_ca=c.server.key),
     "the TLS client CA .*server.key is not a PEM certificate bundle"),
], ids=["cert-without-key", "key-without-cert", "client-ca-alone", "key-of-another-cert",
        "unreadable-key", "empty-cert", "key-as-cert", "key-as-client-ca"])
def test_bad_settings_are_an_os_error_naming_the_file(
    certs: Certs, settings_of: object, message: str
) -> None:
    certs.ca.with_name("empty.pem").write_text("")
    with pytest.raises(OSError, match=message):
        load_server_tls(settings_of(certs))  # type: ignore[operator]


def test_relative_paths_are_made_absolute(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(certs.ca.parent)
    tls = load_server_tls(TlsSettings(cert=Path("server.pem"), key=Path("server.key")))
    assert tls is not None and tls.cert == certs.server.cert
