"""Permissions and principals.

A permission is `read:GLOB`, `write:GLOB` or `admin`; GLOB matches feature group names with
shell wildcards (`*`, `?`, `[...]`, case-sensitive). `read` covers GetRecord, BatchGetRecord,
listing and describing the group, and datasets/SQL over its history; `write` covers
Put/Delete, imports and ingest; `admin` covers creating, updating and deleting groups and
managing keys, and implies read and write on every group. `write` does not imply `read`: an
ingest key cannot read what it writes.

A principal is who a call was authenticated as (an API key's name, a JWT's subject, a SigV4
access key's name) with its permissions. Every entry point asks `principal.require(action,
group)`, which raises PermissionDeniedError naming the permission and the group.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field

from tessera.core.errors import InvalidRequestError, PermissionDeniedError


class Action(enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True)
class Permission:
    """One grant: `action` on the groups `glob` matches (None for admin: everything)."""

    action: Action
    glob: str | None = None

    def __str__(self) -> str:
        return self.action.value if self.glob is None else f"{self.action.value}:{self.glob}"

    def matches(self, group: str) -> bool:
        return self.glob is None or fnmatch.fnmatchcase(group, self.glob)


ADMIN = Permission(Action.ADMIN)


def parse_permission(text: str) -> Permission:
    """`read:GLOB`, `write:GLOB` or `admin`; InvalidRequestError naming what is wrong."""
    text = text.strip()
    if text == "admin":
        return ADMIN
    action, sep, glob = text.partition(":")
    if not sep or action not in ("read", "write"):
        raise InvalidRequestError(
            f"permission '{text}' is not read:GLOB, write:GLOB or admin"
        )
    if not glob:
        raise InvalidRequestError(f"permission '{text}' names no feature groups (e.g. {action}:*)")
    return Permission(Action(action), glob)


def parse_permissions(texts: list[str] | tuple[str, ...]) -> tuple[Permission, ...]:
    return tuple(parse_permission(t) for t in texts)


_CACHE_LIMIT = 4096  # group decisions kept per principal and action


@dataclass(frozen=True)
class Principal:
    """Who a call was authenticated as. `kind`: how ("api-key", "jwt", "sigv4", "local")."""

    name: str
    permissions: tuple[Permission, ...]
    kind: str = "api-key"
    #: Whether `permissions` hold admin (computed once: every call asks).
    is_admin: bool = field(init=False, compare=False)
    # Decisions per action, keyed by group name only: an Enum's hash runs in Python, a str's
    # is cached, so a repeated check is two dict lookups.
    _decisions: dict[Action, dict[str, bool]] = field(
        init=False, compare=False, repr=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_admin", ADMIN in self.permissions)
        object.__setattr__(self, "_decisions", {Action.READ: {}, Action.WRITE: {}})

    def can(self, action: Action, group: str | None = None) -> bool:
        """Whether this principal may do `action` on `group` (None: an action on no group,
        which only admin grants, e.g. managing keys)."""
        if self.is_admin:
            return True
        if group is None or action is Action.ADMIN:
            return False
        decisions = self._decisions[action]
        decided = decisions.get(group)
        if decided is None:
            decided = any(p.action is action and p.matches(group) for p in self.permissions)
            if len(decisions) >= _CACHE_LIMIT:
                decisions.clear()
            decisions[group] = decided
        return decided

    def require(self, action: Action, group: str | None = None) -> None:
        """PermissionDeniedError unless `can(action, group)`."""
        if not self.can(action, group):
            raise PermissionDeniedError(denied_message(self, action, group))


def denied_message(principal: Principal, action: Action, group: str | None) -> str:
    if group is None or action is Action.ADMIN:
        what = "admin" if group is None else f"admin (to change feature group '{group}')"
        return f"'{principal.name}' lacks the permission {what}"
    return (f"'{principal.name}' lacks the permission {action.value} on feature group "
            f"'{group}'")


#: The principal of every call when authentication is off (a loopback laptop server, or an
#: operator's explicit --insecure-no-auth): allowed everything.
LOCAL = Principal("local", (ADMIN,), kind="local")
