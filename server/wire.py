"""Hand-encoding of the few response messages the read path builds from stored bytes.

Stored records are already the wire encoding of a `tessera.v1.Record`; wrapping them in a
response is a tag and a length, so reads never decode and re-encode a record. Field numbers
follow proto/tessera/v1/feature_store.proto (tests check the result parses as the real message).
"""

from __future__ import annotations

from tessera.core.wire import int_field, length_delimited


# GetRecordResponse: record = 1, expires_at_us = 2.
def get_record_response(payload: memoryview, expires_at_us: int | None) -> bytes:
    out = length_delimited(1, payload)
    if expires_at_us is not None:
        out += int_field(2, expires_at_us)
    return out


# BatchGetRecordResultDetail: feature_group_name = 1, record_identifier = 2, record = 3,
# expires_at_us = 4; it is field 1 (records) of BatchGetRecordResponse.
def batch_result_detail(
    group_enc: bytes, record_id: str, payload: memoryview, expires_at_us: int | None
) -> bytes:
    body = group_enc + length_delimited(2, record_id.encode()) + length_delimited(3, payload)
    if expires_at_us is not None:
        body += int_field(4, expires_at_us)
    return length_delimited(1, body)
