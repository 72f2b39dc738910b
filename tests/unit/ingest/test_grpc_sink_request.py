"""The GrpcSink's PutRecords request, built from wire records without re-encoding, is the
request protobuf would build."""

from __future__ import annotations

import pytest

from tessera.client._batch import encode_put_records_request
from tessera.core.errors import InvalidRequestError
from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb


@pytest.mark.parametrize("ttl_s", [None, 30.0])
def test_encoded_put_records_request_is_protobufs(ttl_s: float | None) -> None:
    records = [to_record({"user_id": "x" * 300, "ts": 1.5}), to_record({"user_id": "y"})]
    sources = ["kafka:t/0/1", "kafka:t/0/2"]
    raw = encode_put_records_request("users", [r.SerializeToString() for r in records], ttl_s,
                                     sources)
    want = pb.PutRecordsRequest(feature_group_name="users", records=records, sources=sources)
    if ttl_s is not None:
        want.ttl_s = ttl_s
    assert raw == want.SerializeToString()


def test_one_source_per_record() -> None:
    with pytest.raises(InvalidRequestError, match="sources has 1 entries for 2 records"):
        encode_put_records_request("g", [b"", b""], None, ["s"])
