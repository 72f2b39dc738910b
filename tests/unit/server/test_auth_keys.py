"""The key store and the API key / SigV4 authenticator (server/auth/keys.py, authenticator.py),
against real files in tmp_path."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tessera.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StorageError,
    UnauthenticatedError,
)
from tessera.server import metrics
from tessera.server.auth import audit
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.factory import authenticator_for
from tessera.server.auth.keys import CHECK_INTERVAL_S, KeyIndex, KeyStore
from tessera.server.auth.permissions import Action
from tessera.server.settings import AuthSettings, Settings


def _auth(data_dir: Path) -> KeyAuthenticator:
    return KeyAuthenticator(KeyIndex(data_dir))


def _failures(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("tessera_auth_failures_total", {"reason": reason}) or 0


def test_created_key_authenticates_with_its_permissions(tmp_path: Path) -> None:
    created = KeyStore(tmp_path).create("inference", ["read:users_*", "write:clicks"])
    assert created.secret.startswith("tsk_") and len(created.secret) == 4 + 43
    principal = _auth(tmp_path).authenticate(f"Bearer {created.secret}")
    assert (principal.name, principal.kind) == ("inference", "api-key")
    assert principal.can(Action.READ, "users_eu") and not principal.can(Action.READ, "clicks")
    assert principal.can(Action.WRITE, "clicks") and not principal.is_admin


def test_store_files_are_private_and_hold_no_secret(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    api = store.create("a", ["admin"])
    sig = store.create("b", ["read:*"], sigv4=True)
    auth_dir = tmp_path / "auth"
    assert stat.S_IMODE(auth_dir.stat().st_mode) == 0o700
    for name in ("keys.json", "secret.key", "keys.lock"):
        assert stat.S_IMODE((auth_dir / name).stat().st_mode) == 0o600, name
    text = (auth_dir / "keys.json").read_text()
    assert api.secret not in text and sig.secret not in text
    assert hashlib.sha256(api.secret.encode()).hexdigest() in text
    assert sig.info.access_key_id is not None and sig.info.access_key_id in text


def test_list_shows_every_key_without_secrets(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    a = store.create("a", ["admin"])
    b = store.create("b", ["read:x"], sigv4=True)
    store.revoke("a")
    listed = store.list()
    assert [(k.name, k.kind, k.permissions, k.revoked) for k in listed] == [
        ("a", "api-key", ("admin",), True), ("b", "sigv4", ("read:x",), False)]
    dumped = json.dumps([k.to_json() for k in listed])
    assert a.secret not in dumped and b.secret not in dumped and "sha256" not in dumped


def test_bad_names_and_permissions_are_refused_and_change_nothing(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    with pytest.raises(InvalidRequestError, match="is not read:GLOB, write:GLOB or admin"):
        store.create("k", ["read:x", "delete:y"])
    with pytest.raises(InvalidRequestError, match="needs at least one permission"):
        store.create("k", [])
    with pytest.raises(InvalidRequestError, match="key name 'a b' is not allowed"):
        store.create("a b", ["admin"])
    assert store.list() == []


def test_name_is_unique_among_keys_not_revoked(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    old = store.create("ingest", ["write:*"])
    with pytest.raises(ConflictError, match="a key named 'ingest' exists"):
        store.create("ingest", ["write:*"])
    store.revoke("ingest")
    new = store.create("ingest", ["write:clicks"])
    auth = _auth(tmp_path)
    assert auth.authenticate(f"Bearer {new.secret}").permissions[0].glob == "clicks"
    with pytest.raises(UnauthenticatedError) as err:
        auth.authenticate(f"Bearer {old.secret}")
    assert err.value.reason == "revoked"
    with pytest.raises(NotFoundError, match="no key named 'nope' to revoke; keys: ingest"):
        store.revoke("nope")


def test_revoke_takes_effect_on_the_next_call_of_a_running_reader(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    created = store.create("reader", ["read:*"])
    auth = _auth(tmp_path)  # built before the revoke, like a serving process
    header = f"Bearer {created.secret}"
    assert auth.authenticate(header).name == "reader"
    assert auth.authenticate(header).name == "reader"  # the cached path
    before = _failures("revoked")
    store.revoke("reader")
    with pytest.raises(UnauthenticatedError, match="the API key 'reader' is revoked") as err:
        auth.authenticate(header)
    assert err.value.reason == "revoked" and created.secret not in str(err.value)
    assert _failures("revoked") == before + 1


def test_a_key_created_while_serving_is_accepted_at_once(tmp_path: Path) -> None:
    auth = _auth(tmp_path)  # no key store yet
    created = KeyStore(tmp_path).create("late", ["admin"])
    assert auth.authenticate(f"Bearer {created.secret}").is_admin


def test_a_change_is_seen_within_the_check_interval_and_a_writer_waits_it_out(
    tmp_path: Path
) -> None:
    store = KeyStore(tmp_path)
    created = store.create("k", ["read:*"])
    auth = _auth(tmp_path)
    header = f"Bearer {created.secret}"
    assert auth.authenticate(header).name == "k"
    KeyStore(tmp_path, settle_s=0).revoke("k")  # a writer that does not wait
    time.sleep(CHECK_INTERVAL_S)
    with pytest.raises(UnauthenticatedError, match="revoked"):
        auth.authenticate(header)
    again = store.create("k", ["read:*"])
    started = time.monotonic()
    store.revoke("k")  # waits the interval out: every reader has seen it when it returns
    assert time.monotonic() - started >= CHECK_INTERVAL_S
    with pytest.raises(UnauthenticatedError, match="revoked"):
        auth.authenticate(f"Bearer {again.secret}")


@pytest.mark.parametrize(
    ("header", "reason", "message"),
    [
        (None, "missing", "no credentials"),
        ("", "missing", "no credentials"),
        ("Basic dXNlcjpwYXNz", "malformed", "not 'Bearer <API key or JWT>'"),
        ("Bearer", "malformed", "carries no token"),
        ("Bearer hello", "malformed", "neither a Tessera API key"),
        ("Bearer tsk_" + "A" * 43, "unknown_key", "not known to this server"),
        ("Bearer aaa.bbb.ccc", "jwt_not_configured", "verifies none"),
    ],
)
def test_refusals_name_their_reason_and_count_it(
    tmp_path: Path, header: str | None, reason: str, message: str
) -> None:
    KeyStore(tmp_path).create("k", ["admin"])
    before = _failures(reason)
    with pytest.raises(UnauthenticatedError, match=message) as err:
        _auth(tmp_path).authenticate(header)
    assert err.value.reason == reason
    assert "A" * 43 not in err.value.message
    assert _failures(reason) == before + 1


def test_scheme_is_case_insensitive(tmp_path: Path) -> None:
    created = KeyStore(tmp_path).create("k", ["admin"])
    assert _auth(tmp_path).authenticate(f"bearer  {created.secret} ").name == "k"


def test_corrupted_store_fails_closed(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    created = store.create("k", ["admin"])
    auth = _auth(tmp_path)
    assert auth.authenticate(f"Bearer {created.secret}").name == "k"
    (tmp_path / "auth" / "keys.json").write_text("{not json")
    time.sleep(CHECK_INTERVAL_S)
    for _ in range(2):  # checked again on every call until it can be read
        with pytest.raises(StorageError, match="is not a Tessera key store"):
            auth.authenticate(f"Bearer {created.secret}")
    with pytest.raises(StorageError, match="is not a Tessera key store"):
        KeyIndex(tmp_path)


def _create_many(data_dir: str, prefix: str, n: int) -> None:
    store = KeyStore(Path(data_dir), settle_s=0)
    for i in range(n):
        store.create(f"{prefix}{i}", ["read:*"])


def test_concurrent_writers_lose_no_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_create_many, args=(str(tmp_path), p, 15)) for p in "abc"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(k.name for k in KeyStore(tmp_path).list()) == sorted(
        f"{p}{i}" for p in "abc" for i in range(15))
    assert not [f for f in os.listdir(tmp_path / "auth") if f.endswith(".tmp")]


def _signed(access_key_id: str, secret: str, body: bytes = b'{"x": 1}',
            ) -> tuple[str, str, str, list[tuple[bytes, bytes]], bytes]:
    """A request signed by botocore, in the parts the HTTP edge hands over."""
    req = AWSRequest(method="POST", url="http://127.0.0.1:8080/FeatureGroup/users?a=b%20c",
                     data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(access_key_id, secret), "sagemaker", "us-east-1").add_auth(req)
    headers = [(k.lower().encode(), v.encode() if isinstance(v, str) else v)
               for k, v in req.headers.items()]
    headers.append((b"host", b"127.0.0.1:8080"))
    return "POST", "/FeatureGroup/users", "a=b%20c", headers, body


def test_sigv4_key_verifies_a_botocore_signature(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    created = store.create("sm", ["read:users"], sigv4=True)
    key_id, secret = created.secret_line.split(" ")
    assert len(key_id) == 20 and key_id.startswith("TSK") and len(secret) == 40
    auth = _auth(tmp_path)
    principal = auth.authenticate_sigv4(*_signed(key_id, secret))
    assert (principal.name, principal.kind) == ("sm", "sigv4")
    assert principal.can(Action.READ, "users")


@pytest.mark.parametrize("case", ["wrong_secret", "unknown", "revoked", "tampered", "unsigned"])
def test_sigv4_refusals(tmp_path: Path, case: str) -> None:
    store = KeyStore(tmp_path)
    created = store.create("sm", ["admin"], sigv4=True)
    key_id, secret = created.secret_line.split(" ")
    auth = _auth(tmp_path)
    method, path, query, headers, body = _signed(key_id, secret)
    reason = "bad_signature"
    if case == "wrong_secret":
        method, path, query, headers, body = _signed(key_id, "x" * 40)
    elif case == "unknown":
        method, path, query, headers, body = _signed("TSK" + "Z" * 17, secret)
        reason = "unknown_key"
    elif case == "revoked":
        store.revoke("sm")
        reason = "revoked"
    elif case == "tampered":
        body = b'{"x": 2}'
    else:
        headers = [h for h in headers if h[0] != b"authorization"]
        reason = "missing"
    with pytest.raises(UnauthenticatedError) as err:
        auth.authenticate_sigv4(method, path, query, headers, body)
    assert err.value.reason == reason
    assert secret not in err.value.message


def test_sigv4_secret_key_file_is_needed_to_serve_sigv4_keys(tmp_path: Path) -> None:
    KeyStore(tmp_path).create("sm", ["admin"], sigv4=True)
    (tmp_path / "auth" / "secret.key").unlink()
    with pytest.raises(StorageError, match="secret.key is missing"):
        KeyIndex(tmp_path)


def test_authenticator_for_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "_current", audit.get())  # configured below: restored after
    off = authenticator_for(Settings(data_dir=tmp_path))
    assert not off.enabled
    on = authenticator_for(Settings(data_dir=tmp_path, auth=AuthSettings(enabled=True)))
    assert on.enabled
    created = KeyStore(tmp_path).create("k", ["read:*"])
    assert on.authenticate(f"Bearer {created.secret}").name == "k"
    with pytest.raises(UnauthenticatedError):
        on.authenticate(None)


def test_now_is_utc_iso(tmp_path: Path) -> None:
    info = KeyStore(tmp_path).create("k", ["admin"]).info
    created = datetime.fromisoformat(info.created_at.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_auth_on_without_any_key_warns_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit, "_current", audit.get())
    settings = Settings(data_dir=tmp_path, auth=AuthSettings(enabled=True))
    authenticator_for(settings)
    assert "every call is refused until a key is made" in caplog.text
    caplog.clear()
    KeyStore(tmp_path).create("k", ["admin"])
    authenticator_for(settings)
    assert "every call is refused" not in caplog.text


def test_every_failure_reason_is_a_series_from_the_start(tmp_path: Path) -> None:
    from tessera.server.auth.authenticator import REASONS

    _auth(tmp_path)
    for reason in REASONS:
        assert metrics.REGISTRY.get_sample_value(
            "tessera_auth_failures_total", {"reason": reason}) is not None, reason


def test_a_key_with_a_lifetime_is_refused_once_it_expires(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, settle_s=0)
    short = store.create("ci", ["read:*"], expires_in_s=0.5)
    sig = store.create("ci-boto", ["read:*"], sigv4=True, expires_in_s=0.5)
    forever = store.create("svc", ["read:*"])
    assert short.info.expires_at is not None and forever.info.expires_at is None
    expires = datetime.fromisoformat(short.info.expires_at.replace("Z", "+00:00"))
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 0.5
    auth = _auth(tmp_path)
    key_id, secret = sig.secret_line.split(" ")
    assert auth.authenticate(f"Bearer {short.secret}").name == "ci"  # cached from here on
    assert auth.authenticate_sigv4(*_signed(key_id, secret)).name == "ci-boto"
    time.sleep(0.55)
    with pytest.raises(UnauthenticatedError, match="the API key 'ci' expired at ") as err:
        auth.authenticate(f"Bearer {short.secret}")
    assert err.value.reason == "expired"
    with pytest.raises(UnauthenticatedError, match="'ci-boto' expired at ") as err:
        auth.authenticate_sigv4(*_signed(key_id, secret))
    assert err.value.reason == "expired"
    assert auth.authenticate(f"Bearer {forever.secret}").name == "svc"
    with pytest.raises(InvalidRequestError, match="lifetime must be more than 0 s"):
        store.create("bad", ["read:*"], expires_in_s=0)


def test_every_reason_raised_is_a_declared_label() -> None:
    """A new refusal cannot ship with a label REASONS (and so the metric's series) lacks."""
    import re as _re

    from tessera.server.auth import authenticator, jwt
    from tessera.server.auth.authenticator import REASONS

    raised = set()
    for module in (authenticator, jwt):
        source = Path(str(module.__file__)).read_text()
        raised |= set(_re.findall(r'reason="([a-z_]+)"', source))
    assert raised and raised <= set(REASONS), raised - set(REASONS)


def test_jwt_options_without_a_jwks_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit, "_current", audit.get())
    KeyStore(tmp_path, settle_s=0).create("k", ["admin"])
    authenticator_for(Settings(data_dir=tmp_path, auth=AuthSettings(
        enabled=True, jwt_issuer="https://idp")))
    assert "--jwt-jwks is not: JWTs are refused" in caplog.text
