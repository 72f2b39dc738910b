"""TLS and mutual TLS on both ports, against real `tessera serve` processes with certificates of
the tests' own CA (tests/certs.py): real handshakes from the SDK (sync and asyncio), the CLI and
raw clients; the refusals (no client certificate, a certificate of another CA, a server
certificate the client does not trust or that expired, plaintext at a TLS port and TLS at a
plaintext one) fail with an error saying what is wrong; bad TLS settings stop the start-up."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.client import (
    AsyncFeatureStoreClient,
    FeatureStoreClient,
    PermissionDeniedError,
    StorageError,
    UnauthenticatedError,
)
from tessera.core.values import to_record
from tessera.ingest.grpc_sink import GrpcSink
from tessera.server.auth.keys import KeyStore
from tests.certs import Certs, make_certs
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

FEATURES = {"user_id": "String", "ts": "Fractional", "clicks": "Integral"}
START_S = 120.0  # a busy 2-core machine has taken 40-90 s to start --workers 2
TESSERA = [sys.executable, "-m", "tessera.server"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


def _serve(tmp: Path, env: dict[str, str], workers: int = 1) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp / "data", extra_env=env, workers=workers).start(timeout_s=START_S)
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=[pytest.param(1, id="workers1"),
                                        pytest.param(2, id="workers2")])
def tls_server(request: pytest.FixtureRequest, certs: Certs,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS on both ports, no client certificate asked."""
    yield from _serve(tmp_path_factory.mktemp("tls-server"), certs.server_env(), request.param)


@pytest.fixture(scope="module")
def mtls_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[ServerProcess]:
    """Mutual TLS: client certificates must chain to `certs.ca`."""
    yield from _serve(tmp_path_factory.mktemp("mtls-server"), certs.server_env(mutual=True))


def _https(server: ServerProcess) -> str:
    return f"https://127.0.0.1:{server.http_port}"


def _client(server: ServerProcess, **kwargs: object) -> FeatureStoreClient:
    """A client of `server` over TLS; retries off (a refused handshake is not retried)."""
    return FeatureStoreClient(grpc=server.grpc_target, http=_https(server), timeout_s=5,
                              retries=0, **kwargs)  # type: ignore[arg-type]


def _health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    """gRPC health of the server at `target` over a channel of its own; raises RpcError."""
    channel = (grpc.secure_channel(target, credentials) if credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
            health_pb2.HealthCheckRequest(), timeout=5)
        return int(answer.status)


def _https_get(url: str, ca: Path, cert: tuple[Path, Path] | None = None) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    with httpx.Client(verify=context, timeout=5) as http:
        return http.get(url)


# --- TLS -----------------------------------------------------------------------------------------


def test_sdk_round_trip_over_tls(tls_server: ServerProcess, certs: Certs) -> None:
    group = f"tls_round_trip_{tls_server.workers}"
    with _client(tls_server, tls_ca=certs.ca) as fs:
        fs.create_feature_group(group, "user_id", "ts", FEATURES)  # HTTPS
        assert fs.put_record(group, {"user_id": "u1", "ts": 1.0, "clicks": 3})  # gRPC over TLS
        assert fs.get_record(group, "u1") == {"user_id": "u1", "ts": 1.0, "clicks": 3}
        assert fs.put_records(group, [{"user_id": f"u{i}", "ts": 1.0, "clicks": i}
                                      for i in range(2, 12)]) == 10
        batch = fs.batch_get_record({group: ["u2", "u11"]}, features=["clicks"])
        assert sorted(r["record"]["clicks"] for r in batch.records) == [2, 11]
        assert [g["feature_group_name"] for g in fs.list_feature_groups()
                if g["feature_group_name"] == group] == [group]

    async def read() -> dict[str, object] | None:
        async with AsyncFeatureStoreClient(grpc=tls_server.grpc_target, http=_https(tls_server),
                                           tls_ca=certs.ca) as afs:
            assert (await afs.describe_feature_group(group))["feature_group_name"] == group
            await afs.put_record(group, {"user_id": "u1", "ts": 2.0, "clicks": 4})
            return await afs.get_record(group, "u1")

    assert asyncio.run(read()) == {"user_id": "u1", "ts": 2.0, "clicks": 4}


def test_default_http_url_becomes_https_with_a_ca(certs: Certs) -> None:
    with FeatureStoreClient(tls_ca=certs.ca) as fs:
        assert fs._admin is not None and fs._admin.base_url == "https://127.0.0.1:8080"


def test_cli_put_and_get_over_tls(tls_server: ServerProcess, certs: Certs) -> None:
    if tls_server.workers != 1:
        pytest.skip("the CLI's TLS does not depend on the process layout")
    group = "tls_cli"
    with _client(tls_server, tls_ca=certs.ca) as fs:
        fs.create_feature_group(group, "user_id", "ts", FEATURES)
    flags = ["--grpc", tls_server.grpc_target, "--tls-ca", str(certs.ca)]
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_API_KEY"}
    put = subprocess.run([*TESSERA, "put", group, '{"user_id": "c1", "ts": 5.0, "clicks": 7}',
                          *flags], capture_output=True, text=True, timeout=60, env=env)
    assert put.returncode == 0, put.stderr
    get = subprocess.run([*TESSERA, "get", group, "c1", *flags], capture_output=True, text=True,
                         timeout=60, env=env)
    assert get.returncode == 0, get.stderr
    assert '"clicks": 7' in get.stdout
    sql = subprocess.run([*TESSERA, "sql", "SELECT 41 + 1 AS answer", "--format", "csv",
                          "--http", _https(tls_server), "--tls-ca", str(certs.ca)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert sql.returncode == 0, sql.stderr
    assert "42" in sql.stdout
    # Without the CA the CLI says what is wrong (exit 2, no traceback).
    plain = subprocess.run([*TESSERA, "get", group, "c1", "--grpc", tls_server.grpc_target],
                           capture_output=True, text=True, timeout=60, env=env)
    assert plain.returncode == 2
    assert "the server may require TLS" in plain.stderr and "Traceback" not in plain.stderr


def test_ingest_sink_over_tls(tls_server: ServerProcess, certs: Certs) -> None:
    group = f"tls_ingest_{tls_server.workers}"
    with _client(tls_server, tls_ca=certs.ca) as fs:
        fs.create_feature_group(group, "user_id", "ts", FEATURES)
    sink = GrpcSink(tls_server.grpc_target, _https(tls_server), tls_ca=certs.ca)
    try:
        assert sink.schema(group).group_name == group  # HTTPS
        record = to_record({"user_id": "k1", "ts": 3.0, "clicks": 9})
        sink._client.put_records_encoded(group, [record.SerializeToString()])  # gRPC over TLS
    finally:
        sink.close()
    with _client(tls_server, tls_ca=certs.ca) as fs:
        assert fs.get_record(group, "k1") == {"user_id": "k1", "ts": 3.0, "clicks": 9}


def test_plaintext_client_at_a_tls_port_fails_clearly(tls_server: ServerProcess) -> None:
    with FeatureStoreClient(grpc=tls_server.grpc_target, http=f"http://127.0.0.1:"
                            f"{tls_server.http_port}", timeout_s=3) as fs:
        with pytest.raises(StorageError, match="the server may require TLS"):
            fs.get_record("any", "u1")
        with pytest.raises(StorageError, match="the server may require TLS.*https://"):
            fs.list_feature_groups()


def test_client_refuses_a_server_certificate_of_another_ca(
    tls_server: ServerProcess, certs: Certs
) -> None:
    with _client(tls_server, tls_ca=certs.other_ca) as fs:
        with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED.*does not chain"):
            fs.get_record("any", "u1")
        with pytest.raises(StorageError, match="(?i)certificate verify failed.*does not chain"):
            fs.list_feature_groups()


def test_tls_client_at_a_plaintext_port_fails_clearly(
    certs: Certs, tmp_path: Path
) -> None:
    plain = ServerProcess(tmp_path / "data").start(timeout_s=START_S)
    try:
        with (
            FeatureStoreClient(grpc=plain.grpc_target, http=None, tls_ca=certs.ca,
                               timeout_s=3, retries=0) as fs,
            pytest.raises(StorageError, match="the server may not use TLS"),
        ):
            fs.get_record("any", "u1")
    finally:
        plain.stop()


# --- TLS with authentication: the secured setup ---------------------------------------------------


def test_secured_server_takes_api_keys_over_tls(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS + --auth, keys made in the key store before the start (as `tessera keys create
    --data-dir` makes them): an admin creates the group, a writer key writes through the SDK
    and the ingest sink, a reader key reads through the CLI from $TESSERA_API_KEY; a missing
    key is UnauthenticatedError on both APIs, the reader writing PermissionDeniedError."""
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)
    keys = KeyStore(tmp_path / "data")
    admin = keys.create("admin", ["admin"]).secret
    writer = keys.create("ingest", ["read:events_*", "write:events_*"]).secret
    reader = keys.create("inference", ["read:events_*"]).secret
    server = ServerProcess(tmp_path / "data", extra_env={
        **certs.server_env(), "TESSERA_AUTH__ENABLED": "true"}).start(timeout_s=START_S)
    try:
        with _client(server, tls_ca=certs.ca, api_key=admin) as fs:
            fs.create_feature_group("events_clicks", "user_id", "ts", FEATURES)
        with _client(server, tls_ca=certs.ca, api_key=writer) as fs:
            assert fs.put_record("events_clicks", {"user_id": "s1", "ts": 1.0, "clicks": 2})
        sink = GrpcSink(server.grpc_target, _https(server), tls_ca=certs.ca, api_key=writer)
        try:
            schema = sink.schema("events_clicks")
            record = to_record({"user_id": "s2", "ts": 1.0, "clicks": 5})
            sink._client.put_records_encoded(schema.group_name, [record.SerializeToString()])
        finally:
            sink.close()
        env = {**os.environ, "TESSERA_API_KEY": reader}
        get = subprocess.run([*TESSERA, "get", "events_clicks", "s2", "--grpc",
                              server.grpc_target, "--tls-ca", str(certs.ca)],
                             capture_output=True, text=True, timeout=60, env=env)
        assert get.returncode == 0, get.stderr
        assert '"clicks": 5' in get.stdout
        with _client(server, tls_ca=certs.ca, api_key=reader) as fs:
            assert fs.get_record("events_clicks", "s1") == {"user_id": "s1", "ts": 1.0,
                                                            "clicks": 2}
            with pytest.raises(PermissionDeniedError, match="write"):
                fs.put_record("events_clicks", {"user_id": "s1", "ts": 2.0, "clicks": 0})
        with _client(server, tls_ca=certs.ca) as fs:
            with pytest.raises(UnauthenticatedError):
                fs.get_record("events_clicks", "s1")
            with pytest.raises(UnauthenticatedError):
                fs.list_feature_groups()
    finally:
        server.stop()


# --- mutual TLS ----------------------------------------------------------------------------------


def test_mutual_tls_accepts_a_client_certificate_of_its_ca(
    mtls_server: ServerProcess, certs: Certs
) -> None:
    group = "mtls_round_trip"
    with _client(mtls_server, tls_ca=certs.ca, tls_cert=certs.client.cert,
                 tls_key=certs.client.key) as fs:
        fs.create_feature_group(group, "user_id", "ts", FEATURES)
        fs.put_record(group, {"user_id": "m1", "ts": 1.0, "clicks": 1})
        assert fs.get_record(group, "m1") == {"user_id": "m1", "ts": 1.0, "clicks": 1}
    good = grpc.ssl_channel_credentials(certs.ca.read_bytes(), certs.client.key.read_bytes(),
                                        certs.client.cert.read_bytes())
    assert _health(mtls_server.grpc_target, good) == health_pb2.HealthCheckResponse.SERVING
    answer = _https_get(f"{_https(mtls_server)}/healthz", certs.ca,
                        (certs.client.cert, certs.client.key))
    assert answer.status_code == 200


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: ServerProcess, certs: Certs
) -> None:
    with _client(mtls_server, tls_ca=certs.ca) as fs:
        with pytest.raises(StorageError, match="may require a client certificate"):
            fs.get_record("any", "u1")
        with pytest.raises(StorageError, match="(?i)certificate.required"):
            fs.list_feature_groups()
    with pytest.raises(grpc.RpcError) as refused:
        _health(mtls_server.grpc_target, grpc.ssl_channel_credentials(certs.ca.read_bytes()))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    with pytest.raises(httpx.TransportError, match="(?i)certificate.required"):
        _https_get(f"{_https(mtls_server)}/healthz", certs.ca)


def test_mutual_tls_refuses_a_client_certificate_of_another_ca(
    mtls_server: ServerProcess, certs: Certs
) -> None:
    with _client(mtls_server, tls_ca=certs.ca, tls_cert=certs.other_client.cert,
                 tls_key=certs.other_client.key) as fs:
        with pytest.raises(StorageError, match="refused the client certificate"):
            fs.get_record("any", "u1")
        with pytest.raises(StorageError, match="(?i)unknown.ca"):
            fs.list_feature_groups()
    other = grpc.ssl_channel_credentials(certs.ca.read_bytes(),
                                         certs.other_client.key.read_bytes(),
                                         certs.other_client.cert.read_bytes())
    with pytest.raises(grpc.RpcError):
        _health(mtls_server.grpc_target, other)
    with pytest.raises(httpx.TransportError, match="(?i)unknown.ca"):
        _https_get(f"{_https(mtls_server)}/healthz", certs.ca,
                   (certs.other_client.cert, certs.other_client.key))


# --- server certificates and settings ------------------------------------------------------------


def test_client_refuses_an_expired_server_certificate(certs: Certs, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data",
                           extra_env=certs.server_env(pair=certs.expired_server)).start(START_S)
    try:
        with _client(server, tls_ca=certs.ca) as fs:
            with pytest.raises(StorageError, match="(?i)expired"):
                fs.get_record("any", "u1")
            with pytest.raises(StorageError, match="(?i)expired"):
                fs.list_feature_groups()
    finally:
        server.stop()


@pytest.mark.parametrize(("workers", "env_of", "message"), [
    pytest.param(1, lambda c: {"TESSERA_TLS__CERT": str(c.server.cert)},
                 "was given without --tls-key", id="cert-without-key-workers1"),
    pytest.param(2, lambda c: {"TESSERA_TLS__CERT": str(c.server.cert),
                               "TESSERA_TLS__KEY": str(c.other_server.key)},
                 "are not a PEM certificate and its private key", id="key-mismatch-workers2"),
])
def test_bad_tls_settings_stop_the_start_up(  # every bad setting: tests/unit/server/test_tls.py
    certs: Certs, tmp_path: Path, workers: int, env_of: object, message: str
) -> None:
    env = {**os.environ, **env_of(certs)}  # type: ignore[operator]
    proc = subprocess.run(
        [*TESSERA, "serve", "--data-dir", str(tmp_path / "data"), "--grpc-port", "0",
         "--http-port", "0", "--workers", str(workers)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr
