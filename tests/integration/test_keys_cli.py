"""`tessera keys` for real: offline on a data directory, then against a running server with
--auth (--workers 1 over mutual TLS, and 2), through the HTTP key routes; a revoked key is
refused at once by every serving process."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tessera.server.auth.keys import KeyStore
from tessera.server.cli import main
from tests.certs import make_certs
from tests.serverproc import ServerProcess


def keys_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`tessera keys ...` as a process of its own (the command as an operator runs it)."""
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_API_KEY"}
    return subprocess.run([sys.executable, "-m", "tessera.server", "keys", *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`tessera keys ...` through the CLI's `main` in this process (a process per command
    costs ~1-3 s on a busy machine): exit code, stdout and stderr."""
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        try:
            code = main(["keys", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["tessera", "keys", *args], code, out.out, out.err)

    return run


Keys = Callable[..., subprocess.CompletedProcess[str]]


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_offline_create_list_revoke(tmp_path: Path, keys: Keys) -> None:
    data = tmp_path / "data"
    admin = last_line(keys_process("create", "admin", "--allow", "admin", "--data-dir",
                                   str(data)))
    assert admin.startswith("tsk_") and len(admin) == 47
    sig = last_line(keys("create", "sm", "--allow", "read:users_*", "--allow", "write:clicks",
                         "--sigv4", "--data-dir", str(data)))
    key_id, secret = sig.split(" ")
    assert len(key_id) == 20 and key_id.startswith("TSK") and len(secret) == 40

    bad = keys("create", "x", "--allow", "read:a", "--allow", "drop:b", "--data-dir", str(data))
    assert bad.returncode == 2
    assert "permission 'drop:b' is not read:GLOB, write:GLOB or admin" in bad.stderr
    dup = keys("create", "admin", "--allow", "admin", "--data-dir", str(data))
    assert dup.returncode == 2 and "a key named 'admin' exists" in dup.stderr
    nowhere = keys("list")
    assert nowhere.returncode == 2 and "give --data-dir DIR" in nowhere.stderr
    clear = keys("list", "--http", "http://127.0.0.1:1", "--tls-ca", str(tmp_path / "ca.pem"))
    assert clear.returncode == 2 and "is not https:// but TLS options were given" in clear.stderr
    bad_life = keys("create", "x", "--allow", "admin", "--expires-in", "soon",
                    "--data-dir", str(data))
    assert bad_life.returncode == 2 and "'soon' is not a duration" in bad_life.stderr
    ci = keys("create", "ci", "--allow", "read:*", "--expires-in", "12h", "--data-dir",
              str(data))
    assert ci.returncode == 0 and "(expires 20" in ci.stdout

    assert keys("revoke", "sm", "--data-dir", str(data)).returncode == 0
    listed = keys("list", "--json", "--data-dir", str(data))
    assert listed.returncode == 0
    assert admin not in listed.stdout and secret not in listed.stdout
    doc = json.loads(listed.stdout)["keys"]
    assert [(k["name"], k["kind"], k["permissions"], k["revoked_at"] is not None)
            for k in doc] == [("admin", "api-key", ["admin"], False),
                              ("sm", "sigv4", ["read:users_*", "write:clicks"], True),
                              ("ci", "api-key", ["read:*"], False)]
    expires = datetime.fromisoformat(doc[2]["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)).total_seconds() - 12 * 3600) < 120
    assert doc[0]["expires_at"] is None
    table = keys("list", "--data-dir", str(data)).stdout
    assert "NAME" in table.splitlines()[0] and key_id in table and secret not in table

    lines = [json.loads(x) for x in (data / "audit.log").read_text().splitlines()]
    assert [(x["action"], x["key"], x["outcome"]) for x in lines] == [
        ("CreateKey", "admin", "allowed"), ("CreateKey", "sm", "allowed"),
        ("CreateKey", "ci", "allowed"), ("RevokeKey", "sm", "allowed")]
    assert all(admin not in json.dumps(x) and secret not in json.dumps(x) for x in lines)


@dataclass
class Served:
    """A server with --auth; `tls`: its CLI options (mutual TLS) when it serves HTTPS."""

    proc: ServerProcess
    url: str
    tls: list[str]
    verify: ssl.SSLContext | bool


@pytest.fixture(params=[1, 2], ids=["workers1-mtls", "workers2"])
def auth_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """--workers 1 serves mutual TLS (the CLI's --tls-ca/--tls-cert/--tls-key), --workers 2
    plaintext (a revoke seen by both serving processes): one server start each."""
    data = tmp_path / "data"
    KeyStore(data).create("root", ["admin"])  # made before start, as an operator would
    env = {"TESSERA_AUTH__ENABLED": "true"}
    tls: list[str] = []
    verify: ssl.SSLContext | bool = True
    if request.param == 1:
        certs = make_certs(tmp_path)
        env |= certs.server_env(mutual=True)
        tls = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client.cert),
               "--tls-key", str(certs.client.key)]
        verify = ssl.create_default_context(cafile=str(certs.ca))
        verify.load_cert_chain(certs.client.cert, certs.client.key)
    proc = ServerProcess(data, extra_env=env, workers=request.param)
    proc.start(timeout_s=120)  # a busy 2-core machine: 35-60 s seen for --workers 2
    scheme = "https" if tls else "http"
    try:
        yield Served(proc, f"{scheme}://127.0.0.1:{proc.http_port}", tls, verify)
    finally:
        proc.stop()


def _get(server: Served, token: str, path: str = "/v1/keys") -> httpx.Response:
    # a connection per request: with --workers 2 the kernel spreads them over both processes
    return httpx.get(f"{server.url}{path}", headers={"authorization": f"Bearer {token}"},
                     timeout=30, verify=server.verify)


def _refused_everywhere(server: Served, token: str, name: str, path: str) -> None:
    answers = [_get(server, token, path) for _ in range(12)]
    assert {r.status_code for r in answers} == {401}
    assert all(f"the API key '{name}' is revoked" in r.json()["error"]["message"]
               for r in answers)
    if server.proc.workers > 1:  # the revoke reached every serving process at once
        pids = {r.headers.get("x-tessera-pid") for r in answers}
        assert len(pids) == 2, pids


def test_online_create_list_revoke(auth_server: Served, keys: Keys) -> None:
    data_dir = auth_server.proc.data_dir
    boot = KeyStore(data_dir).create("bootstrap", ["admin"]).secret  # while serving

    def online(*args: str, key: str | None) -> list[str]:
        return [*args, "--http", auth_server.url, *auth_server.tls,
                *(("--api-key", key) if key else ())]

    ops = last_line(keys_process(*online("create", "ops", "--allow", "admin", key=boot)))
    reader = last_line(keys(*online("create", "reader", "--allow", "read:*", key=ops)))
    sig = last_line(keys(*online("create", "sm", "--allow", "read:*", "--sigv4", key=ops)))
    assert reader.startswith("tsk_") and len(sig.split(" ")[0]) == 20

    denied = keys(*online("list", key=reader))
    assert denied.returncode == 2
    assert "HTTP 403" in denied.stderr and "'reader' lacks the permission admin" in denied.stderr
    if auth_server.tls:  # mutual TLS: the CA alone is not enough
        no_cert = keys("list", "--http", auth_server.url, *auth_server.tls[:2], "--api-key", ops)
        assert no_cert.returncode == 1 and "cannot reach" in no_cert.stderr
    anonymous = keys(*online("list", key=None))
    assert anonymous.returncode == 2 and "HTTP 401" in anonymous.stderr

    listed = keys(*online("list", "--json", key=ops))
    names = [k["name"] for k in json.loads(listed.stdout)["keys"]]
    assert names == ["root", "bootstrap", "ops", "reader", "sm"]
    assert reader not in listed.stdout and sig.split(" ")[1] not in listed.stdout

    bad = keys(*online("create", "x", "--allow", "nope", key=ops))
    assert bad.returncode == 2 and "permission 'nope' is not" in bad.stderr
    missing = keys(*online("revoke", "ghost", key=ops))
    assert missing.returncode == 2 and "no key named 'ghost' to revoke" in missing.stderr

    assert all(_get(auth_server, ops).status_code == 200 for _ in range(4))
    assert all(_get(auth_server, reader, "/v1/feature-groups").status_code == 200
               for _ in range(4))
    assert keys(*online("revoke", "reader", key=ops)).returncode == 0
    _refused_everywhere(auth_server, reader, "reader", "/v1/feature-groups")
    assert keys(*online("revoke", "ops", key=boot)).returncode == 0
    _refused_everywhere(auth_server, ops, "ops", "/v1/keys")

    lines = [json.loads(x) for x in (data_dir / "audit.log").read_text()
             .splitlines()]
    changes = [(x["principal"], x["action"], x.get("key"), x["outcome"]) for x in lines
               if x["action"] in ("CreateKey", "RevokeKey", "ListKeys")]
    assert ("bootstrap", "CreateKey", "ops", "allowed") in changes
    assert ("ops", "CreateKey", "reader", "allowed") in changes
    assert ("bootstrap", "RevokeKey", "ops", "allowed") in changes
    text = (data_dir / "audit.log").read_text()
    assert ops not in text and reader not in text and boot not in text
