"""Splitting bulk calls into requests the server accepts, and merging their responses.

Shared by the sync and the asyncio client: PutRecords in chunks of `batch_size` records (and of at
most MAX_PUT_REQUEST_BYTES), BatchGetRecord in calls of at most 100 groups x 100 identifiers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.client._requests import (
    EXPIRES_AT_KEY,
    RecordId,
    expires_at_s,
    feature_names,
    record_id,
)
from tessera.core.errors import InvalidRequestError
from tessera.core.values import from_record, to_record
from tessera.core.wire import length_delimited
from tessera.proto.v1 import feature_store_pb2 as pb

#: BatchGetRecord's limits per call (feature_store.proto): the server leaves the rest unprocessed.
MAX_GROUPS_PER_BATCH_GET = 100
MAX_IDS_PER_GROUP = 100
#: A PutRecords request is cut before it reaches this size, well below the 64 MB message limit.
MAX_PUT_REQUEST_BYTES = 32 * 1024 * 1024

FeatureFilter = Iterable[str] | str | Mapping[str, Iterable[str] | str] | None


#: What put_records takes per record: feature name -> Python value, or a wire Record as is.
RecordInput = Mapping[str, Any] | pb.Record


def put_records_requests(
    group: str,
    records: Iterable[RecordInput],
    ttl_s: float | None,
    batch_size: int,
    max_bytes: int = MAX_PUT_REQUEST_BYTES,
    sources: Iterable[str] | None = None,
) -> Iterator[pb.PutRecordsRequest]:
    """PutRecordsRequests of at most `batch_size` records and about `max_bytes` each, built
    lazily, so that a long iterable is never held in memory as a whole. `sources`, if given,
    holds one source per record (PutRecordsRequest.sources) and is split alongside."""
    if batch_size < 1:
        raise InvalidRequestError(f"batch_size must be at least 1, got {batch_size}")
    source_iter = iter(sources) if sources is not None else None
    chunk: list[pb.Record] = []
    chunk_sources: list[str] = []
    size = 0
    n = 0
    for values in records:
        record = values if isinstance(values, pb.Record) else to_record(values)
        record_size = record.ByteSize()
        if chunk and (len(chunk) >= batch_size or size + record_size > max_bytes):
            yield _put_records_request(group, chunk, ttl_s, chunk_sources)
            chunk, chunk_sources, size = [], [], 0
        chunk.append(record)
        if source_iter is not None:
            source = next(source_iter, None)
            if source is None:
                raise InvalidRequestError(f"sources has {n} entries; records has more")
            chunk_sources.append(source)
        size += record_size
        n += 1
    if source_iter is not None and next(source_iter, None) is not None:
        raise InvalidRequestError(f"sources has more entries than the {n} records")
    if chunk:
        yield _put_records_request(group, chunk, ttl_s, chunk_sources)


def encode_put_records_request(
    group: str, records: Sequence[bytes], ttl_s: float | None, sources: Sequence[str] | None
) -> bytes:
    """A PutRecordsRequest's wire bytes from records already serialized as tessera.v1.Record
    (no decoding and re-encoding: what a bulk writer holding wire records sends)."""
    if sources and len(sources) != len(records):
        raise InvalidRequestError(
            f"sources has {len(sources)} entries for {len(records)} records; give none or one "
            "per record"
        )
    parts = [length_delimited(1, group.encode())]
    parts += [length_delimited(2, r) for r in records]
    if ttl_s is not None:
        parts.append(b"\x19" + struct.pack("<d", float(ttl_s)))
    if sources:
        parts += [length_delimited(4, s.encode()) for s in sources]
    return b"".join(parts)


def _put_records_request(
    group: str, records: list[pb.Record], ttl_s: float | None, sources: list[str] | None = None
) -> pb.PutRecordsRequest:
    request = pb.PutRecordsRequest(feature_group_name=group, records=records, sources=sources)
    if ttl_s is not None:
        request.ttl_s = float(ttl_s)
    return request


def batch_get_requests(
    identifiers: Mapping[str, Iterable[RecordId]],
    features: FeatureFilter = None,
    with_expiry: bool = False,
    consistent_after: str | None = None,
) -> list[pb.BatchGetRecordRequest]:
    """BatchGetRecordRequests within the server's limits, each group at most once per request.

    `features` filters every group alike (a list of names), or per group (a dict of group ->
    names; a group not in it gets all of its features). `consistent_after`: a write token every
    request must reflect.
    """
    chunks: list[tuple[str, list[list[str]], list[str]]] = []
    for group, ids in identifiers.items():
        if isinstance(ids, str | bytes):
            raise InvalidRequestError(
                f"identifiers of group '{group}' must be a list of record identifiers, "
                f"not one {type(ids).__name__}"
            )
        wire_ids = [record_id(i) for i in ids]
        if not wire_ids:
            continue
        if isinstance(features, Mapping):
            names = feature_names(features.get(group))
        else:
            names = feature_names(features)
        split = [
            wire_ids[i : i + MAX_IDS_PER_GROUP] for i in range(0, len(wire_ids), MAX_IDS_PER_GROUP)
        ]
        chunks.append((group, split, names))
    requests: list[pb.BatchGetRecordRequest] = []
    rounds = max((len(split) for _, split, _ in chunks), default=0)
    for k in range(rounds):
        # The k-th chunk of each group; a group whose ids ran out has no entry in later rounds.
        entries = [
            pb.BatchGetRecordIdentifier(
                feature_group_name=group, record_identifiers=split[k], feature_names=names
            )
            for group, split, names in chunks
            if k < len(split)
        ]
        for i in range(0, len(entries), MAX_GROUPS_PER_BATCH_GET):
            requests.append(
                pb.BatchGetRecordRequest(
                    identifiers=entries[i : i + MAX_GROUPS_PER_BATCH_GET],
                    expiration_time_response=with_expiry,
                    consistent_after=consistent_after or "",
                )
            )
    return requests


@dataclass
class BatchGetResult:
    """What batch_get_record returns, merged over the calls it made.

    records: the records found, each {"feature_group_name", "record_identifier", "record"}; an
      identifier with no live record is in neither `records` nor `errors`.
    errors: per identifier, {"feature_group_name", "record_identifier", "error_code",
      "error_message"}; error_code is a gRPC status code name (NOT_FOUND for an unknown group).
    unprocessed: group -> identifiers the server did not get to; ask for them again.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    unprocessed: dict[str, list[str]] = field(default_factory=dict)


def merge_batch_get_responses(
    responses: Iterable[pb.BatchGetRecordResponse], with_expiry: bool = False
) -> BatchGetResult:
    """One BatchGetResult from the responses of the calls batch_get_requests made."""
    result = BatchGetResult()
    for response in responses:
        for detail in response.records:
            record = from_record(detail.record)
            if with_expiry:
                record[EXPIRES_AT_KEY] = expires_at_s(detail)
            result.records.append(
                {
                    "feature_group_name": detail.feature_group_name,
                    "record_identifier": detail.record_identifier,
                    "record": record,
                }
            )
        for error in response.errors:
            result.errors.append(
                {
                    "feature_group_name": error.feature_group_name,
                    "record_identifier": error.record_identifier,
                    "error_code": error.error_code,
                    "error_message": error.error_message,
                }
            )
        for left in response.unprocessed_identifiers:
            result.unprocessed.setdefault(left.feature_group_name, []).extend(
                left.record_identifiers
            )
    return result
