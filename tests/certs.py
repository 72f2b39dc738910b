"""Certificates of the TLS tests: a CA of their own (trustme), a server certificate for
127.0.0.1 and localhost, client certificates, and the bad ones a client or server must refuse:
signed by another CA, or expired.

    certs = make_certs(tmp_path)        # PEM files under tmp_path/certs
    ServerProcess(..., extra_env=certs.server_env())              # TLS on both ports
    ServerProcess(..., extra_env=certs.server_env(mutual=True))   # mutual TLS
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class CertPair:
    """A certificate (PEM, its chain) and its private key (PEM)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA bundle clients trust, and that client certificates chain to
    server: CertPair  # 127.0.0.1 / localhost, signed by `ca`
    client: CertPair  # a client certificate signed by `ca`
    other_ca: Path  # a CA nobody here trusts
    other_server: CertPair  # 127.0.0.1 / localhost, signed by `other_ca`
    other_client: CertPair  # a client certificate signed by `other_ca`
    expired_server: CertPair  # 127.0.0.1 / localhost, signed by `ca`, expired yesterday

    def server_env(self, mutual: bool = False, pair: CertPair | None = None) -> dict[str, str]:
        """The environment that makes `tessera serve` use TLS with `pair` (default: the good
        server certificate); `mutual`: client certificates must chain to `ca`."""
        pair = pair or self.server
        env = {"TESSERA_TLS__CERT": str(pair.cert), "TESSERA_TLS__KEY": str(pair.key)}
        if mutual:
            env["TESSERA_TLS__CLIENT_CA"] = str(self.ca)
        return env


def _write(cert: trustme.LeafCert, folder: Path, name: str) -> CertPair:
    pair = CertPair(folder / f"{name}.pem", folder / f"{name}.key")
    cert.cert_chain_pems[0].write_to_path(str(pair.cert))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(pair.cert), append=True)
    cert.private_key_pem.write_to_path(str(pair.key))
    return pair


def make_certs(folder: Path) -> Certs:
    """Write every certificate under `folder`/certs."""
    out = folder / "certs"
    out.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    other.cert_pem.write_to_path(str(out / "other-ca.pem"))
    hosts = ("127.0.0.1", "localhost")
    now = dt.datetime.now(dt.UTC)
    return Certs(
        ca=out / "ca.pem",
        server=_write(ca.issue_cert(*hosts), out, "server"),
        client=_write(ca.issue_cert("client@tessera.test", common_name="reader"), out, "client"),
        other_ca=out / "other-ca.pem",
        other_server=_write(other.issue_cert(*hosts), out, "other-server"),
        other_client=_write(
            other.issue_cert("intruder@tessera.test", common_name="intruder"), out,
            "other-client"),
        expired_server=_write(
            ca.issue_cert(*hosts, not_before=now - dt.timedelta(days=30),
                          not_after=now - dt.timedelta(days=1)), out, "expired-server"),
    )
