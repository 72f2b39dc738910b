"""Protobuf wire primitives for the few messages Tessera encodes by hand (responses spliced from
stored bytes, bulk requests from pre-encoded records). Tests check the results parse as the real
messages."""

from __future__ import annotations

_SMALL = [bytes((i,)) for i in range(0x80)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field: int, data: bytes | memoryview) -> bytes:
    """A length-delimited field (field numbers below 16): tag, varint length, bytes."""
    return bytes(((field << 3) | 2,)) + varint(len(data)) + data


def int_field(field: int, value: int) -> bytes:
    """A varint field (field numbers below 16) of a non-negative int."""
    return bytes((field << 3,)) + varint(value)
