"""The HTTP control plane (feature groups), sans I/O: each operation is an AdminCall (method,
path, JSON body, how to read the answer) that the sync and the asyncio client send with their
own httpx client. Errors are mapped here, once for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, urlencode

import httpx
import pydantic

from tessera.client._security import ClientSecurity
from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition
from tessera.core.errors import (
    FeatureGroupNotFoundError,
    InvalidRequestError,
    StorageError,
    TesseraError,
    error_for_http_status,
)
from tessera.core.schema import (
    FeatureDefinition,
    FeatureGroupDefinition,
    FeatureGroupUpdate,
    FeatureMetadataUpdate,
    OfflineStoreConfig,
    OnlineStoreConfig,
    Tag,
    TtlDuration,
)

FEATURE_GROUPS_PATH = "/v1/feature-groups"

T = TypeVar("T")
Description = dict[str, Any]
#: Per feature, its statistics or drift (GET .../statistics, .../drift).
Features = Mapping[str, Mapping[str, Any]]

FeatureSpecs = Mapping[str, str | FeatureDefinition]
Tags = Mapping[str, str] | Iterable[tuple[str, str]]
#: Aggregation features: dicts like {"name": "clicks_sum_1h", "source": "clicks",
#: "function": "sum", "window": "1h"} (see tessera.core.aggregation.spec), or the models.
Aggregations = Iterable[Mapping[str, Any] | AggregationDefinition]
AggregationSettings = Mapping[str, Any] | AggregationConfig


@dataclass(frozen=True)
class AdminCall(Generic[T]):
    """One control-plane request and how to read its successful response."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: dict[str, Any] | None = None
    #: The group the path names: a 404 then means FeatureGroupNotFoundError.
    feature_group_name: str | None = None

    def read(self, response: httpx.Response) -> T:
        """The parsed answer, or the TesseraError of an error status."""
        if response.is_error:
            raise _http_error(response, self.feature_group_name)
        return self.parse(response)


def _description(response: httpx.Response) -> Description:
    return cast(Description, response.json())


def _feature_groups(response: httpx.Response) -> list[Description]:
    return cast(list[Description], response.json()["feature_groups"])


def _nothing(response: httpx.Response) -> None:
    return None


def _group_path(name: str) -> str:
    # Names are checked by the server; quoting keeps any name inside its path segment.
    return f"{FEATURE_GROUPS_PATH}/{quote(name, safe='')}"


def feature_definitions(features: FeatureSpecs) -> list[FeatureDefinition]:
    """Definitions from {name: 'Vector[4]'} (a FeatureDefinition is also accepted as a value)."""
    return [
        spec if isinstance(spec, FeatureDefinition) else FeatureDefinition.of(name, spec)
        for name, spec in features.items()
    ]


@contextmanager
def _invalid_model() -> Iterator[None]:
    try:
        yield
    except pydantic.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from exc


def create_feature_group(
    name: str,
    record_identifier: str,
    event_time: str,
    features: FeatureSpecs,
    ttl_s: float | None = None,
    online: bool = True,
    offline: bool = True,
    description: str | None = None,
    tags: Tags | None = None,
    aggregations: Aggregations | None = None,
    aggregation_config: AggregationSettings | None = None,
) -> AdminCall[Description]:
    """POST /v1/feature-groups with a FeatureGroupDefinition; answers the group's description."""
    with _invalid_model():
        pairs = tags.items() if isinstance(tags, Mapping) else (tags or ())
        definition = FeatureGroupDefinition(
            feature_group_name=name,
            record_identifier_feature_name=record_identifier,
            event_time_feature_name=event_time,
            feature_definitions=feature_definitions(features),
            online_store_config=OnlineStoreConfig(
                enable_online_store=online,
                ttl_duration=TtlDuration.of_seconds(ttl_s) if ttl_s is not None else None,
            ),
            offline_store_config=OfflineStoreConfig(enable_offline_store=offline),
            description=description,
            tags=[Tag(key=k, value=v) for k, v in pairs],
            aggregations=[
                a if isinstance(a, AggregationDefinition) else AggregationDefinition(**a)
                for a in aggregations or ()
            ],
            aggregation_config=(
                aggregation_config
                if aggregation_config is None or isinstance(aggregation_config, AggregationConfig)
                else AggregationConfig(**aggregation_config)
            ),
        )
    body = definition.model_dump(mode="json", exclude_none=True)
    # the body of a group without aggregations, metadata or kept settings is as it always was
    if not body["aggregations"]:
        del body["aggregations"]
    if not body["compat_config"]:
        del body["compat_config"]
    _without_empty_parameters(body)
    return AdminCall("POST", FEATURE_GROUPS_PATH, _description, body=body)


def describe_feature_group(name: str) -> AdminCall[Description]:
    """GET /v1/feature-groups/{name}."""
    return AdminCall("GET", _group_path(name), _description, feature_group_name=name)


def _features(response: httpx.Response) -> Features:
    return cast(Features, response.json()["features"])


def feature_statistics(name: str, params: Mapping[str, str]) -> AdminCall[Features]:
    """GET /v1/feature-groups/{name}/statistics?start=&end=; answers the per-feature dict."""
    return AdminCall("GET", f"{_group_path(name)}/statistics?{urlencode(params)}", _features,
                     feature_group_name=name)


def feature_drift(name: str, params: Mapping[str, str]) -> AdminCall[Features]:
    """GET /v1/feature-groups/{name}/drift?baseline_start=&baseline_end=&start=&end=."""
    return AdminCall("GET", f"{_group_path(name)}/drift?{urlencode(params)}", _features,
                     feature_group_name=name)


def list_feature_groups() -> AdminCall[list[Description]]:
    """GET /v1/feature-groups; answers the list of descriptions."""
    return AdminCall("GET", FEATURE_GROUPS_PATH, _feature_groups)


def update_feature_group(
    name: str, add_features: FeatureSpecs | None = None, description: str | None = None
) -> AdminCall[Description]:
    """PATCH /v1/feature-groups/{name}: add features and/or change the description."""
    with _invalid_model():
        update = FeatureGroupUpdate(
            feature_additions=feature_definitions(add_features or {}), description=description
        )
    return AdminCall(
        "PATCH",
        _group_path(name),
        _description,
        body=_without_empty_parameters(update.model_dump(
            mode="json", exclude_none=True, include={"feature_additions", "description"})),
        feature_group_name=name,
    )


def _without_empty_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with no feature's `parameters: {}`: a body without metadata is as it always was
    (a server from before feature metadata takes it)."""
    for key in ("feature_definitions", "feature_additions"):
        for fd in body.get(key, ()):
            if not fd["parameters"]:
                del fd["parameters"]
    return body


def update_feature_metadata(
    name: str,
    feature: str,
    description: str | None = None,
    parameters: Mapping[str, str | None] | None = None,
) -> AdminCall[Description]:
    """PATCH /v1/feature-groups/{name}/features/{feature}: set the description (None: keep it,
    "": clear it) and parameters (a None value removes the key); answers the group's
    description. NotFoundError when the group or the feature does not exist."""
    with _invalid_model():
        change = FeatureMetadataUpdate(
            description=description,
            parameter_additions={k: v for k, v in (parameters or {}).items() if v is not None},
            parameter_removals=[k for k, v in (parameters or {}).items() if v is None],
        )
    return AdminCall(
        "PATCH",
        f"{_group_path(name)}/features/{quote(feature, safe='')}",
        _description,
        body=change.model_dump(mode="json", exclude_none=True),
    )


def delete_feature_group(name: str) -> AdminCall[None]:
    """DELETE /v1/feature-groups/{name}."""
    return AdminCall("DELETE", _group_path(name), _nothing, feature_group_name=name)


def _http_error(response: httpx.Response, feature_group_name: str | None) -> TesseraError:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or response.reason_phrase)
        if response.status_code == 404 and feature_group_name is not None:
            return FeatureGroupNotFoundError(feature_group_name)
    else:
        # Not the control plane's error shape (a proxy, a wrong URL): say what came back.
        message = f"{response.request.method} {response.request.url}: {response.text[:200]}"
    return error_for_http_status(response.status_code, message)


@contextmanager
def transport_errors(base_url: str, security: ClientSecurity | None = None) -> Iterator[None]:
    """httpx's transport failures (refused, reset, timed out, a TLS handshake refused) as
    StorageError, with what a TLS failure most likely means."""
    try:
        yield
    except httpx.TransportError as exc:
        what = f"{type(exc).__name__}: {exc}"
        hint = (security or ClientSecurity()).connection_hint(what, base_url)
        raise StorageError(f"control plane at {base_url} did not answer: {what}{hint}") from exc


def http_client_args(
    base_url: str, timeout_s: float, security: ClientSecurity | None = None
) -> dict[str, Any]:
    """Arguments shared by the sync and the async httpx client: the API key's header on
    every request."""
    headers = security.http_headers if security is not None else {}
    return {"base_url": base_url, "timeout": httpx.Timeout(timeout_s), "headers": headers}


class AdminTransport:
    """Sends AdminCalls with one httpx.Client (connection pooling, connect retries); `security`:
    the API key and TLS (client/_security.py)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        retries: int,
        transport: httpx.BaseTransport | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.base_url = base_url
        self._security = security
        verify = security.http_verify() if security is not None else True
        # httpx retries only failed connects: safe for every method, the request was not sent.
        self._http = httpx.Client(
            transport=transport or httpx.HTTPTransport(retries=retries, verify=verify),
            **http_client_args(base_url, timeout_s, security),
        )

    def send(self, call: AdminCall[T]) -> T:
        """The parsed answer to `call`; raises a TesseraError."""
        with transport_errors(self.base_url, self._security):
            response = self._http.request(call.method, call.path, json=call.body)
        return call.read(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


class AsyncAdminTransport:
    """Sends AdminCalls with one httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        retries: int,
        transport: httpx.AsyncBaseTransport | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.base_url = base_url
        self._security = security
        verify = security.http_verify() if security is not None else True
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(retries=retries, verify=verify),
            **http_client_args(base_url, timeout_s, security),
        )

    async def send(self, call: AdminCall[T]) -> T:
        """The parsed answer to `call`; raises a TesseraError."""
        with transport_errors(self.base_url, self._security):
            response = await self._http.request(call.method, call.path, json=call.body)
        return call.read(response)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
