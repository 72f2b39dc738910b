"""The fast encoder's Integral shortcuts (cached 1-2 byte varints, computed 3-byte ones) write
the bytes protobuf writes, at every length boundary."""

from __future__ import annotations

import pytest

from tessera.core.records import validate_record
from tessera.ingest.encode import FastEncoder
from tessera.ingest.mapping import record_from_values
from tests.unit.ingest.fakes import schema

SCHEMA = schema()
BOUNDARIES = [0, 1, 127, 128, 16383, 16384, 16385, (1 << 21) - 1, 1 << 21, (1 << 28) - 1,
              1 << 28, (1 << 63) - 1, -1, -(1 << 63)]


@pytest.mark.parametrize("clicks", BOUNDARIES)
def test_integrals_encode_like_protobuf(clicks: int) -> None:
    values = {"user_id": "u", "ts": 1.5, "clicks": clicks}
    fast = FastEncoder(SCHEMA, None).encode(values)
    assert fast is not None
    assert fast == validate_record(SCHEMA, record_from_values(values))
    assert fast.payload == record_from_values(values).SerializeToString()
