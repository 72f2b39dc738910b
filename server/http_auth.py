"""Who may call each HTTP route (README: Security): one table, checked at the HTTP edge.

Every route of the HTTP port has a declared `Rule`, keyed by (method, route template): the
fast routes (server/http_fast.py: the Tessera REST runtime, the SageMaker runtime) and the
FastAPI app's routes alike. A route without one is refused to everybody but an admin (and
logged), and tests/integration/test_auth_routes.py fails on it: a new route cannot ship
without saying who may call it.

With authentication on (`--auth`), `FastRouter` resolves each request's principal once, before
any route runs (`Authorization: Bearer <API key or JWT>`, or an AWS SigV4 signature:
`Authenticator.authenticate` / `authenticate_sigv4`), answers 401 when it cannot, and leaves it
at `scope["tessera.principal"]` (a fast handler also gets it as `FastRequest.principal`); then
the route's rule decides:

- `OPEN`: no credentials (probes, the API's documentation); `METRICS`: open unless
  `auth.protect_metrics`, then any principal;
- `AUTHENTICATED`: any principal; the route itself shows only what it may (a listing of
  readable groups) or checks each group a request names (`per_item`: batch reads and writes,
  SQL, the SageMaker control plane's operations: a BatchGetRecord over a group the caller may
  not read answers a per-item error, never a failed call);
- `needs(action, param)`: `action` on the feature group the path parameter `param` names
  (exactly: group names are case-sensitive, and so are permission globs);
- `ADMIN`: the admin permission.

A refusal is 403 naming the permission, the group and a request id (PermissionDeniedError), and
one line of the audit log (server/auth/audit.py) with that request id; every admin action is
audited with its outcome (`admin_action`). The SageMaker APIs answer refusals in AWS's shape,
AccessForbidden (`aws_access_error`). With authentication off nothing is checked: every request
is the `LOCAL` admin, at the cost of one attribute test per request (the FastAPI app then has
no authorization dependency at all).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tessera.core.errors import PermissionDeniedError, TesseraError, UnauthenticatedError
from tessera.server.auth import audit
from tessera.server.auth.permissions import Action, Principal, denied_message
from tessera.server.sagemaker_common import AwsError
from tessera.server.sagemaker_shapes import aws_error

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rule:
    """What a route needs. `kind`: "open", "metrics", "authenticated", "group", "admin";
    `action`: the permission the route (or, `per_item`, each group its request names) needs;
    `param`: the path parameter naming the group ("group" rules)."""

    kind: str
    action: Action | None = None
    param: str | None = None
    per_item: bool = False

    @property
    def needs_principal(self) -> bool:
        return self.kind not in ("open", "metrics")

    def check(self, principal: Principal, params: Mapping[str, str], operation: str) -> None:
        """PermissionDeniedError unless `principal` may call the route with these path
        parameters (what a `per_item` route checks per group is left to it); `operation`
        names the route in the audit line of a refusal."""
        if self.kind == "group":
            group = params.get(self.param or "")
            if group is None:  # a table error: the template has no such parameter
                raise PermissionDeniedError(
                    f"the route's permission names the path parameter '{self.param}', which "
                    "it does not have: refused (report this)")
            require(principal, self.action or Action.ADMIN, group, operation)
        elif self.kind == "admin":
            require(principal, Action.ADMIN, None, operation)

    def describe(self) -> str:
        """How the table test and the docs name the rule."""
        if self.kind == "group":
            return f"{self.action.value if self.action else '?'} on {{{self.param}}}"
        if self.per_item and self.action is not None:
            return f"{self.action.value} on each group named"
        return self.kind


OPEN = Rule("open")
METRICS = Rule("metrics")
AUTHENTICATED = Rule("authenticated")
ADMIN = Rule("admin", Action.ADMIN)


def needs(action: Action, param: str) -> Rule:
    """`action` on the group the path parameter `param` names."""
    return Rule("group", action, param)


def per_item(action: Action) -> Rule:
    """Any principal at the edge; the handler requires `action` on each group it touches."""
    return Rule("authenticated", action, per_item=True)


#: The routes of the HTTP port: (method, template) -> rule. FastAPI's templates are its route
#: paths; the fast routes' are their `FastRouter.add` templates.
RULES: dict[tuple[str, str], Rule] = {
    # --- operations and documentation
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): METRICS,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    # --- feature groups (control plane)
    ("POST", "/v1/feature-groups"): ADMIN,
    ("GET", "/v1/feature-groups"): AUTHENTICATED,  # lists the groups the caller may read
    ("GET", "/v1/feature-groups/{name}"): needs(Action.READ, "name"),
    ("PATCH", "/v1/feature-groups/{name}"): ADMIN,
    ("PATCH", "/v1/feature-groups/{name}/features/{feature}"): ADMIN,
    ("DELETE", "/v1/feature-groups/{name}"): ADMIN,
    ("POST", "/v1/feature-groups/{name}/compact"): ADMIN,
    # --- offline store: the SQL views the caller may read (server/http_sql.py filters them)
    ("POST", "/v1/sql"): per_item(Action.READ),
    # --- statistics and drift of a group's offline history (server/http_stats.py)
    ("GET", "/v1/feature-groups/{group}/statistics"): needs(Action.READ, "group"),
    ("GET", "/v1/feature-groups/{group}/drift"): needs(Action.READ, "group"),
    # --- keys (server/http_keys.py)
    ("POST", "/v1/keys"): ADMIN,
    ("GET", "/v1/keys"): ADMIN,
    ("DELETE", "/v1/keys/{name}"): ADMIN,
    # --- Tessera's REST runtime (server/rest_runtime.py)
    ("GET", "/v1/feature-groups/{group}/records/{record_id}"): needs(Action.READ, "group"),
    ("DELETE", "/v1/feature-groups/{group}/records/{record_id}"): needs(Action.WRITE, "group"),
    ("PUT", "/v1/feature-groups/{group}/records"): needs(Action.WRITE, "group"),
    ("POST", "/v1/feature-groups/{group}/records:batchGet"): needs(Action.READ, "group"),
    # --- SageMaker runtime (server/sagemaker_runtime.py): a group is a "name or ARN", resolved
    # by the handler, which then requires the action on the group's name
    ("GET", "/FeatureGroup/{FeatureGroupName}"): per_item(Action.READ),
    ("PUT", "/FeatureGroup/{FeatureGroupName}"): per_item(Action.WRITE),
    ("DELETE", "/FeatureGroup/{FeatureGroupName}"): per_item(Action.WRITE),
    ("POST", "/FeatureGroup/{FeatureGroupName}/Record"): per_item(Action.WRITE),
    ("POST", "/FeatureGroup/{FeatureGroupName}/ListRecords"): per_item(Action.READ),
    ("POST", "/BatchGetRecord"): per_item(Action.READ),
    ("POST", "/BatchWriteRecord"): per_item(Action.WRITE),
    # --- SageMaker control plane (server/sagemaker_control.py: OPERATION_RULES per operation)
    ("POST", "/"): AUTHENTICATED,
    # --- the operator UI (server/http_ui.py): its assets hold no data; its JSON shows only
    # what the caller may read
    ("GET", "/ui"): OPEN,
    ("GET", "/ui/app.js"): OPEN,
    ("GET", "/ui/api.js"): OPEN,
    ("GET", "/ui/pages.js"): OPEN,
    ("GET", "/ui/charts.js"): OPEN,
    ("GET", "/ui/ui.css"): OPEN,
    ("GET", "/v1/whoami"): AUTHENTICATED,
    ("GET", "/v1/offline-store"): AUTHENTICATED,  # lists the groups the caller may read
    ("GET", "/v1/ingest/dead-letters"): AUTHENTICATED,  # of the groups the caller may read
}


def rule_for(method: str, template: str) -> Rule | None:
    """The declared rule of a route, or None (undeclared: only an admin may call it)."""
    return RULES.get((method, template))


#: Paths FastAPI answers that need no credentials, whatever the method (their rule is OPEN).
OPEN_PATHS = frozenset(t for (_, t), r in RULES.items() if r.kind == "open")


def require(principal: Principal, action: Action, group: str | None,
            operation: str | None = None) -> None:
    """`principal.require(action, group)`; a refusal is one audit line (`operation`: what was
    refused, e.g. "GetRecord"; default the permission) whose request id the message names."""
    if not principal.can(action, group):
        message = denied_message(principal, action, group)
        request_id = _denied(principal, operation or action.value, group, message)
        raise PermissionDeniedError(f"{message} (request id {request_id})")


def undeclared(method: str, template: str, principal: Principal) -> None:
    """A route without a rule: an admin may call it, nobody else (logged: a table error)."""
    if principal.is_admin:
        return
    log.error("HTTP route %s %s has no declared permission (server/http_auth.py RULES): "
              "refused to '%s'", method, template, principal.name)
    message = (f"'{principal.name}' lacks the permission admin ({method} {template} declares "
               "no other)")
    raise PermissionDeniedError(
        f"{message} (request id {_denied(principal, f'{method} {template}', None, message)})")


def _denied(principal: Principal, operation: str, group: str | None, reason: str) -> str:
    request_id = uuid.uuid4().hex[:16]
    audit.record(principal, operation, group, audit.DENIED, request_id, reason=reason)
    return request_id


@contextlib.contextmanager
def admin_action(principal: Principal, operation: str, group: str | None) -> Iterator[None]:
    """The admin action the block runs, audited with its outcome (allowed, or error)."""
    try:
        yield
    except BaseException as exc:
        audit.record(principal, operation, group, audit.ERROR, reason=type(exc).__name__)
        raise
    audit.record(principal, operation, group, audit.ALLOWED)


# --- the SageMaker APIs' shape of a refusal -----------------------------------------------------


def aws_access_error(exc: UnauthenticatedError | PermissionDeniedError) -> AwsError:
    """A refusal in AWS's shape (botocore: ClientError, code AccessForbidden): 401 without
    credentials; 403 for credentials refused (a bad signature, an unknown or revoked key: AWS
    answers every signature failure 403) and for a permission the caller lacks."""
    status = 401 if isinstance(exc, UnauthenticatedError) and exc.reason == "missing" else 403
    return AwsError("AccessForbidden", exc.message, status)


def aws_error_response(exc: Exception) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The response of an error at the edge for the SageMaker control plane (an
    authentication failure, or a signed body too large to check)."""
    if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
        err = aws_access_error(exc)
    elif isinstance(exc, AwsError):
        err = exc
    elif isinstance(exc, TesseraError):
        err = aws_error(exc)
    else:
        log.error("authenticating a SageMaker control plane request failed", exc_info=exc)
        err = AwsError("InternalFailure", "internal error while authenticating", 500)
    return err.status, err.headers(), err.body()
