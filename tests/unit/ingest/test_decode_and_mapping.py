"""Decoding message values and mapping them to records, validated with PutRecord's rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tessera.core.errors import InvalidRequestError, SerializationError
from tessera.core.records import validate_record
from tessera.core.values import from_record, to_record
from tessera.ingest.config import TopicConfig
from tessera.ingest.decode import ProtobufDecoder, decode_json, decode_record, decoder_for
from tessera.ingest.mapping import RecordMapper
from tests.unit.ingest.fakes import schema

TS = (1, 1_700_000_000_500)  # (TIMESTAMP_CREATE_TIME, ms)


def topic(**kw: Any) -> TopicConfig:
    return TopicConfig(topic="t", feature_group="users", **kw)


def mapped(value: Any, key: bytes | None = None, s: Any = None, **kw: Any) -> dict[str, Any]:
    s = s or schema()
    record = RecordMapper(topic(**kw)).to_record(value, key, TS, s)
    validate_record(s, record)
    return from_record(record)


# --- decoding ------------------------------------------------------------------------------------


def test_json_objects_decode_and_anything_else_is_undecodable() -> None:
    assert decode_json(b'{"a": 1, "b": [1.5]}') == {"a": 1, "b": [1.5]}
    with pytest.raises(SerializationError, match="not valid JSON"):
        decode_json(b"{nope")
    with pytest.raises(SerializationError, match="not valid JSON"):
        decode_json(b"\xff\xfe")
    with pytest.raises(SerializationError, match="a JSON array; expected a JSON object"):
        decode_json(b"[1]")


def test_tessera_records_decode_as_they_are() -> None:
    record = to_record({"user_id": "u1", "ts": 1.0})
    assert decode_record(record.SerializeToString()) == record
    with pytest.raises(SerializationError, match="not a valid tessera.v1.Record"):
        decode_record(b"\xff\xff\xff")
    assert decoder_for(topic(format="protobuf")) is decode_record


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user message type compiled by protoc (grpcio-tools) into a FileDescriptorSet."""
    d = tmp_path_factory.mktemp("proto")
    (d / "events.proto").write_text("""
        syntax = "proto3";
        package shop.v1;
        import "google/protobuf/timestamp.proto";
        enum Tier { TIER_UNSPECIFIED = 0; GOLD = 1; }
        message Stats { int64 clicks = 1; }
        message Click {
          string user = 1;
          google.protobuf.Timestamp at = 2;
          Stats stats = 3;
          int64 zero = 4;
          optional int64 unset = 5;
          repeated string tags = 6;
          Tier tier = 7;
        }
    """)
    out = d / "events.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{d}", "--include_imports",
         f"--descriptor_set_out={out}", str(d / "events.proto")],
        check=True,
    )
    return out


def test_user_protobuf_messages_decode_to_their_fields(descriptor_set: Path) -> None:
    decoder = ProtobufDecoder.from_descriptor_set(descriptor_set, "shop.v1.Click")
    msg = decoder._cls(user="u1", stats={"clicks": 3}, tags=["a", "b"], tier=1)
    msg.at.seconds, msg.at.nanos = 1_700_000_000, 500_000_000
    value = decoder(msg.SerializeToString())
    assert value == {"user": "u1", "at": 1_700_000_000.5, "stats": {"clicks": 3}, "zero": 0,
                     "tags": ["a", "b"], "tier": "GOLD"}
    with pytest.raises(SerializationError, match="not a valid shop.v1.Click"):
        decoder(b"\xff\xff\xff")
    with pytest.raises(InvalidRequestError, match="'shop.v1.Nope' is not in .*known: .*shop.v1.Click"):
        ProtobufDecoder.from_descriptor_set(descriptor_set, "shop.v1.Nope")


def test_user_protobuf_fields_map_to_features(descriptor_set: Path) -> None:
    t = topic(format="protobuf", protobuf_message="shop.v1.Click", descriptor_set=descriptor_set,
              fields={"user_id": "user", "ts": "at", "clicks": "stats.clicks"},
              unknown_fields="ignore")
    decoder = decoder_for(t)
    assert isinstance(decoder, ProtobufDecoder)
    msg = decoder._cls(user="u9", stats={"clicks": 4})
    msg.at.seconds = 1_700_000_000
    record = RecordMapper(t).to_record(decoder(msg.SerializeToString()), None, TS, schema())
    validate_record(schema(), record)
    assert from_record(record) == {"user_id": "u9", "ts": 1_700_000_000.0, "clicks": 4}


# --- mapping -------------------------------------------------------------------------------------


def test_json_fields_map_to_features_of_the_same_name() -> None:
    assert mapped({"user_id": "u1", "ts": 5, "clicks": 2}) == {
        "user_id": "u1", "ts": 5.0, "clicks": 2}  # an int event time is normalized to float


def test_a_mapping_renames_and_reaches_into_nested_fields() -> None:
    value = {"who": "u1", "when": 5.0, "stats": {"clicks": 7}}
    assert mapped(value, fields={"user_id": "who", "ts": "when", "clicks": "stats.clicks"}) == {
        "user_id": "u1", "ts": 5.0, "clicks": 7}


def test_the_record_id_from_the_key_and_the_event_time_from_the_kafka_timestamp() -> None:
    assert mapped({"clicks": 1}, key=b"u7", record_id="key", event_time="timestamp") == {
        "clicks": 1, "user_id": "u7", "ts": 1_700_000_000.5}
    assert mapped({"user_id": "u", "clicks": 1}, fields={"ts": "$timestamp"})["ts"] == (
        1_700_000_000.5)


def test_an_integral_record_id_from_the_key_is_parsed() -> None:
    from tessera.core.schema import (
        CompiledSchema,
        FeatureDefinition,
        FeatureGroup,
        FeatureGroupDefinition,
    )

    d = FeatureGroupDefinition(
        feature_group_name="n", record_identifier_feature_name="id", event_time_feature_name="t",
        feature_definitions=[FeatureDefinition.of("id", "Integral"),
                             FeatureDefinition.of("t", "String")])
    s = CompiledSchema.of(FeatureGroup(definition=d, feature_group_id=1, creation_time=0,
                                       last_modified_time=0))
    assert mapped({}, key=b"42", s=s, record_id="key", event_time="timestamp") == {
        "id": 42, "t": "2023-11-14T22:13:20.500000Z"}


def test_unknown_fields_are_refused_like_putrecord_or_ignored() -> None:
    s = schema()
    record = RecordMapper(topic()).to_record({"user_id": "u", "ts": 1.0, "x": 1}, None, TS, s)
    with pytest.raises(InvalidRequestError,
                       match="^record: feature 'x' is not in group 'users'; known: user_id"):
        validate_record(s, record, where="record")
    assert mapped({"user_id": "u", "ts": 1.0, "x": 1}, unknown_fields="ignore") == {
        "user_id": "u", "ts": 1.0}


@pytest.mark.parametrize(("value", "message"), [
    ({"user_id": "u", "ts": 1.0, "clicks": True}, "a bool is not a feature type"),
    ({"user_id": "u", "ts": 1.0, "clicks": {"a": 1}}, "dict is not a feature value"),
    ({"user_id": "u", "ts": 1.0, "clicks": 2**70}, "is not a valid value"),
])
def test_values_that_are_no_feature_values_are_refused(value: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        RecordMapper(topic()).to_record(value, None, TS, schema())


def test_a_record_value_is_renamed_and_completed_from_the_key() -> None:
    record = to_record({"uid": "ignored", "when": 3.0, "clicks": 1})
    s = schema()
    out = RecordMapper(topic(format="protobuf", fields={"ts": "when"}, record_id="key",
                             unknown_fields="ignore")).to_record(record, b"u5", TS, s)
    validate_record(s, out)
    assert from_record(out) == {"ts": 3.0, "clicks": 1, "user_id": "u5"}


def test_json_numbers_keep_putrecords_type_rules() -> None:
    record = RecordMapper(topic()).to_record(
        json.loads('{"user_id": "u", "ts": 1.0, "clicks": 1.5}'), None, TS, schema())
    with pytest.raises(InvalidRequestError,
                       match="feature 'clicks' has type Integral; got a Fractional"):
        validate_record(schema(), record, where="record")
