"""The key store: API keys and SigV4 access keys, in `<data-dir>/auth/` (README: Security).

Files (the directory is made 0700, every file 0600):
- `keys.json`: every key ever made: name, kind (`api-key` or `sigv4`), permissions, created,
  expiry (optional: `--expires-in`) and revoked times, and its credential: for an API key the
  SHA-256 of its secret (the secret is 32 random bytes: a hash of it cannot be brute-forced, so
  no slow KDF is needed, and a lookup is one dict access by hash); for a SigV4 key its access
  key id and its secret *encrypted*.
- `secret.key`: the Fernet key those SigV4 secrets are encrypted with. SigV4 is an HMAC over
  the request keyed by the secret itself, so the server must be able to recover the secret (a
  hash would not do); encrypting it keeps `keys.json` alone (a backup, a copy) from giving the
  secrets away. Made with the first SigV4 key.
- `keys.lock`: the writers' lock (fcntl).

Writers (`tessera keys` offline, the HTTP routes of a running server: `KeyStore`) take the lock,
read the file, change it and replace it atomically (a temporary file, fsync, rename, fsync of
the directory): concurrent writers never lose each other's change and a reader never sees half
a file. Readers (every serving process: `KeyIndex`) stat the file at most every
`CHECK_INTERVAL_S` (0.1 s), on an authentication, and reload it when its identity (inode, size,
mtime) changed; between checks an authentication reads the clock only (a stat costs 2-13 us of
CPU on this machine's busy 2 cores, a third or more of a cached authentication, for a
GetRecord of ~100-500 us). A writer returns only `CHECK_INTERVAL_S` after its change is in
place, so when `tessera keys revoke` (or `DELETE /v1/keys/NAME`) returns, every serving process
refuses the key on its next call, and a key `create` returned is accepted by every one.

A name is unique among the keys that are not revoked; a revoked key stays in the file (its
token then reads as revoked, not unknown) and its name can be used again.

API key tokens are `tsk_` + 43 URL-safe characters, so an edge tells them from a JWT (`eyJ...`,
three dot-separated segments) at a glance. SigV4 access key ids are 20 characters starting
`TSK`, their secrets 40 characters. Secrets are returned once, by `create`, and never logged.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from tessera.core.errors import ConflictError, InvalidRequestError, NotFoundError, StorageError
from tessera.server.auth.permissions import Principal, parse_permissions

API_KEY_PREFIX = "tsk_"
ACCESS_KEY_PREFIX = "TSK"
ACCESS_KEY_ID_LEN = 20
SIGV4_SECRET_LEN = 40
KIND_API_KEY = "api-key"
KIND_SIGV4 = "sigv4"
_FORMAT = 1
#: How often a reader looks for a change of keys.json (and how long a writer waits after one).
CHECK_INTERVAL_S = 0.1

# Names appear in audit lines, metrics and URLs (DELETE /v1/keys/{name}): keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_ACCESS_KEY_CHARS = string.ascii_uppercase + string.digits
_SECRET_CHARS = string.ascii_letters + string.digits + "+/"


def auth_dir(data_dir: Path) -> Path:
    """Where a data directory's keys live."""
    return Path(data_dir) / "auth"


def token_hash(token: str) -> str:
    """The stored form of an API key's secret."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class KeyInfo:
    """One key as `tessera keys list` shows it: never its secret."""

    name: str
    kind: str
    permissions: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None
    access_key_id: str | None = None
    expires_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind,
                               "permissions": list(self.permissions),
                               "created_at": self.created_at, "expires_at": self.expires_at,
                               "revoked_at": self.revoked_at}
        if self.access_key_id is not None:
            out["access_key_id"] = self.access_key_id
        return out


@dataclass(frozen=True)
class CreatedKey:
    """What `create` returns: the key and its secret, shown this once. For an API key `secret`
    is the bearer token; for a SigV4 key it is the secret access key (with `access_key_id`)."""

    info: KeyInfo
    secret: str

    @property
    def secret_line(self) -> str:
        """The last line `tessera keys create` prints: the token, or `ACCESS_KEY_ID SECRET`."""
        if self.info.access_key_id is not None:
            return f"{self.info.access_key_id} {self.secret}"
        return self.secret


def _info(entry: dict[str, Any]) -> KeyInfo:
    return KeyInfo(entry["name"], entry["kind"], tuple(entry["permissions"]),
                   entry["created_at"], entry.get("revoked_at"), entry.get("access_key_id"),
                   entry.get("expires_at"))


def iso_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def validate_name(name: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise InvalidRequestError(
            f"key name {name[:140]!r} is not allowed: 1-128 characters of letters, digits and "
            "'._@-', starting with a letter or digit"
        )
    return name


class KeyStore:
    """Creates, lists and revokes keys in `<data_dir>/auth/` (the module docstring); works with
    the server stopped or running."""

    def __init__(self, data_dir: Path, settle_s: float = CHECK_INTERVAL_S) -> None:
        """`settle_s`: how long a change waits before returning, so that every reader has
        seen it (the module docstring; tests that read in no other process pass 0)."""
        self.dir = auth_dir(data_dir)
        self.path = self.dir / "keys.json"
        self._lock_path = self.dir / "keys.lock"
        self._secret_key_path = self.dir / "secret.key"
        self._settle_s = settle_s

    def create(
        self, name: str, permissions: list[str] | tuple[str, ...], *, sigv4: bool = False,
        expires_in_s: float | None = None,
    ) -> CreatedKey:
        """A new key named `name` with `permissions` (`read:GLOB`, `write:GLOB`, `admin`),
        refused after `expires_in_s` seconds when given (reason "expired"); InvalidRequestError
        for a bad name, permission or lifetime, ConflictError when a key that is not revoked
        has the name."""
        validate_name(name)
        if expires_in_s is not None and not 0 < expires_in_s < 100 * 365 * 86400:
            raise InvalidRequestError(
                f"a key's lifetime must be more than 0 s and less than 100 years, not "
                f"{expires_in_s} s")
        if not permissions:
            raise InvalidRequestError(
                f"key '{name}' needs at least one permission (--allow read:GLOB, write:GLOB "
                "or admin)"
            )
        perms = tuple(str(p) for p in parse_permissions(list(permissions)))
        with self._locked() as entries:
            if any(e["name"] == name and e.get("revoked_at") is None for e in entries):
                raise ConflictError(
                    f"a key named '{name}' exists; revoke it first or choose another name"
                )
            entry: dict[str, Any] = {"name": name, "permissions": list(perms),
                                     "created_at": _now_iso(), "revoked_at": None}
            if expires_in_s is not None:
                entry["expires_at"] = iso_time(time.time() + expires_in_s)
            if sigv4:
                taken = {e.get("access_key_id") for e in entries}
                key_id = _access_key_id()
                while key_id in taken:  # 36^17 ids: a collision is all but impossible
                    key_id = _access_key_id()
                secret = "".join(secrets.choice(_SECRET_CHARS) for _ in range(SIGV4_SECRET_LEN))
                entry |= {"kind": KIND_SIGV4, "access_key_id": key_id,
                          "secret_encrypted": self._fernet(create=True).encrypt(
                              secret.encode()).decode("ascii")}
            else:
                secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
                entry |= {"kind": KIND_API_KEY, "sha256": token_hash(secret)}
            entries.append(entry)
        return CreatedKey(_info(entry), secret)

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first (revoked ones too, with `revoked_at`)."""
        return [_info(e) for e in read_entries(self.path)]

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the key named `name` (NotFoundError when none that is not revoked has it);
        every serving process refuses it from its next call on."""
        with self._locked() as entries:
            for entry in entries:
                if entry["name"] == name and entry.get("revoked_at") is None:
                    entry["revoked_at"] = _now_iso()
                    return _info(entry)
        active = sorted(e["name"] for e in read_entries(self.path) if e.get("revoked_at") is None)
        raise NotFoundError(
            f"no key named '{name}' to revoke; keys: {', '.join(active) or '(none)'}"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[builtins.list[dict[str, Any]]]:
        """The entries, under the writers' lock; written back (atomically) when the block
        ends without an exception."""
        _make_private_dir(self.dir)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        changed = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = read_entries(self.path)
            before = json.dumps(entries)
            yield entries
            if json.dumps(entries) != before:
                _write_atomic(self.path, json.dumps({"format": _FORMAT, "keys": entries},
                                                    indent=1).encode() + b"\n")
                changed = True
        finally:
            os.close(fd)  # releases the lock
        if changed:  # every reader checks the file within this: then it has seen the change
            time.sleep(self._settle_s)

    def _fernet(self, *, create: bool) -> Fernet:
        return load_fernet(self._secret_key_path, create=create)


def load_fernet(path: Path, *, create: bool = False) -> Fernet:
    """The SigV4 secrets' encryption key (made, 0600, when `create` and absent)."""
    try:
        return Fernet(path.read_bytes().strip())
    except FileNotFoundError:
        if not create:
            raise StorageError(
                f"{path} is missing: the SigV4 keys in {path.parent / 'keys.json'} cannot be "
                "decrypted (restore the file, or revoke and re-create those keys)"
            ) from None
    except ValueError as exc:
        raise StorageError(f"{path} is not a Fernet key: {exc}") from exc
    key = Fernet.generate_key()
    try:
        _write_new(path, key + b"\n")
    except FileExistsError:  # another writer made it first: use theirs
        return Fernet(path.read_bytes().strip())
    return Fernet(key)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The key entries of `keys.json` ([] when there is no file); StorageError when the file is
    not a key store."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        doc = json.loads(raw)
        entries = doc["keys"]
        if doc.get("format") != _FORMAT or not isinstance(entries, list):
            raise ValueError(f"format {doc.get('format')!r}, expected {_FORMAT}")
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise ValueError("an entry without a name")
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{path} is not a Tessera key store: {exc}") from exc
    return entries


def _access_key_id() -> str:
    rest = ACCESS_KEY_ID_LEN - len(ACCESS_KEY_PREFIX)
    return ACCESS_KEY_PREFIX + "".join(secrets.choice(_ACCESS_KEY_CHARS) for _ in range(rest))


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A key as a reader resolves it: its principal, whether it is revoked, when it expires
    (epoch seconds; infinity: never) and, for a SigV4 key not revoked, its secret."""

    principal: Principal
    revoked: bool
    expires_at_s: float
    secret: str | None = None

    def expired(self, now_s: float) -> bool:
        return now_s >= self.expires_at_s


@dataclass(frozen=True)
class _Snapshot:
    """The store as one reload saw it: keys by token hash and by access key id."""

    stamp: tuple[int, int, int]
    by_hash: dict[str, KeyEntry]
    by_access_key: dict[str, KeyEntry]


_EMPTY = _Snapshot((0, 0, 0), {}, {})


class KeyIndex:
    """A serving process's view of the key store, reloaded when the file changes (the module
    docstring). Each key's `Principal` is built once per reload, so its permission decisions
    stay cached across calls."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.dir = auth_dir(data_dir)
        self.path = self.dir / "keys.json"
        self._path = str(self.path)  # os.stat of a str skips a Path's fspath
        self._snapshot = _EMPTY
        self._next_check = 0.0
        self.current()  # a store that cannot be read fails at start-up, not on the first call

    def current(self) -> _Snapshot:
        """The snapshot of the file, checked for a change at most every CHECK_INTERVAL_S."""
        if time.monotonic() < self._next_check:
            return self._snapshot
        return self._check()

    def _check(self) -> _Snapshot:
        """A stat of the file, and a reload when it changed."""
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        try:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        snapshot = self._snapshot
        if stamp != snapshot.stamp:
            try:
                snapshot = self._snapshot = self._load(stamp)
            except Exception:
                self._next_check = 0.0  # a store that cannot be read is tried on every call
                raise
        return snapshot

    def lookup_token(self, token: str) -> KeyEntry | None:
        """The API key whose secret is `token`; None: unknown."""
        return self.current().by_hash.get(token_hash(token))

    def lookup_access_key(self, access_key_id: str) -> KeyEntry | None:
        """The SigV4 key of an access key id; None: unknown."""
        return self.current().by_access_key.get(access_key_id)

    def _load(self, stamp: tuple[int, int, int]) -> _Snapshot:
        if stamp == (0, 0, 0):
            return _EMPTY
        entries = read_entries(self.path)
        by_hash: dict[str, KeyEntry] = {}
        by_access_key: dict[str, KeyEntry] = {}
        fernet: Fernet | None = None
        for e in entries:
            revoked = e.get("revoked_at") is not None
            expires = e.get("expires_at")
            try:
                expires_at_s = math.inf if expires is None else _epoch_s(expires)
            except (ValueError, AttributeError):
                raise StorageError(f"{self.path}: the expires_at of key '{e['name']}' is not "
                                   f"an ISO-8601 time: {expires!r}") from None
            if e.get("kind") == KIND_SIGV4:
                principal = Principal(e["name"], parse_permissions(e["permissions"]),
                                      kind=KIND_SIGV4)
                secret: str | None = None
                if not revoked:
                    if fernet is None:
                        fernet = load_fernet(self.dir / "secret.key")
                    try:
                        secret = fernet.decrypt(e["secret_encrypted"].encode()).decode()
                    except InvalidToken:
                        raise StorageError(
                            f"the SigV4 secret of key '{e['name']}' does not decrypt with "
                            f"{self.dir / 'secret.key'} (the file was replaced?)"
                        ) from None
                by_access_key[e["access_key_id"]] = KeyEntry(principal, revoked, expires_at_s,
                                                             secret)
            else:
                principal = Principal(e["name"], parse_permissions(e["permissions"]),
                                      kind=KIND_API_KEY)
                by_hash[e["sha256"]] = KeyEntry(principal, revoked, expires_at_s)
        return _Snapshot(stamp, by_hash, by_access_key)

