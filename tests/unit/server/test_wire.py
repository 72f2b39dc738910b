"""The hand-encoded read responses parse as the real protobuf messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tessera.core import wire as core_wire
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import wire

expiry = st.none() | st.integers(min_value=0, max_value=2**63 - 1)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_matches_protobuf(value: int) -> None:
    msg = pb.GetRecordResponse(expires_at_us=value & (2**63 - 1))
    assert core_wire.int_field(2, value & (2**63 - 1)) == msg.SerializeToString()


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers(-5, 5) | st.text(max_size=300),
                       min_size=1, max_size=20), expiry)
def test_get_record_response_parses(values: dict, expires_at_us: int | None) -> None:
    payload = to_record(values).SerializeToString()
    resp = pb.GetRecordResponse.FromString(wire.get_record_response(memoryview(payload), expires_at_us))
    assert resp.record.SerializeToString() == payload
    assert resp.HasField("expires_at_us") == (expires_at_us is not None)
    if expires_at_us is not None:
        assert resp.expires_at_us == expires_at_us


@given(st.text(max_size=100), st.text(max_size=300), expiry)
def test_batch_result_detail_parses(group: str, record_id: str, expires_at_us: int | None) -> None:
    payload = to_record({"a": 1, "b": "x" * 200}).SerializeToString()
    raw = wire.batch_result_detail(
        core_wire.length_delimited(1, group.encode()), record_id, memoryview(payload), expires_at_us)
    side = pb.BatchGetRecordResponse(errors=[pb.BatchGetRecordError(error_code="NOT_FOUND")])
    resp = pb.BatchGetRecordResponse.FromString(raw + side.SerializeToString())
    (detail,) = resp.records
    assert (detail.feature_group_name, detail.record_identifier) == (group, record_id)
    assert detail.record.SerializeToString() == payload
    assert resp.errors[0].error_code == "NOT_FOUND"
