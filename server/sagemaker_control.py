"""The SageMaker Feature Store control plane on Tessera's HTTP port: `boto3.client("sagemaker",
endpoint_url=...)` works unchanged for feature groups.

Protocol: botocore's `sagemaker` service model, JSON 1.1: `POST /` with `X-Amz-Target:
SageMaker.<Operation>` and a JSON body; answers `application/x-amz-json-1.1`, errors as
`{"__type": code, "message": ...}` (server/sagemaker_common.py). Requests arrive SigV4-signed
(the region of its credential scope is the region of the ARNs answered); the signature is
checked with authentication on (`--auth`: the router, server/http_auth.py), not otherwise.

Who may run what (`OPERATION_RULES`): CreateFeatureGroup, UpdateFeatureGroup,
DeleteFeatureGroup and UpdateFeatureMetadata need admin (and are written to the audit log);
DescribeFeatureGroup and DescribeFeatureMetadata need read on the group; ListFeatureGroups and
Search answer only the groups (and their features) the caller may read. A refusal is
AccessForbidden, 403.

Operations: CreateFeatureGroup, DescribeFeatureGroup, ListFeatureGroups, UpdateFeatureGroup,
DeleteFeatureGroup, UpdateFeatureMetadata, DescribeFeatureMetadata, and Search over the
FeatureGroup and FeatureMetadata resources (server/sagemaker_search.py). They run on the same
registry as Tessera's own API: a group made through boto3 is one of Tessera's groups, and back.

What a CreateFeatureGroup / UpdateFeatureGroup request gets:
- Honoured: FeatureGroupName, RecordIdentifierFeatureName, EventTimeFeatureName,
  FeatureDefinitions (types: server/sagemaker_shapes.py), OnlineStoreConfig.EnableOnlineStore
  and TtlDuration (an update's TtlDuration applies to records written after it), the presence
  of OfflineStoreConfig (no OfflineStoreConfig: no offline store, as in SageMaker), Description,
  Tags, FeatureAdditions.
- Kept and echoed by Describe, not acted on: RoleArn, ThroughputConfig (Tessera has no capacity
  units and throttles nothing), OnlineStoreConfig.SecurityConfig (KMS key) and StorageType (one
  online store serves every group, collections included, whatever the tier asked for),
  OfflineStoreConfig's S3StorageConfig, DataCatalogConfig and DisableGlueTableCreation (the
  offline store is the server's own Parquet folder with a DuckDB view per group).
- Refused with a ValidationException naming it: OfflineStoreConfig.TableFormat Iceberg (Tessera
  writes Hive-partitioned Parquet: TableFormat Default or Glue), Search's VisibilityConditions,
  Search resources other than FeatureGroup and FeatureMetadata, and any member the operation's
  shape does not have.

Error codes (one mapping: `sagemaker_shapes.aws_error`): ValidationException 400,
ResourceNotFound 404, ResourceInUse 400 (a name taken, in any case), ResourceLimitExceeded 400
(more than 2,500 features), ServiceUnavailable 503 (storage), InternalFailure 500 (with a request
id; the traceback goes to the log), UnknownOperationException and SerializationException 400.
A group's name or ARN is resolved without regard to case (ARNs carry the name in lower case).
Not served: OnlineStoreTotalSizeBytes (it would need a scan of the group's key range).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response

from tessera.core.errors import (
    FeatureGroupNotFoundError,
    PermissionDeniedError,
    TesseraError,
    UnauthenticatedError,
)
from tessera.core.schema import MAX_FEATURES, FeatureGroup, FeatureGroupUpdate, fold_name
from tessera.server import http_auth, metrics
from tessera.server import sagemaker_search as search
from tessera.server import sagemaker_shapes as shapes
from tessera.server.auth.permissions import LOCAL, Action, Principal
from tessera.server.registry import Registry
from tessera.server.sagemaker_common import AwsError, group_name, request_region
from tessera.server.sagemaker_shapes import Json, field, refuse_unknown, validation
from tessera.server.storage_health import storage_failure

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
#: SageMaker's FeatureGroup shape, as Search filters and sorts it.
GROUP_PROPERTIES = ("FeatureGroupArn", "FeatureGroupName", "RecordIdentifierFeatureName",
                    "EventTimeFeatureName", "FeatureDefinitions", "CreationTime",
                    "LastModifiedTime", "OnlineStoreConfig", "OfflineStoreConfig", "RoleArn",
                    "FeatureGroupStatus", "OfflineStoreStatus", "LastUpdateStatus",
                    "FailureReason", "Description", "Tags")
#: SageMaker's FeatureMetadata shape.
FEATURE_PROPERTIES = ("FeatureGroupArn", "FeatureGroupName", "FeatureName", "FeatureType",
                      "CreationTime", "LastModifiedTime", "Description", "Parameters")
_LIST_SORT = {"Name": "FeatureGroupName", "FeatureGroupStatus": "FeatureGroupStatus",
              "OfflineStoreStatus": "OfflineStoreStatus.Status", "CreationTime": "CreationTime"}

Operation = Callable[[Json, str, Principal], Json]

#: The permission each operation needs: ADMIN up front (on the group it names), READ on the group
#: it describes (checked once the name or ARN is resolved), or READ on each group a listing or a
#: search shows (the others are left out).
OPERATION_RULES: dict[str, Action] = {
    "CreateFeatureGroup": Action.ADMIN,
    "UpdateFeatureGroup": Action.ADMIN,
    "DeleteFeatureGroup": Action.ADMIN,
    "UpdateFeatureMetadata": Action.ADMIN,
    "DescribeFeatureGroup": Action.READ,
    "DescribeFeatureMetadata": Action.READ,
    "ListFeatureGroups": Action.READ,
    "Search": Action.READ,
}


def register(app: FastAPI, registry: Registry) -> None:
    """Serve the control plane at `POST /` of `app`."""
    control = SageMakerControl(registry)

    @app.post("/", include_in_schema=False)
    async def sagemaker_control(request: Request) -> Response:
        return await control.handle(request)


class SageMakerControl:
    """The operations, over a `Registry` (server/registry.py)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.operations: dict[str, Operation] = {
            "CreateFeatureGroup": self.create_feature_group,
            "DescribeFeatureGroup": self.describe_feature_group,
            "ListFeatureGroups": self.list_feature_groups,
            "UpdateFeatureGroup": self.update_feature_group,
            "DeleteFeatureGroup": self.delete_feature_group,
            "UpdateFeatureMetadata": self.update_feature_metadata,
            "DescribeFeatureMetadata": self.describe_feature_metadata,
            "Search": self.search,
        }
        self._records = _RecordCache()

    async def handle(self, request: Request) -> Response:
        """Decode, run the operation (in a thread: registry changes block), encode; every error
        leaves here in AWS's shape."""
        request_id = str(uuid.uuid4())
        principal: Principal = request.scope.get("tessera.principal") or LOCAL
        try:
            name, operation = self._operation(request.headers.get("x-amz-target"))
            req = _decode(await request.body())
            region = request_region(request.headers.get("authorization"))
            if OPERATION_RULES[name] is Action.ADMIN:
                group = req.get("FeatureGroupName")
                group = group if isinstance(group, str) else None
                http_auth.require(principal, Action.ADMIN, group, name)
                with http_auth.admin_action(principal, name, group):
                    out = await asyncio.to_thread(operation, req, region, principal)
            else:
                out = await asyncio.to_thread(operation, req, region, principal)
            body, status, headers = json.dumps(out).encode(), 200, []
        except Exception as exc:  # noqa: BLE001 - the one place errors become AWS's shape
            error = _as_aws(exc, request_id)
            body, status, headers = error.body(), error.status, error.headers()
            headers = [(k, v) for k, v in headers if k != b"content-type"]
        response = Response(body, status_code=status, media_type=CONTENT_TYPE)
        response.headers["x-amzn-requestid"] = request_id
        for k, v in headers:
            response.headers[k.decode()] = v.decode()
        return response

    def _operation(self, target: str | None) -> tuple[str, Operation]:
        target = target or ""
        name = target.removeprefix(TARGET_PREFIX)
        found = self.operations.get(name) if target.startswith(TARGET_PREFIX) else None
        if found is None:
            raise AwsError(
                "UnknownOperationException",
                f"X-Amz-Target {target!r} names no operation Tessera serves; served: "
                + ", ".join(TARGET_PREFIX + name for name in self.operations), 400)
        return name, found

    # --- groups --------------------------------------------------------------------------------

    def readable(self, principal: Principal, name_or_arn: Any, operation: str) -> FeatureGroup:
        """`resolve(name_or_arn)` once `principal` may read it (a caller that may not read the
        name it gave is refused whether or not the group exists); `operation` names the
        refusal in the audit log."""
        try:
            group = self.resolve(name_or_arn)
        except FeatureGroupNotFoundError:
            http_auth.require(principal, Action.READ, group_name(name_or_arn), operation)
            raise
        http_auth.require(principal, Action.READ, group.name, operation)
        return group

    def resolve(self, name_or_arn: Any) -> FeatureGroup:
        """The group a "name or ARN" names, without regard to case."""
        if not isinstance(name_or_arn, str):
            raise validation("'FeatureGroupName' must be a string")
        try:
            name = group_name(name_or_arn)
        except AwsError as exc:
            raise validation(exc.message) from None
        try:
            return self.registry.describe(name)
        except FeatureGroupNotFoundError:
            key = fold_name(name)
            for group in self.registry.list():
                if fold_name(group.name) == key:
                    return group
            raise FeatureGroupNotFoundError(name) from None

    def create_feature_group(self, req: Json, region: str, principal: Principal) -> Json:
        definition = shapes.definition_of(req)
        if len(definition.feature_definitions) > MAX_FEATURES:
            raise AwsError("ResourceLimitExceeded",
                           f"{len(definition.feature_definitions)} feature definitions; the "
                           f"limit is {MAX_FEATURES}", 400)
        group = self.registry.create(definition)
        metrics.FEATURE_GROUPS.set(len(self.registry.list()))
        return {"FeatureGroupArn": shapes.describe(group, region)["FeatureGroupArn"]}

    def describe_feature_group(self, req: Json, region: str, principal: Principal) -> Json:
        refuse_unknown(req, ("FeatureGroupName", "NextToken"), "DescribeFeatureGroupRequest")
        group = self.readable(principal, field(req, "FeatureGroupName", str, True),
                              "DescribeFeatureGroup")
        failure = self.registry.quarantined().get(group.name)
        # Every feature definition is in one answer: there is never a next page.
        return {**shapes.describe(group, region, failure), "NextToken": ""}

    def list_feature_groups(self, req: Json, region: str, principal: Principal) -> Json:
        refuse_unknown(req, ("NameContains", "FeatureGroupStatusEquals",
                             "OfflineStoreStatusEquals", "CreationTimeAfter",
                             "CreationTimeBefore", "SortOrder", "SortBy", "MaxResults",
                             "NextToken"), "ListFeatureGroupsRequest")
        contains = field(req, "NameContains", str)
        status = field(req, "FeatureGroupStatusEquals", str)
        offline = field(req, "OfflineStoreStatusEquals", str)
        after = _time(req, "CreationTimeAfter")
        before = _time(req, "CreationTimeBefore")
        sort_by = _choice(req, "SortBy", tuple(_LIST_SORT), "CreationTime")
        descending = _choice(req, "SortOrder", ("Ascending", "Descending"),
                             "Descending") == "Descending"
        quarantined = self.registry.quarantined()
        records = []
        for group in self.registry.list():
            if not principal.can(Action.READ, group.name):
                continue
            s = shapes.summary(group, region)
            if group.name in quarantined:
                s["FeatureGroupStatus"] = "CreateFailed"
            if ((contains and fold_name(contains) not in fold_name(group.name))
                    or (status and s["FeatureGroupStatus"] != status)
                    or (offline and s["OfflineStoreStatus"]["Status"] != offline)
                    or (after is not None and group.creation_time <= after)
                    or (before is not None and group.creation_time >= before)):
                continue
            records.append((search.sort_key(s, _LIST_SORT[sort_by], group.name), s))
        items, token = search.page(records, req, descending, default_max=10)
        return _with_token({"FeatureGroupSummaries": items}, token)

    def update_feature_group(self, req: Json, region: str, principal: Principal) -> Json:
        group = self.resolve(field(req, "FeatureGroupName", str, True))
        update = shapes.update_of(req)
        if len(update.feature_additions) > 100:
            raise validation(f"FeatureAdditions has {len(update.feature_additions)} features; "
                             "the limit is 100")
        total = len(group.definition.feature_definitions) + len(update.feature_additions)
        if total > MAX_FEATURES:
            raise AwsError("ResourceLimitExceeded",
                           f"feature group '{group.name}' would have {total} features; the "
                           f"limit is {MAX_FEATURES}", 400)
        if not (update.feature_additions or update.ttl_duration or update.compat_config):
            raise validation("UpdateFeatureGroup changes nothing: give FeatureAdditions, "
                             "OnlineStoreConfig or ThroughputConfig")
        new = self.registry.update(group.name, update)
        return {"FeatureGroupArn": shapes.describe(new, region)["FeatureGroupArn"]}

    def delete_feature_group(self, req: Json, region: str, principal: Principal) -> Json:
        refuse_unknown(req, ("FeatureGroupName",), "DeleteFeatureGroupRequest")
        group = self.resolve(field(req, "FeatureGroupName", str, True))
        self.registry.delete(group.name)
        metrics.FEATURE_GROUPS.set(len(self.registry.list()))
        return {}

    # --- feature metadata ----------------------------------------------------------------------

    def update_feature_metadata(self, req: Json, region: str, principal: Principal) -> Json:
        refuse_unknown(req, ("FeatureGroupName", "FeatureName", "Description",
                             "ParameterAdditions", "ParameterRemovals"),
                       "UpdateFeatureMetadataRequest")
        group = self.resolve(field(req, "FeatureGroupName", str, True))
        feature = field(req, "FeatureName", str, True)
        change = shapes.metadata_update_of(req)
        self.registry.update(group.name, FeatureGroupUpdate(feature_metadata={feature: change}))
        return {}

    def describe_feature_metadata(self, req: Json, region: str, principal: Principal) -> Json:
        refuse_unknown(req, ("FeatureGroupName", "FeatureName"),
                       "DescribeFeatureMetadataRequest")
        group = self.readable(principal, field(req, "FeatureGroupName", str, True),
                              "DescribeFeatureMetadata")
        feature = field(req, "FeatureName", str, True)
        for fd in group.definition.feature_definitions:
            if fd.feature_name == feature:
                return shapes.feature_metadata(group, fd, region)
        raise AwsError("ResourceNotFound",
                       f"feature '{feature}' is not in feature group '{group.name}'", 404)

    # --- search --------------------------------------------------------------------------------

    def search(self, req: Json, region: str, principal: Principal) -> Json:
        refuse_unknown(req, ("Resource", "SearchExpression", "SortBy", "SortOrder", "NextToken",
                             "MaxResults", "CrossAccountFilterOption", "VisibilityConditions"),
                       "SearchRequest")
        resource = field(req, "Resource", str, True)
        if req.get("VisibilityConditions"):
            raise validation("VisibilityConditions cannot be honoured: Tessera has one account "
                             "and every feature group is visible to it")
        # CrossAccountFilterOption: one account, so SameAccount and CrossAccount agree.
        known: tuple[str, ...]
        if resource == "FeatureGroup":
            known, records = GROUP_PROPERTIES, self._group_records(region, principal)
        elif resource == "FeatureMetadata":
            known, records = FEATURE_PROPERTIES, self._feature_records(region, principal)
        else:
            raise validation(f"Resource '{resource}' is not searchable in Tessera; allowed: "
                             "FeatureGroup, FeatureMetadata")
        expression = req.get("SearchExpression")
        if expression is not None:
            holds = search.expression_predicate(expression, known)
            records = [ir for ir in records if holds(ir[1])]
        sort_by = field(req, "SortBy", str) or "LastModifiedTime"
        search.check_property(sort_by, known, "SortBy")
        descending = _choice(req, "SortOrder", ("Ascending", "Descending"),
                             "Descending") == "Descending"
        keyed = [(search.sort_key(r, sort_by, identity), r) for identity, r in records]
        items, token = search.page(keyed, req, descending, default_max=10)
        out = {"Results": [{resource: r} for r in items],
               "TotalHits": {"Value": len(records), "Relation": "EqualTo"}}
        return _with_token(out, token)

    def _group_records(self, region: str, principal: Principal) -> list[tuple[str, Json]]:
        quarantined = self.registry.quarantined()
        out = []
        for group in self.registry.list():
            if not principal.can(Action.READ, group.name):
                continue
            failure = quarantined.get(group.name)

            def build(group: FeatureGroup = group,
                      failure: str | None = failure) -> list[tuple[str, Json]]:
                record = shapes.describe(group, region, failure)
                del record["ThroughputConfig"]  # not in Search's FeatureGroup shape
                record["Tags"] = shapes.tags_shape(group)
                return [(group.name, record)]

            out += self._records.get(("FeatureGroup", region, failure), group, build)
        self._records.keep(self.registry.list())
        return out

    def _feature_records(self, region: str, principal: Principal) -> list[tuple[str, Json]]:
        out = []
        for group in self.registry.list():
            if not principal.can(Action.READ, group.name):
                continue

            def build(group: FeatureGroup = group) -> list[tuple[str, Json]]:
                return [(f"{group.name}/{fd.feature_name}",
                         shapes.feature_metadata(group, fd, region))
                        for fd in group.definition.feature_definitions]

            out += self._records.get(("FeatureMetadata", region, None), group, build)
        self._records.keep(self.registry.list())
        return out


class _RecordCache:
    """Search's records of each group, built once per version of the group: a registered
    FeatureGroup is immutable and replaced on every change, so the object itself is the key's
    version. Records are never changed once built (they are only read and encoded)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, tuple[str, str, str | None]],
                            tuple[FeatureGroup, list[tuple[str, Json]]]] = {}

    def get(self, kind: tuple[str, str, str | None], group: FeatureGroup,
            build: Callable[[], list[tuple[str, Json]]]) -> list[tuple[str, Json]]:
        """The records (identity, record) of `group` for `kind` (resource, region, failure)."""
        key = (group.name, kind)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is group:
            return entry[1]
        records = build()
        self._entries[key] = (group, records)
        return records

    def keep(self, groups: list[FeatureGroup]) -> None:
        """Forget the records of groups no longer listed (deleted, or changed since)."""
        live = {id(g) for g in groups}
        for key, (group, _) in list(self._entries.items()):
            if id(group) not in live:
                self._entries.pop(key, None)


def _decode(body: bytes) -> Json:
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise AwsError("SerializationException", f"the body is not JSON: {exc}", 400) from None
    if not isinstance(doc, dict):
        raise AwsError("SerializationException", "the body must be a JSON object", 400)
    return doc


def _as_aws(exc: Exception, request_id: str) -> AwsError:
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
        return http_auth.aws_access_error(exc)
    if isinstance(exc, TesseraError):
        return shapes.aws_error(exc)
    log.error("SageMaker control request failed (request id %s)", request_id, exc_info=exc)
    if storage_failure(exc):
        return AwsError("ServiceUnavailable", f"storage unavailable (disk full or I/O error); "
                        f"retry later; request id {request_id}", 503)
    return AwsError("InternalFailure", f"internal error; request id {request_id}", 500)


def _choice(req: Json, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = field(req, name, str) or default
    if value not in allowed:
        raise validation(f"{name} '{value}' is not valid; allowed: {', '.join(allowed)}")
    return str(value)


def _time(req: Json, name: str) -> float | None:
    value = field(req, name, (int, float, str))
    if value is None or isinstance(value, (int, float)):
        return value
    number = search.as_number(value)
    if number is None:
        raise validation(f"{name} '{value}' is not a time: give seconds since the epoch or "
                         "ISO 8601 with a zone")
    return number


def _with_token(out: Json, token: str | None) -> Json:
    if token is not None:
        out["NextToken"] = token
    return out
