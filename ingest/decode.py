"""Message values to Python: JSON objects, `tessera.v1.Record` messages, and user Protobuf
messages described by a FileDescriptorSet.

A decoder returns a dict of field -> value (JSON, user messages) or a wire Record (which needs no
conversion); anything it cannot decode raises SerializationError, and the message is then
dead-lettered as undecodable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from tessera.core.errors import InvalidRequestError, SerializationError
from tessera.ingest.config import TopicConfig
from tessera.proto.v1 import feature_store_pb2 as pb

Decoded = dict[str, Any] | pb.Record
Decoder = Callable[[bytes], Decoded]

RECORD_TYPE = "tessera.v1.Record"
_raw_decode = json.JSONDecoder().raw_decode
_fast_decode = msgspec.json.Decoder().decode


def decoder_for(topic: TopicConfig) -> Decoder:
    """The decoder of a topic's values; InvalidRequestError for a bad descriptor set or type."""
    if topic.format == "json":
        return decode_json
    if topic.protobuf_message in (None, RECORD_TYPE):
        return decode_record
    if topic.descriptor_set is None:  # the config refuses this; here for the type checker
        raise InvalidRequestError(
            f"protobuf_message '{topic.protobuf_message}' needs a descriptor_set"
        )
    return ProtobufDecoder.from_descriptor_set(topic.descriptor_set, topic.protobuf_message)


def decode_json(value: bytes) -> dict[str, Any]:
    """A JSON object (UTF-8) to a dict.

    msgspec's compiled decoder takes the common case; whatever it refuses (NaN and Infinity,
    numbers past a double, lone surrogates, UTF-16/32, malformed text) goes to the standard
    library's decoder, which decides what is accepted and words the errors, as before."""
    try:
        obj = _fast_decode(value)
    except msgspec.MsgspecError:
        obj = decode_json_reference(value)
    if not isinstance(obj, dict):
        raise SerializationError(
            f"the value is a JSON {_json_kind(obj)}; expected a JSON object of field -> value"
        )
    return obj


def decode_json_objects(values: list[bytes | None], max_bytes: int
                        ) -> list[dict[str, Any]] | None:
    """Every value decoded by msgspec when each is a JSON object within `max_bytes`, without a
    Python call per message; None as soon as one is not (then each message is decoded on its
    own by `decode_json`, which words why it is refused)."""
    if None in values:
        return None
    present = cast(list[bytes], values)
    if present and max(map(len, present)) > max_bytes:
        return None
    try:
        objects = list(map(_fast_decode, present))
    except msgspec.MsgspecError:
        return None
    if set(map(type, objects)) - {dict}:
        return None
    return objects


def decode_json_reference(value: bytes) -> Any:
    """The standard library's reading of a message value (any JSON value), or
    SerializationError with its wording."""
    try:
        # The scanner itself, without json.loads' wrappers.
        text = value.decode()
        obj, end = _raw_decode(text)
        if end != len(text) and not text[end:].isspace():
            raise ValueError("extra data")
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        try:  # json.loads decides (leading whitespace is fine) and words the error
            obj = json.loads(value)
        except ValueError as exc:
            raise SerializationError(f"the value is not valid JSON: {exc}") from None
    return obj


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "array"
    if isinstance(obj, str):
        return "string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    return "number"


def decode_record(value: bytes) -> pb.Record:
    """A serialized tessera.v1.Record."""
    try:
        return pb.Record.FromString(value)
    except DecodeError as exc:
        raise SerializationError(f"the value is not a valid {RECORD_TYPE} message: {exc}") from None


class ProtobufDecoder:
    """A user message type (from a descriptor set) to a dict of its fields.

    Set fields are kept: a proto3 scalar without presence is kept even at its default (0 is a
    value), a field with presence (`optional`, messages) only when set, a repeated field only
    when non-empty. Nested messages become dicts (reach them with 'a.b' in the field mapping),
    enums their names, google.protobuf.Timestamp epoch seconds, wrapper types their value.
    """

    def __init__(self, message_class: type[Message]) -> None:
        self._cls = message_class
        self.type_name: str = message_class.DESCRIPTOR.full_name

    @classmethod
    def from_descriptor_set(cls, path: Path, type_name: str) -> ProtobufDecoder:
        try:
            fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot read descriptor set {path}: {exc.strerror}"
            ) from None
        except DecodeError:
            raise InvalidRequestError(
                f"{path} is not a FileDescriptorSet (make one with protoc --include_imports "
                "--descriptor_set_out=FILE)"
            ) from None
        pool = _pool_of(fds, path)
        try:
            desc = pool.FindMessageTypeByName(type_name)
        except KeyError:
            known = sorted(
                f"{f.package}.{m.name}" if f.package else m.name
                for f in fds.file
                for m in f.message_type
            )
            raise InvalidRequestError(
                f"message type '{type_name}' is not in {path}; known: {', '.join(known)}"
            ) from None
        return cls(message_factory.GetMessageClass(desc))

    def __call__(self, value: bytes) -> dict[str, Any]:
        try:
            msg = self._cls.FromString(value)
        except DecodeError as exc:
            raise SerializationError(
                f"the value is not a valid {self.type_name} message: {exc}"
            ) from None
        return message_to_dict(msg)


def _pool_of(fds: descriptor_pb2.FileDescriptorSet, path: Path) -> descriptor_pool.DescriptorPool:
    """A pool with the set's files, dependencies first; well-known types missing from the set
    (made without --include_imports) are taken from protobuf's own."""
    pool = descriptor_pool.DescriptorPool()
    files = {f.name: f for f in fds.file}
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        added.add(name)
        proto = files.get(name)
        if proto is None:
            try:
                known = descriptor_pool.Default().FindFileByName(name)
            except KeyError:
                raise InvalidRequestError(
                    f"{path} needs '{name}', which it does not hold; make it with protoc "
                    "--include_imports"
                ) from None
            proto = descriptor_pb2.FileDescriptorProto()
            known.CopyToProto(proto)
        for dep in proto.dependency:
            add(dep)
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{path}: file '{name}' is not valid: {exc}") from None

    for name in files:
        add(name)
    return pool


_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


def message_to_dict(msg: Message) -> dict[str, Any]:
    """The fields of a message as Python values (see ProtobufDecoder)."""
    out: dict[str, Any] = {}
    desc: Descriptor = cast(Descriptor, msg.DESCRIPTOR)
    for field in desc.fields:
        if field.is_repeated:
            values = getattr(msg, field.name)
            if not values:
                continue
            if _is_map(field):
                value_field = _message_type(field).fields_by_name["value"]
                out[field.name] = {k: _value(value_field, v) for k, v in values.items()}
            else:
                out[field.name] = [_value(field, v) for v in values]
        elif field.has_presence:
            if msg.HasField(field.name):
                out[field.name] = _value(field, getattr(msg, field.name))
        else:
            out[field.name] = _value(field, getattr(msg, field.name))
    return out


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and mt.GetOptions().map_entry


def _message_type(field: FieldDescriptor) -> Descriptor:
    mt = field.message_type
    if mt is None:
        raise SerializationError(f"field '{field.name}' has no message type")
    return mt


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = _message_type(field).full_name
        if name == "google.protobuf.Timestamp":
            return value.seconds + value.nanos / 1e9
        if name in _WRAPPERS:
            return value.value
        return message_to_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_type = field.enum_type
        enum_value = enum_type.values_by_number.get(value) if enum_type is not None else None
        return enum_value.name if enum_value is not None else value
    return value
