"""Key encoding of the online store: `group_id | record_id` so a group is one contiguous range."""

from __future__ import annotations

import struct

from tessera.core.errors import InvalidRequestError
from tessera.core.schema import CompiledSchema, ScalarType

MAX_RECORD_ID_BYTES = 2048  # like SageMaker: 2 KB
_GROUP = struct.Struct(">I")


def group_prefix(group_id: int) -> bytes:
    """The key prefix of a group; prefix(group_id + 1) is the end of its range."""
    return _GROUP.pack(group_id)


def record_key(group_id: int, record_id: str) -> bytes:
    return _GROUP.pack(group_id) + record_id.encode()


def aggregate_key(group_id: int, stream_id: int, key_text: str) -> bytes:
    """The key of one aggregation stream's tile state for one key value (column family
    "aggregates"): a group's aggregates are one contiguous range, like its records."""
    return _GROUP.pack(group_id) + bytes((stream_id,)) + key_text.encode()


def normalize_record_id(schema: CompiledSchema, text: str) -> str:
    """The canonical string form of a record identifier given as text (GetRecord, DeleteRecord).

    An Integral identifier is written in decimal with no sign padding or leading zeros.
    """
    name = schema.record_identifier.name
    if schema.record_identifier.type.scalar is ScalarType.INTEGRAL:
        try:
            return str(int(text))
        except ValueError:
            raise InvalidRequestError(
                f"record identifier '{text[:64]}' is not an Integral; '{name}' is Integral"
            ) from None
    check_record_id(name, text)
    return text


def check_record_id(name: str, text: str) -> None:
    if not text:
        raise InvalidRequestError(f"record identifier '{name}' is empty")
    size = len(text.encode())
    if size > MAX_RECORD_ID_BYTES:
        raise InvalidRequestError(
            f"record identifier '{name}' is {size} bytes; the limit is {MAX_RECORD_ID_BYTES}"
        )
