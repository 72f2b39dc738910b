"""What the ingest consumer is told: `IngestConfig` (the Kafka connection, batching, retries) with
one `TopicConfig` per topic -> feature group.

Built by the CLI from its flags or from a file (JSON, TOML, or YAML when PyYAML is installed), and
by the server from its settings for the embedded consumer. Everything below takes these objects.

    bootstrap_servers = "127.0.0.1:9092"
    group_id = "tessera-ingest"

    [[topics]]
    topic = "clicks"
    feature_group = "users"
    dead_letter_topic = "clicks.dlq"
    fields = { user_id = "$key", ts = "$timestamp", clicks = "stats.clicks" }
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.core.errors import InvalidRequestError

#: Special sources in `TopicConfig.fields`: the message key, and the Kafka message timestamp.
KEY_SOURCE = "$key"
TIMESTAMP_SOURCE = "$timestamp"

Format = Literal["json", "protobuf"]
UnknownFields = Literal["reject", "ignore"]
#: librdkafka property values as confluent-kafka takes them.
KafkaProperty = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicConfig(_Model):
    """One topic written into one feature group."""

    topic: str = Field(min_length=1)
    feature_group: str = Field(min_length=1)
    #: Where bad messages go (default: '<topic>.dlq').
    dead_letter_topic: str | None = None
    #: Consumer group of this topic (default: IngestConfig.group_id).
    group_id: str | None = None
    format: Format = "json"
    #: protobuf only: the fully-qualified message type of the value (default tessera.v1.Record)
    #: and the FileDescriptorSet file (`protoc --include_imports --descriptor_set_out`) defining it.
    protobuf_message: str | None = None
    descriptor_set: Path | None = None
    #: feature name -> where its value comes from: a field of the message ('a.b' for a nested
    #: field), '$key' (the message key) or '$timestamp' (the Kafka timestamp). Features not
    #: listed are read from the field of the same name.
    fields: dict[str, str] = {}
    #: Shorthands: 'key' reads the record identifier from the message key, 'timestamp' the
    #: event time from the Kafka timestamp (as fields = {<id feature> = "$key"} would).
    record_id: Literal["field", "key"] = "field"
    event_time: Literal["field", "timestamp"] = "field"
    #: Message fields that are neither a feature nor mapped: 'reject' dead-letters the message
    #: (as PutRecord refuses an unknown feature), 'ignore' drops the field.
    unknown_fields: UnknownFields = "reject"
    #: Time to live of the records in seconds (default: the group's default TTL).
    ttl_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TopicConfig:
        if self.descriptor_set is not None and self.protobuf_message is None:
            raise ValueError("descriptor_set needs protobuf_message (the message type to decode)")
        if self.protobuf_message is not None and self.format != "protobuf":
            raise ValueError("protobuf_message is only for format 'protobuf'")
        if (
            self.protobuf_message not in (None, "tessera.v1.Record")
            and self.descriptor_set is None
        ):
            raise ValueError(
                f"protobuf_message '{self.protobuf_message}' needs descriptor_set (a "
                "FileDescriptorSet file that defines it)"
            )
        for feature, source in self.fields.items():
            if not source or source.startswith("$") and source not in (
                KEY_SOURCE,
                TIMESTAMP_SOURCE,
            ):
                raise ValueError(
                    f"fields['{feature}'] = '{source}' is not a source; allowed: a message field "
                    f"name ('a.b' for a nested one), '{KEY_SOURCE}' or '{TIMESTAMP_SOURCE}'"
                )
        return self

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic in effect."""
        return self.dead_letter_topic or f"{self.topic}.dlq"


class IngestConfig(_Model):
    """The ingest consumer's configuration: a Kafka cluster and the topics it reads."""

    bootstrap_servers: str = Field(min_length=1)
    #: Default consumer group of every topic (a TopicConfig may name its own).
    group_id: str = "tessera-ingest"
    topics: list[TopicConfig] = Field(min_length=1)
    #: A batch is written when it holds this many messages, or this long after its first one
    #: (one batch is written while the next one gathers).
    batch_max_records: int = Field(5000, ge=1)
    batch_max_ms: int = Field(25, ge=1)
    #: A message value larger than this is dead-lettered as oversized without being decoded.
    max_message_bytes: int = Field(1024 * 1024, ge=1)
    #: Backoff of the retried writes while the store (or the dead-letter topic) is unavailable.
    retry_initial_backoff_s: float = Field(0.1, gt=0)
    retry_max_backoff_s: float = Field(5.0, gt=0)
    #: On shutdown, how long to keep trying to write the last batch before giving up on it (it
    #: is then left uncommitted and read again by the next consumer).
    drain_timeout_s: float = Field(10.0, ge=0)
    #: The feature group's schema is fetched again this often (added features show up).
    schema_refresh_s: float = Field(30.0, gt=0)
    #: librdkafka's default (45 s) makes a restarted member wait long for its partitions.
    session_timeout_ms: int = Field(6000, ge=1)
    #: Extra librdkafka properties (security.protocol, sasl.*, ...) for the consumers and for
    #: the dead-letter producer.
    consumer: dict[str, KafkaProperty] = {}
    producer: dict[str, KafkaProperty] = {}

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        seen: set[tuple[str, str]] = set()
        for t in self.topics:
            key = (t.topic, t.group_id or self.group_id)
            if key in seen:
                raise ValueError(
                    f"topic '{t.topic}' is listed twice for consumer group '{key[1]}'; give one "
                    "of them its own group_id"
                )
            seen.add(key)
        return self

    def group_id_of(self, topic: TopicConfig) -> str:
        return topic.group_id or self.group_id


def load_config(path: Path) -> IngestConfig:
    """An IngestConfig from a .json, .toml, .yaml or .yml file; InvalidRequestError naming the
    file and the field when it is not valid."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read ingest config {path}: {exc.strerror}") from exc
    data = _parse(path, text)
    return config_from_dict(data, str(path))


def config_from_dict(data: Any, where: str = "ingest config") -> IngestConfig:
    """An IngestConfig from parsed data; InvalidRequestError listing what is wrong."""
    try:
        return IngestConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise InvalidRequestError(f"{where}: {problems}") from None


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped, unused-ignore]
            except ImportError:
                raise InvalidRequestError(
                    f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use .toml or "
                    ".json"
                ) from None
            try:
                return yaml.safe_load(text)
            except Exception as exc:  # yaml.YAMLError, without importing yaml for the type
                raise InvalidRequestError(f"{path} is not valid YAML: {exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequestError(f"{path} is not valid {suffix[1:].upper()}: {exc}") from None
    raise InvalidRequestError(
        f"{path}: unknown config file type '{suffix}'; allowed: .json, .toml, .yaml, .yml"
    )
