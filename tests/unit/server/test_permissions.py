"""Permissions and principals (server/auth/permissions.py)."""

from __future__ import annotations

import pytest

from tessera.core.errors import InvalidRequestError, PermissionDeniedError
from tessera.server.auth.permissions import (
    ADMIN,
    LOCAL,
    Action,
    Permission,
    Principal,
    parse_permission,
    parse_permissions,
)


def test_parse_permissions() -> None:
    assert parse_permission("admin") == ADMIN
    assert parse_permission(" read:users_* ") == Permission(Action.READ, "users_*")
    assert parse_permission("write:clicks") == Permission(Action.WRITE, "clicks")
    assert str(parse_permission("read:a?c")) == "read:a?c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("read", "is not read:GLOB, write:GLOB or admin"),
        ("delete:x", "is not read:GLOB, write:GLOB or admin"),
        ("admin:x", "is not read:GLOB, write:GLOB or admin"),
        ("read:", "names no feature groups"),
        ("", "is not read:GLOB"),
    ],
)
def test_bad_permissions_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_permission(text)


def test_globs_select_groups_per_action() -> None:
    p = Principal("inference", parse_permissions(["read:users_*", "write:clicks"]))
    assert p.can(Action.READ, "users_profile")
    assert not p.can(Action.READ, "Users_profile")  # case-sensitive
    assert not p.can(Action.WRITE, "users_profile")  # read does not imply write
    assert p.can(Action.WRITE, "clicks")
    assert not p.can(Action.READ, "clicks")  # nor write read
    assert not p.can(Action.ADMIN, "clicks")
    assert not p.can(Action.ADMIN)
    assert not p.is_admin
    # Decisions are cached; asking again gives the same answers.
    assert p.can(Action.READ, "users_profile") and not p.can(Action.READ, "clicks")


def test_admin_implies_everything() -> None:
    admin = Principal("ops", (ADMIN,))
    for action in Action:
        assert admin.can(action, "anything")
    assert admin.can(Action.ADMIN) and admin.is_admin
    assert LOCAL.is_admin and LOCAL.kind == "local"


def test_require_names_the_permission_and_the_group() -> None:
    p = Principal("ingest", parse_permissions(["write:clicks"]))
    p.require(Action.WRITE, "clicks")
    with pytest.raises(PermissionDeniedError,
                       match="'ingest' lacks the permission read on feature group 'clicks'"):
        p.require(Action.READ, "clicks")
    with pytest.raises(PermissionDeniedError, match="'ingest' lacks the permission admin"):
        p.require(Action.ADMIN)
    with pytest.raises(PermissionDeniedError) as info:
        p.require(Action.ADMIN, "clicks")
    assert info.value.grpc_code == "PERMISSION_DENIED" and info.value.http_status == 403
