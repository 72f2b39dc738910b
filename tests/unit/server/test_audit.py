"""The audit log (server/auth/audit.py): lines, where they go, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera.core.errors import UnauthenticatedError
from tessera.server.auth import audit
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.keys import KeyIndex, KeyStore
from tessera.server.auth.permissions import Action, Principal, parse_permissions
from tessera.server.settings import AuthSettings, Settings


@pytest.fixture(autouse=True)
def _own_audit_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """`configure` replaces the process's log: put the one before back after each test."""
    monkeypatch.setattr(audit, "_current", audit.get())


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_has_every_field_and_no_more(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "audit.log")
    reader = Principal("inference", parse_permissions(["read:users"]))
    log.record(reader, Action.WRITE, "users", audit.DENIED, request_id="r1",
               reason="'inference' lacks the permission write on feature group 'users'")
    log.record("ops", "keys.create", None, audit.ALLOWED)
    first, second = _lines(tmp_path / "audit.log")
    assert first.pop("time") and second.pop("time")
    assert first == {"principal": "inference", "action": "write", "group": "users",
                     "outcome": "denied", "request_id": "r1",
                     "reason": "'inference' lacks the permission write on feature group 'users'"}
    assert second == {"principal": "ops", "action": "keys.create", "group": None,
                      "outcome": "allowed", "request_id": None}
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600


def test_time_is_iso_utc(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "audit.log")
    log.record("x", "a", None, audit.ERROR)
    stamp = str(_lines(tmp_path / "audit.log")[0]["time"])
    assert stamp.endswith("Z")
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60


def test_unknown_outcome_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not one of allowed, denied, error"):
        audit.AuditLog(tmp_path / "a.log").record("x", "a", None, "ok")


def _append(path: str, tag: str, n: int) -> None:
    log = audit.AuditLog(Path(path))
    for i in range(n):
        log.record(tag * 200, "PutRecord", f"group-{i}", audit.DENIED, reason="r" * 3000)


def test_appends_from_several_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(str(path), tag, 300)) for tag in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = _lines(path)  # every line parses as one JSON object
    assert len(lines) == 1200
    assert {str(line["principal"])[0] for line in lines} == set("abcd")


def test_configure_follows_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert audit.path_for(settings) == tmp_path / "data" / "audit.log"
    other = Settings(data_dir=tmp_path, auth=AuthSettings(audit_log=str(tmp_path / "x.log")))
    assert audit.path_for(other) == tmp_path / "x.log"
    assert audit.path_for(Settings(auth=AuthSettings(audit_log="-"))) is None
    log = audit.configure(settings)
    assert audit.configure(settings) is log is audit.get()
    audit.record("p", "CreateFeatureGroup", "users", audit.ALLOWED, request_id="q")
    assert _lines(tmp_path / "data" / "audit.log")[0]["action"] == "CreateFeatureGroup"


def test_stdout_target_writes_lines_to_stdout(tmp_path: Path) -> None:
    code = ("from tessera.server.auth import audit\n"
            "from tessera.server.settings import Settings, AuthSettings\n"
            "audit.configure(Settings(auth=AuthSettings(audit_log='-')))\n"
            "audit.record('p', 'DeleteFeatureGroup', 'g', 'allowed')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         cwd=tmp_path, timeout=60).stdout
    assert json.loads(out)["action"] == "DeleteFeatureGroup"


def test_refused_credentials_are_audited_without_the_secret(tmp_path: Path) -> None:
    audit.configure(Settings(data_dir=tmp_path))
    created = KeyStore(tmp_path).create("reader", ["read:*"])
    KeyStore(tmp_path).revoke("reader")
    auth = KeyAuthenticator(KeyIndex(tmp_path))
    for header in (f"Bearer {created.secret}", None):
        with pytest.raises(UnauthenticatedError):
            auth.authenticate(header)
    text = (tmp_path / "audit.log").read_text()
    assert created.secret not in text and created.secret[4:] not in text
    revoked, missing = _lines(tmp_path / "audit.log")
    assert revoked["outcome"] == "denied" and revoked["action"] == "authenticate"
    assert str(revoked["reason"]).startswith("revoked: the API key 'reader' is revoked")
    assert str(missing["reason"]).startswith("missing:")


def test_a_rotated_log_is_reopened_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = audit.AuditLog(path)
    log.record("a", "x", None, audit.ALLOWED)
    path.rename(tmp_path / "audit.log.1")  # logrotate
    log.record("b", "x", None, audit.ALLOWED)
    path.unlink()
    log.record("c", "x", None, audit.ALLOWED)
    assert [x["principal"] for x in _lines(tmp_path / "audit.log.1")] == ["a"]
    assert [x["principal"] for x in _lines(path)] == ["c"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_line_that_cannot_be_written_goes_to_the_server_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = audit.AuditLog(tmp_path / "audit.log")
    os.close(log._fd)  # the descriptor fails like a full disk would: EBADF
    log.record("p", "DeleteFeatureGroup", "g", audit.ERROR)
    assert "audit log" in caplog.text and '"action":"DeleteFeatureGroup"' in caplog.text
    log._fd = -1
