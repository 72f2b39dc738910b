"""Feature groups and their type system.

The HTTP shape follows SageMaker's CreateFeatureGroup, in snake_case: a record identifier feature,
an event time feature, feature definitions (Integral / Fractional / String, optionally a List, Set
or Vector collection), online / offline store configs, TTL, description and tags.
`FeatureGroupDefinition.check()` validates a definition once, at the boundary;
`CompiledSchema` is what the hot path consults per record.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition
from tessera.core.errors import ConflictError, InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from tessera.core.aggregation.plan import AggregationPlan

# Like SageMaker's: letters and digits, '-' or '_' only between them, 1-64 characters. ASCII
# only, and `\Z` (not `$`, which also matches before a trailing newline): `NAME_PATTERN.match`
# is a full match. The pattern bounds the letters and digits; `check_name` bounds the length.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](?:[-_]*[a-zA-Z0-9]){0,63}\Z")
MAX_NAME_CHARS = 64
NAME_RULE = (
    f"1-{MAX_NAME_CHARS} characters: letters, digits, and '-' or '_' between them; "
    "names are compared case-insensitively"
)
#: The longest TTL (a group's ttl_duration, a record's ttl_s): 1,000 years of 365 days. Event
#: times end in year 9999, so every ExpiresAt stays far inside int64 microseconds.
MAX_TTL_S = 365_000 * 86_400
TTL_RULE = f"1 second to {MAX_TTL_S:,} seconds (365,000 days)"
MAX_FEATURES = 2500
MAX_VECTOR_DIMENSION = 8192
MAX_DESCRIPTION_CHARS = 128
MAX_TAGS = 50
#: Feature metadata bounds (SageMaker's UpdateFeatureMetadata): a description of up to 255
#: characters, up to 25 key/value parameters of 1-255 characters each.
#: The kept-not-used settings of a group (`compat_config`), as JSON.
MAX_COMPAT_CONFIG_BYTES = 16 * 1024
MAX_FEATURE_DESCRIPTION_CHARS = 255
MAX_FEATURE_PARAMETERS = 25
MAX_PARAMETER_CHARS = 255
PARAMETER_RULE = (
    f"1-{MAX_PARAMETER_CHARS} characters: letters, digits, spaces and _ . : / = + -"
)


class ScalarType(StrEnum):
    INTEGRAL = "Integral"
    FRACTIONAL = "Fractional"
    STRING = "String"


class CollectionType(StrEnum):
    LIST = "List"
    SET = "Set"
    VECTOR = "Vector"


@dataclass(frozen=True, slots=True)
class FeatureType:
    """A feature's type: a scalar, a List/Set of a scalar, or a float32 Vector of a dimension."""

    scalar: ScalarType
    collection: CollectionType | None = None
    dimension: int | None = None

    _TEXT = re.compile(r"^(?:(List|Set)\[(\w+)\]|Vector\[(\d+)\]|(\w+))$")

    @classmethod
    def parse(cls, text: str) -> FeatureType:
        """Parse 'Integral', 'Fractional', 'String', 'List[T]', 'Set[T]' or 'Vector[N]'."""
        m = cls._TEXT.match(text.replace(" ", ""))
        allowed = "Integral, Fractional, String, List[T], Set[T] (T a scalar type) or Vector[N]"
        if m is None:
            raise InvalidRequestError(f"feature type '{text}' is not valid; allowed: {allowed}")
        coll, elem, dim, scalar = m.groups()
        try:
            if dim is not None:
                return cls.vector(int(dim))
            if coll is not None:
                return cls(ScalarType(elem), CollectionType(coll))
            return cls(ScalarType(scalar))
        except ValueError:
            raise InvalidRequestError(
                f"feature type '{text}' is not valid; allowed: {allowed}"
            ) from None

    @classmethod
    def vector(cls, dimension: int) -> FeatureType:
        if not 1 <= dimension <= MAX_VECTOR_DIMENSION:
            raise InvalidRequestError(
                f"vector dimension {dimension} is out of range; allowed: 1-{MAX_VECTOR_DIMENSION}"
            )
        return cls(ScalarType.FRACTIONAL, CollectionType.VECTOR, dimension)

    def __str__(self) -> str:
        if self.collection is CollectionType.VECTOR:
            return f"Vector[{self.dimension}]"
        if self.collection is not None:
            return f"{self.collection.value}[{self.scalar.value}]"
        return self.scalar.value

    @property
    def is_numeric_scalar(self) -> bool:
        return self.collection is None and self.scalar is not ScalarType.STRING


# --- HTTP / registry models (SageMaker's shape in snake_case) ----------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VectorConfig(_Model):
    dimension: int


class CollectionConfig(_Model):
    vector_config: VectorConfig


class FeatureDefinition(_Model):
    feature_name: str
    feature_type: ScalarType
    collection_type: CollectionType | None = None
    collection_config: CollectionConfig | None = None
    #: Feature metadata (searchable, never used by the store): a description and key/value
    #: parameters such as {"owner": "growth", "pii": "false"}.
    description: str | None = None
    parameters: dict[str, str] = {}

    @classmethod
    def of(cls, name: str, type_text: str) -> FeatureDefinition:
        """A definition from the SDK's short form: ('emb', 'Vector[4]')."""
        ftype = FeatureType.parse(type_text)
        config = None
        if ftype.collection is CollectionType.VECTOR:
            config = CollectionConfig(vector_config=VectorConfig(dimension=ftype.dimension or 0))
        return cls(
            feature_name=name,
            feature_type=ftype.scalar,
            collection_type=ftype.collection,
            collection_config=config,
        )

    def type(self) -> FeatureType:
        """The feature's type; raises InvalidRequestError when the definition is inconsistent."""
        where = f"feature '{self.feature_name}'"
        if self.collection_type is CollectionType.VECTOR:
            if self.feature_type is not ScalarType.FRACTIONAL:
                raise InvalidRequestError(
                    f"{where}: a Vector holds float32 values, so its feature_type must be "
                    f"Fractional, not {self.feature_type.value}"
                )
            if self.collection_config is None:
                raise InvalidRequestError(
                    f"{where}: a Vector needs collection_config.vector_config.dimension"
                )
            return FeatureType.vector(self.collection_config.vector_config.dimension)
        if self.collection_config is not None:
            raise InvalidRequestError(
                f"{where}: collection_config is only for collection_type Vector"
            )
        return FeatureType(self.feature_type, self.collection_type)


TtlUnit = Literal["Seconds", "Minutes", "Hours", "Days", "Weeks"]
_UNIT_SECONDS = {"Seconds": 1, "Minutes": 60, "Hours": 3600, "Days": 86400, "Weeks": 604800}


class TtlDuration(_Model):
    unit: TtlUnit
    value: int = Field(gt=0)

    @property
    def seconds(self) -> int:
        return self.value * _UNIT_SECONDS[self.unit]

    def check(self, field: str) -> None:
        """Refuse a duration past `MAX_TTL_S`, naming `field`, the value and the range."""
        if self.seconds > MAX_TTL_S:
            raise InvalidRequestError(
                f"{field} {self.value} {self.unit} is out of range; allowed: {TTL_RULE}"
            )

    @classmethod
    def of_seconds(cls, seconds: float) -> TtlDuration:
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_TTL_S) or seconds != int(seconds):
            raise InvalidRequestError(
                f"ttl_s must be a whole number of seconds from {TTL_RULE}, got {seconds}"
            )
        return cls(unit="Seconds", value=int(seconds))


class OnlineStoreConfig(_Model):
    enable_online_store: bool = True
    ttl_duration: TtlDuration | None = None


class OfflineStoreConfig(_Model):
    enable_offline_store: bool = True


class Tag(_Model):
    key: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=256)


class FeatureGroupDefinition(_Model):
    """What a user sends to create a feature group (SageMaker CreateFeatureGroup, snake_case)."""

    feature_group_name: str
    record_identifier_feature_name: str
    event_time_feature_name: str
    feature_definitions: list[FeatureDefinition]
    online_store_config: OnlineStoreConfig = OnlineStoreConfig()
    offline_store_config: OfflineStoreConfig = OfflineStoreConfig()
    description: str | None = None
    tags: list[Tag] = []
    #: Windowed aggregation features (tessera.core.aggregation): fixed when the group is made.
    aggregations: list[AggregationDefinition] = []
    aggregation_config: AggregationConfig | None = None
    #: Settings accepted for compatibility that Tessera keeps and shows but does not act on, as
    #: sent (SageMaker's RoleArn, ThroughputConfig, OfflineStoreConfig.S3StorageConfig, KMS key
    #: ids: server/sagemaker_control.py); JSON values only.
    compat_config: dict[str, Any] = {}
    #: Drift (tessera.core.drift): a feature drifted when its PSI exceeds this (None: 0.2).
    drift_psi_threshold: float | None = Field(None, gt=0)

    def check(self) -> None:
        """Validate everything a schema must satisfy; raise InvalidRequestError naming the field.

        Names follow one rule (`check_name`, `check_column_name`), and the names that become
        the group's offline columns (features, aggregations) must differ case-insensitively."""
        check_name("feature_group_name", self.feature_group_name)
        if not self.feature_definitions:
            raise InvalidRequestError("feature_definitions must list at least one feature")
        if len(self.feature_definitions) > MAX_FEATURES:
            raise InvalidRequestError(
                f"feature_definitions has {len(self.feature_definitions)} features; "
                f"the limit is {MAX_FEATURES}"
            )
        types = check_feature_definitions(self.feature_definitions, existing=())
        _check_key_feature(
            "record_identifier_feature_name",
            self.record_identifier_feature_name,
            types,
            (FeatureType(ScalarType.STRING), FeatureType(ScalarType.INTEGRAL)),
        )
        _check_key_feature(
            "event_time_feature_name",
            self.event_time_feature_name,
            types,
            (FeatureType(ScalarType.FRACTIONAL), FeatureType(ScalarType.STRING)),
        )
        if self.record_identifier_feature_name == self.event_time_feature_name:
            raise InvalidRequestError(
                "record_identifier_feature_name and event_time_feature_name must differ"
            )
        if not (
            self.online_store_config.enable_online_store
            or self.offline_store_config.enable_offline_store
        ):
            raise InvalidRequestError("enable at least one of the online and offline stores")
        if self.online_store_config.ttl_duration is not None:
            self.online_store_config.ttl_duration.check("online_store_config.ttl_duration")
        if self.description is not None and len(self.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidRequestError(
                f"description has {len(self.description)} characters; "
                f"the limit is {MAX_DESCRIPTION_CHARS}"
            )
        if len(self.tags) > MAX_TAGS:
            raise InvalidRequestError(f"{len(self.tags)} tags; the limit is {MAX_TAGS}")
        compat_bytes = len(json.dumps(self.compat_config))
        if compat_bytes > MAX_COMPAT_CONFIG_BYTES:
            raise InvalidRequestError(
                f"compat_config is {compat_bytes:,} bytes of JSON; the limit is "
                f"{MAX_COMPAT_CONFIG_BYTES:,}"
            )
        if self.aggregation_config is not None and not self.aggregations:
            raise InvalidRequestError("aggregation_config is set but aggregations is empty")
        self.aggregation_plan(types)

    def aggregation_plan(
        self, types: Mapping[str, FeatureType] | None = None, *, trusted: bool = False
    ) -> AggregationPlan:
        """The compiled aggregations (validated: InvalidRequestError naming the aggregation).
        `trusted`: a registered group, checked when it was made; its plan compiles even if it
        predates today's name rule and bounds (see `tessera.core.aggregation.spec.check`)."""
        from tessera.core.aggregation.spec import check

        if types is None:
            types = {fd.feature_name: fd.type() for fd in self.feature_definitions}
        return check(
            self.aggregations,
            types,
            record_identifier=self.record_identifier_feature_name,
            config=self.aggregation_config,
            trusted=trusted,
        )


# --- the name rule ----------------------------------------------------------------------------

#: Why two names that differ only in case collide.
CASE_RULE = "names are compared case-insensitively, as the offline store's SQL compares them"


def fold_name(name: str) -> str:
    """The form in which names are compared: DuckDB's identifiers (a group's view, a feature's
    column) are case-insensitive, so are Tessera's names."""
    return name.casefold()


def is_valid_name(name: str) -> bool:
    """Whether `name` follows the rule: 1-64 characters, ASCII letters and digits with '-' or
    '_' only between them (a full match: no trailing newline)."""
    return len(name) <= MAX_NAME_CHARS and NAME_PATTERN.match(name) is not None


def show_name(name: str) -> str:
    """`name` quoted for a message: control characters and lone surrogates escaped (a message
    must encode as UTF-8), a long name cut, with its length."""
    cut = len(name) > 2 * MAX_NAME_CHARS
    text = "".join(
        c if c.isprintable() else repr(c)[1:-1] for c in (name[:MAX_NAME_CHARS] if cut else name)
    )
    return f"'{text}...' ({len(name):,} characters)" if cut else f"'{text}'"


def check_name(field: str, value: str) -> None:
    """Refuse a name (a group's, a feature's, an aggregation's) that breaks the rule."""
    if not is_valid_name(value):
        raise InvalidRequestError(f"{field} {show_name(value)} is not valid; allowed: {NAME_RULE}")


def check_column_name(field: str, value: str) -> None:
    """A name that becomes an offline column (a feature's, an aggregation's): valid, and not
    one of the offline store's own columns in any case."""
    from tessera.core.offline_layout import RESERVED_NAMES, RESERVED_PREFIX

    check_name(field, value)
    key = fold_name(value)
    if key in RESERVED_NAMES or key.startswith(RESERVED_PREFIX):
        raise InvalidRequestError(
            f"{field} '{value}' is reserved for the offline store's columns; "
            f"reserved: {', '.join(sorted(RESERVED_NAMES))} and names starting with "
            f"'{RESERVED_PREFIX}', in any case ({CASE_RULE})"
        )


def check_feature_definitions(
    definitions: list[FeatureDefinition],
    existing: tuple[str, ...] | list[str],
    aggregations: tuple[str, ...] | list[str] = (),
) -> dict[str, FeatureType]:
    """Types of the given definitions, checking each name and refusing a name equal to, or
    differing only in case from, another of them (InvalidRequestError) or one the group has:
    an `existing` feature or an aggregation (ConflictError)."""
    types: dict[str, FeatureType] = {}
    given: dict[str, str] = {}
    features = {fold_name(n): n for n in existing}
    aggregates = {fold_name(n): n for n in aggregations}
    for d in definitions:
        name = d.feature_name
        check_column_name("feature_name", name)
        key = fold_name(name)
        if key in given:
            if given[key] == name:
                raise InvalidRequestError(f"feature '{name}' is defined twice")
            raise InvalidRequestError(
                f"feature '{name}' and feature '{given[key]}' differ only in case; {CASE_RULE}"
            )
        if key in features:
            if features[key] == name:
                raise ConflictError(
                    f"feature '{name}' already exists; features can be added, "
                    "not redefined or removed"
                )
            raise ConflictError(
                f"feature '{name}' differs from the group's feature '{features[key]}' only in "
                f"case; {CASE_RULE}"
            )
        if key in aggregates:
            same = "" if aggregates[key] == name else f" ('{aggregates[key]}', in any case)"
            raise ConflictError(
                f"feature '{name}' would have the name of an aggregation feature of the "
                f"group{same}; choose another name"
            )
        given[key] = name
        types[name] = d.type()
        check_feature_metadata(name, d.description, d.parameters)
    return types


def check_feature_metadata(
    feature: str, description: str | None, parameters: Mapping[str, str]
) -> None:
    """Refuse a feature description past 255 characters, more than 25 parameters, or a
    parameter key or value breaking `PARAMETER_RULE` (InvalidRequestError naming it)."""
    if description is not None and len(description) > MAX_FEATURE_DESCRIPTION_CHARS:
        raise InvalidRequestError(
            f"feature '{feature}': description has {len(description)} characters; "
            f"the limit is {MAX_FEATURE_DESCRIPTION_CHARS}"
        )
    if len(parameters) > MAX_FEATURE_PARAMETERS:
        raise InvalidRequestError(
            f"feature '{feature}' would have {len(parameters)} parameters; "
            f"the limit is {MAX_FEATURE_PARAMETERS}"
        )
    for k, v in parameters.items():
        for what, text in (("key", k), ("value", v)):
            if not _is_parameter_text(text):
                raise InvalidRequestError(
                    f"feature '{feature}': parameter {what} {show_name(text)} is not valid; "
                    f"allowed: {PARAMETER_RULE}"
                )


def _is_parameter_text(text: str) -> bool:
    # SageMaker's pattern `[\p{L}\p{Z}\p{N}_.:/=+\-]*`: Unicode letters, separators, numbers.
    return 1 <= len(text) <= MAX_PARAMETER_CHARS and all(
        c in "_.:/=+-" or unicodedata.category(c)[0] in "LZN" for c in text
    )


def _check_key_feature(
    field: str, name: str, types: dict[str, FeatureType], allowed: tuple[FeatureType, ...]
) -> None:
    if name not in types:
        raise InvalidRequestError(
            f"{field} {show_name(name)} is not among feature_definitions; "
            f"known: {', '.join(types)}"
        )
    if types[name] not in allowed:
        raise InvalidRequestError(
            f"{field} '{name}' has type {types[name]}; allowed: "
            + " or ".join(str(t) for t in allowed)
        )


class FeatureMetadataUpdate(_Model):
    """A change of one feature's metadata: `description` replaces the description (None: kept;
    "": cleared), `parameter_additions` sets parameters, `parameter_removals` removes keys (a
    key not set is ignored)."""

    description: str | None = None
    parameter_additions: dict[str, str] = {}
    parameter_removals: list[str] = []

    def apply(self, feature: FeatureDefinition) -> FeatureDefinition:
        """The feature with this change made; InvalidRequestError for a key both added and
        removed, or metadata past its bounds (`check_feature_metadata`)."""
        name = feature.feature_name
        both = sorted(set(self.parameter_additions) & set(self.parameter_removals))
        if both:
            raise InvalidRequestError(
                f"feature '{name}': parameter {', '.join(both)} is both added and removed"
            )
        for removal in self.parameter_removals:
            if not _is_parameter_text(removal):
                raise InvalidRequestError(
                    f"feature '{name}': parameter key {show_name(removal)} is not valid; "
                    f"allowed: {PARAMETER_RULE}"
                )
        parameters = {
            k: v for k, v in feature.parameters.items() if k not in self.parameter_removals
        }
        parameters.update(self.parameter_additions)
        description = feature.description
        if self.description is not None:
            description = self.description or None
        check_feature_metadata(name, description, parameters)
        return feature.model_copy(update={"description": description, "parameters": parameters})


class FeatureGroupUpdate(_Model):
    """PATCH body: features can be added (a new schema version), never removed or retyped; the
    description, the online store's default TTL (applies to records written after the change)
    and features' metadata can be changed (`feature_metadata`: feature name -> change);
    `compat_config` entries replace those of the definition's, objects merged one level down."""

    feature_additions: list[FeatureDefinition] = []
    description: str | None = None
    ttl_duration: TtlDuration | None = None
    feature_metadata: dict[str, FeatureMetadataUpdate] = {}
    compat_config: dict[str, Any] = {}
    drift_psi_threshold: float | None = Field(None, gt=0)

    def apply(self, d: FeatureGroupDefinition, group_name: str) -> FeatureGroupDefinition:
        """The definition `d` with this update made (not yet `check()`ed); NotFoundError for
        metadata of a feature the group (with its additions) does not have."""
        features = [*d.feature_definitions, *self.feature_additions]
        by_name = {f.feature_name: i for i, f in enumerate(features)}
        for name, change in self.feature_metadata.items():
            i = by_name.get(name)
            if i is None:
                raise NotFoundError(
                    f"feature {show_name(name)} is not in group '{group_name}'; "
                    f"known: {', '.join(by_name)}"
                )
            features[i] = change.apply(features[i])
        online = d.online_store_config
        if self.ttl_duration is not None:
            online = online.model_copy(update={"ttl_duration": self.ttl_duration})
        return d.model_copy(
            update={
                "feature_definitions": features,
                "description": self.description if self.description is not None
                else d.description,
                "online_store_config": online,
                "compat_config": _merged(d.compat_config, self.compat_config),
                "drift_psi_threshold": self.drift_psi_threshold
                if self.drift_psi_threshold is not None else d.drift_psi_threshold,
            }
        )


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s entries over `old`'s, objects merged one level down (a changed StorageType keeps
    the SecurityConfig sent before it)."""
    out = dict(old)
    for k, v in new.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class FeatureTimes(_Model):
    """When a feature was added to its group and when its definition or metadata last changed
    (seconds since the epoch)."""

    creation_time: float
    last_modified_time: float


class FeatureGroup(_Model):
    """A registered feature group: the definition plus what the registry assigns."""

    definition: FeatureGroupDefinition
    feature_group_id: int
    version: int = 1
    creation_time: float
    last_modified_time: float
    #: Per feature; a group stored before these were kept has none: `times_of` falls back.
    feature_times: dict[str, FeatureTimes] = {}

    @property
    def name(self) -> str:
        return self.definition.feature_group_name

    def times_of(self, feature: str) -> FeatureTimes:
        """The feature's times (the group's creation time when none were recorded)."""
        times = self.feature_times.get(feature)
        if times is None:
            return FeatureTimes(
                creation_time=self.creation_time, last_modified_time=self.creation_time
            )
        return times

    def describe(self) -> dict[str, object]:
        """The JSON shape of DescribeFeatureGroup."""
        out = self.definition.model_dump(mode="json")
        if self.definition.aggregations:
            from tessera.core.aggregation.spec import format_duration

            try:
                plan = self.definition.aggregation_plan(trusted=True)
            except InvalidRequestError:
                plan = None  # a quarantined group's: still listed, described and deletable
            if plan is not None:
                out["aggregation_resolved"] = {
                    "tile_size": format_duration(plan.tile_us),
                    "lateness": format_duration(plan.lateness_us),
                    "output_types": {a.name: a.output_type for a in plan.aggregations.values()},
                }
        out.update(
            feature_group_status="Created",
            version=self.version,
            creation_time=self.creation_time,
            last_modified_time=self.last_modified_time,
        )
        return out


# --- the hot path's view ----------------------------------------------------------------------

# The FeatureValue oneof field each type is carried in.
_ONEOF = {
    (ScalarType.INTEGRAL, None): "int_value",
    (ScalarType.FRACTIONAL, None): "float_value",
    (ScalarType.STRING, None): "string_value",
    (ScalarType.INTEGRAL, CollectionType.LIST): "int_list",
    (ScalarType.FRACTIONAL, CollectionType.LIST): "float_list",
    (ScalarType.STRING, CollectionType.LIST): "string_list",
    (ScalarType.INTEGRAL, CollectionType.SET): "int_list",
    (ScalarType.FRACTIONAL, CollectionType.SET): "float_list",
    (ScalarType.STRING, CollectionType.SET): "string_list",
    (ScalarType.FRACTIONAL, CollectionType.VECTOR): "vector_value",
}


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    type: FeatureType
    oneof: str  # the FeatureValue field that carries this feature


@dataclass(frozen=True, slots=True)
class CompiledSchema:
    """A feature group as the request path needs it: lookups, not models."""

    group_name: str
    group_id: int
    features: dict[str, FeatureSpec]
    record_identifier: FeatureSpec
    event_time: FeatureSpec
    default_ttl_s: int | None
    online: bool
    offline: bool
    #: The group's aggregation features compiled; None when it declares none.
    aggregations: AggregationPlan | None = None

    @classmethod
    def of(cls, group: FeatureGroup) -> CompiledSchema:
        d = group.definition
        features = {}
        for fd in d.feature_definitions:
            ftype = fd.type()
            features[fd.feature_name] = FeatureSpec(
                fd.feature_name, ftype, _ONEOF[(ftype.scalar, ftype.collection)]
            )
        ttl = d.online_store_config.ttl_duration
        return cls(
            group_name=d.feature_group_name,
            group_id=group.feature_group_id,
            features=features,
            record_identifier=features[d.record_identifier_feature_name],
            event_time=features[d.event_time_feature_name],
            default_ttl_s=ttl.seconds if ttl else None,
            online=d.online_store_config.enable_online_store,
            offline=d.offline_store_config.enable_offline_store,
            aggregations=d.aggregation_plan(trusted=True) if d.aggregations else None,
        )

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> CompiledSchema:
        """The schema of a group from its HTTP description (DescribeFeatureGroup JSON), for
        clients that validate before writing (bulk import, the Kafka consumer)."""
        fields = FeatureGroupDefinition.model_fields
        definition = FeatureGroupDefinition.model_validate(
            {k: v for k, v in description.items() if k in fields}
        )
        group = FeatureGroup(
            definition=definition,
            feature_group_id=0,  # the server's business: writes name the group
            version=int(description.get("version", 1)),
            creation_time=float(description.get("creation_time", 0.0)),
            last_modified_time=float(description.get("last_modified_time", 0.0)),
        )
        return cls.of(group)

    def unknown_feature(self, name: str) -> InvalidRequestError:
        names = list(self.features)
        if self.aggregations is not None:
            names += self.aggregations.names
        known = ", ".join(names)
        return InvalidRequestError(
            f"feature '{name}' is not in group '{self.group_name}'; known: {known}"
        )
