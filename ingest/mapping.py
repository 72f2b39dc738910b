"""Decoded messages to wire Records: which message field (or the key, or the Kafka timestamp)
feeds which feature.

Fields map to the features of the same name unless `TopicConfig.fields` says otherwise. The
result is validated afterwards by `tessera.core.records.validate_record`, so that a message is
accepted or refused with exactly PutRecord's rules and messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.core.errors import InvalidRequestError
from tessera.core.eventtime import to_iso
from tessera.core.schema import CompiledSchema, FeatureSpec, ScalarType
from tessera.core.values import fill_value
from tessera.ingest.config import KEY_SOURCE, TIMESTAMP_SOURCE, TopicConfig
from tessera.ingest.decode import Decoded
from tessera.proto.v1 import feature_store_pb2 as pb

#: confluent_kafka.TIMESTAMP_NOT_AVAILABLE: the message carries no timestamp.
TIMESTAMP_NOT_AVAILABLE = 0
#: Where validation errors say they are: PutRecord's word for its one record.
WHERE = "record"


class _Plan:
    """The mapping resolved against one schema."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        # Message fields read by the mapping (top-level names) are not features themselves,
        # nor are fields named like a feature the mapping feeds from elsewhere.
        self.consumed = {
            src.split(".", 1)[0] for src in fields.values() if not src.startswith("$")
        } | set(fields)
        self.paths = {
            feature: tuple(src.split(".")) for feature, src in fields.items()
            if not src.startswith("$")
        }
        # A Record's features renamed: source feature name -> feature name.
        self.renames = {src: f for f, src in fields.items() if not src.startswith("$")}
        self.reads_message = any(src.startswith("$") for src in fields.values())


class RecordMapper:
    """Builds the Record of one message from its decoded value, key and timestamp."""

    def __init__(self, topic: TopicConfig) -> None:
        self._fields = dict(topic.fields)
        self._id_from_key = topic.record_id == "key"
        self._time_from_timestamp = topic.event_time == "timestamp"
        self._ignore_unknown = topic.unknown_fields == "ignore"
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._last: tuple[CompiledSchema, _Plan] | None = None  # asked twice per message

    def _plan(self, schema: CompiledSchema) -> _Plan:
        last = self._last
        if last is not None and last[0] is schema:
            return last[1]
        plan = self._plan_of(schema)
        self._last = (schema, plan)
        return plan

    def _plan_of(self, schema: CompiledSchema) -> _Plan:
        names = (schema.record_identifier.name, schema.event_time.name)
        plan = self._plans.get(names)
        if plan is None:
            fields = dict(self._fields)
            if self._id_from_key:
                fields[names[0]] = KEY_SOURCE
            if self._time_from_timestamp:
                fields[names[1]] = TIMESTAMP_SOURCE
            plan = self._plans[names] = _Plan(fields)
        return plan

    def renames(self, schema: CompiledSchema) -> bool:
        """Whether any feature comes from elsewhere than the message field of its own name (a
        mapping, the key, the timestamp): else `flatten` is the decoded object itself, less
        its unknown fields when those are ignored."""
        return bool(self._plan(schema).fields)

    @property
    def ignores_unknown(self) -> bool:
        return self._ignore_unknown

    def reads_message(self, schema: CompiledSchema) -> bool:
        """Whether features come from the message key or timestamp (else they need not be read)."""
        return self._plan(schema).reads_message

    def flatten(
        self,
        decoded: dict[str, Any],
        key: bytes | None,
        timestamp: tuple[int, int],
        schema: CompiledSchema,
    ) -> dict[str, Any]:
        """Feature name -> Python value (None: absent) of a decoded message: the message's own
        fields by name, then the mapped ones. Without a mapping, the decoded dict itself."""
        plan = self._plan(schema)
        if not plan.fields and not self._ignore_unknown:
            return decoded
        consumed = plan.consumed
        known = schema.features
        ignore = self._ignore_unknown
        flat = {
            name: value for name, value in decoded.items()
            if name not in consumed and (not ignore or name in known)
        }
        for feature, source in plan.fields.items():
            if source == KEY_SOURCE:
                flat[feature] = _from_key(key, schema.features.get(feature))
            elif source == TIMESTAMP_SOURCE:
                flat[feature] = _from_timestamp(timestamp, schema.features.get(feature))
            else:
                flat[feature] = _lookup(decoded, plan.paths[feature])
        return flat

    def to_record(
        self,
        decoded: Decoded,
        key: bytes | None,
        timestamp: tuple[int, int],
        schema: CompiledSchema,
    ) -> pb.Record:
        """The message as a Record (not yet validated); InvalidRequestError for a value that
        is no feature value at all (a JSON object, true/false, an out-of-range integer)."""
        if not isinstance(decoded, pb.Record):
            return record_from_values(self.flatten(decoded, key, timestamp, schema))
        plan = self._plan(schema)
        record = self._from_record(decoded, schema, plan)
        add = record.features.add
        for feature, source in plan.fields.items():
            if source == KEY_SOURCE:
                value: Any = _from_key(key, schema.features.get(feature))
            elif source == TIMESTAMP_SOURCE:
                value = _from_timestamp(timestamp, schema.features.get(feature))
            else:
                continue  # a Record's features were renamed in place
            if value is not None:
                _fill(add(feature_name=feature), value)
        return record

    def _from_record(self, decoded: pb.Record, schema: CompiledSchema, plan: _Plan) -> pb.Record:
        if not plan.fields and not self._ignore_unknown:
            return decoded
        record = pb.Record()
        for fv in decoded.features:
            name = fv.feature_name
            if name in plan.renames:
                fv.feature_name = plan.renames[name]
            elif name in plan.fields or (self._ignore_unknown and name not in schema.features):
                continue
            record.features.append(fv)
        return record


def record_from_values(values: Mapping[str, Any]) -> pb.Record:
    """A wire Record of feature name -> value (None: left out), naming a bad value's feature."""
    record = pb.Record()
    add = record.features.add
    for name, value in values.items():
        if value is not None:
            _fill(add(feature_name=name), value)
    return record


def _fill(fv: pb.FeatureValue, value: Any) -> None:
    try:
        fill_value(fv, value)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{WHERE}: {exc.message}") from None
    except (ValueError, TypeError) as exc:  # protobuf's range checks (an int beyond int64)
        raise InvalidRequestError(
            f"{WHERE}: feature '{fv.feature_name}': {str(value)[:64]} is not a valid value ({exc})"
        ) from None


def _lookup(values: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = values
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _from_key(key: bytes | None, spec: FeatureSpec | None) -> Any:
    """The message key as the feature's type: Integral and Fractional keys are decimal text."""
    if key is None:
        return None  # validation then names the missing feature
    try:
        text = key.decode()
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{WHERE}: the message key is not UTF-8 text") from None
    if spec is not None and spec.type.collection is None:
        try:
            if spec.type.scalar is ScalarType.INTEGRAL:
                return int(text)
            if spec.type.scalar is ScalarType.FRACTIONAL:
                return float(text)
        except ValueError:
            pass  # left as text: validation names the feature, its type and what it got
    return text


def _from_timestamp(timestamp: tuple[int, int], spec: FeatureSpec | None) -> Any:
    """The Kafka timestamp (ms) as epoch seconds, or as ISO-8601 for a String feature."""
    kind, ms = timestamp
    if kind == TIMESTAMP_NOT_AVAILABLE or ms < 0:
        return None
    if spec is not None and spec.type.collection is None:
        if spec.type.scalar is ScalarType.STRING:
            return to_iso(ms * 1000)
        if spec.type.scalar is ScalarType.INTEGRAL:
            return ms
    return ms / 1000.0
