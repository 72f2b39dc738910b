"""The audit log: one JSON line per admin action, key change and denied call (README: Security).

A line: `{"time": "2026-11-29T17:40:01.123Z", "principal": "ingest", "action": "PutRecord",
"group": "clicks", "outcome": "denied", "request_id": "...", "reason": "..."}`. `principal` is
the key's name or the JWT subject (null when no credentials were accepted), `group` null for an
action on no group, `outcome` one of allowed / denied / error, `reason` only when there is
one, `key` (the key's name) only on key changes (CreateKey, RevokeKey). Never a secret, a
token or a record's values: callers pass names, not requests.

Where: `settings.auth.audit_log` (default `<data-dir>/audit.log`, made 0600; "-" = stdout).
Every process of a server appends to the same file: it is opened O_APPEND and each line goes
out in one write(2), so lines from several processes never interleave. A rotation that renames
or removes the file (logrotate's default) is noticed at the next line, which goes to a new file
at the path. A line that cannot be written (disk full) goes to the server's log instead, and
the call it records goes on.

The API the edges use (C: gRPC, D: HTTP, E: SQL):

    from tessera.server.auth import audit
    audit.record(principal, "CreateFeatureGroup", "users", "allowed", request_id=rid)
    audit.record(principal, "GetRecord", "users", "denied", request_id=rid, reason=str(exc))

`audit.record` writes to the process's log, which `configure(settings)` opens (the
authenticator factory does it, once per serving process: `authenticator_for`); before that,
lines are dropped (a unit test of a handler writes nowhere). The authenticator itself records
every refused credential (action "authenticate", outcome "denied", the failure's reason).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera.server.auth.permissions import Action, Principal
from tessera.server.settings import Settings

log = logging.getLogger(__name__)

ALLOWED = "allowed"
DENIED = "denied"
ERROR = "error"
_OUTCOMES = (ALLOWED, DENIED, ERROR)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends audit lines to a file (`path`) or stdout (`path` None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._inode = (0, 0)
        if path is None:
            self._fd = 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = self._open(path)

    def _open(self, path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)
        return fd

    def _rotated(self, path: Path) -> bool:
        """Whether `path` is no longer the file the log writes to (renamed or removed by a log
        rotation): lines are rare, so a stat per line is cheap."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def record(
        self, principal: Principal | str | None, action: Action | str, group: str | None,
        outcome: str, request_id: str | None = None, reason: str | None = None,
        key: str | None = None,
    ) -> None:
        """One line (the module docstring). `outcome`: allowed, denied or error; `key`: the
        name of the key a key change is about."""
        if outcome not in _OUTCOMES:
            raise ValueError(f"audit outcome {outcome!r} is not one of {', '.join(_OUTCOMES)}")
        line: dict[str, Any] = {
            "time": _now(),
            "principal": principal.name if isinstance(principal, Principal) else principal,
            "action": action.value if isinstance(action, Action) else action,
            "group": group,
            "outcome": outcome,
            "request_id": request_id,
        }
        if reason is not None:
            line["reason"] = reason
        if key is not None:
            line["key"] = key
        data = (json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                if self.path is not None and self._rotated(self.path):
                    old, self._fd = self._fd, self._open(self.path)
                    os.close(old)
                os.write(self._fd, data)  # one write: O_APPEND keeps concurrent lines whole
            except OSError as exc:
                # The call goes on (a denial stays a denial); the line is not lost: it is in
                # the server's log.
                log.error("audit log %s: cannot write (%s): %s", self.path or "stdout", exc,
                          data.decode().rstrip())

    def close(self) -> None:
        with self._lock:
            if self._fd > 2:
                os.close(self._fd)
                self._fd = -1


class _Dropped(AuditLog):
    """Before `configure`: lines go nowhere."""

    def __init__(self) -> None:
        self.path = None
        self._fd = -1
        self._lock = threading.Lock()

    def record(
        self, principal: Principal | str | None, action: Action | str, group: str | None,
        outcome: str, request_id: str | None = None, reason: str | None = None,
        key: str | None = None,
    ) -> None:
        return None


_lock = threading.Lock()
_current: AuditLog = _Dropped()


def path_for(settings: Settings) -> Path | None:
    """Where `settings` send audit lines (None: stdout)."""
    target = settings.auth.audit_log
    if target == "-":
        return None
    return Path(target) if target else Path(settings.data_dir) / "audit.log"


def configure(settings: Settings) -> AuditLog:
    """Open the audit log `settings` name as this process's (`record` writes to it); the same
    log again when it is already open."""
    global _current
    path = path_for(settings)
    with _lock:
        if isinstance(_current, _Dropped) or _current.path != path:
            # The previous log is left open: a thread may be writing to it, and closing it
            # could let its descriptor number be reused for another file.
            _current = AuditLog(path)
        return _current


def get() -> AuditLog:
    """This process's audit log."""
    return _current


def record(
    principal: Principal | str | None, action: Action | str, group: str | None, outcome: str,
    request_id: str | None = None, reason: str | None = None, key: str | None = None,
) -> None:
    """One line in this process's audit log (the module docstring)."""
    _current.record(principal, action, group, outcome, request_id, reason, key)
