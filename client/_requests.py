"""Request protos from Python arguments, Python values from response protos.

Pure functions shared by the sync and the asyncio client, so that each of them only does I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from tessera.core.errors import InvalidRequestError
from tessera.core.tokens import decode_token, latest
from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb

RecordId = str | int
EventTime = float | int | datetime | str
DeletionMode = Literal["soft", "hard"]

#: The key get_record (with_expiry=True) and batch_get_record add to a record: its expiry in
#: epoch seconds, or None when it has no TTL.
EXPIRES_AT_KEY = "_expires_at"

_DELETION_MODES = {
    "soft": pb.DELETION_MODE_SOFT_DELETE,
    "hard": pb.DELETION_MODE_HARD_DELETE,
}


def record_id(value: RecordId) -> str:
    """A record identifier as sent on the wire: a string, an Integral identifier in decimal."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    raise InvalidRequestError(
        f"record identifier {value!r} is a {type(value).__name__}; allowed: str or int"
    )


def feature_names(features: Iterable[str] | str | None) -> list[str]:
    """The feature filter of a read (empty: all features); one name may be given as a str."""
    if features is None:
        return []
    if isinstance(features, str):
        return [features]
    return list(features)


def put_record_request(
    group: str, record: Mapping[str, Any], ttl_s: float | None
) -> pb.PutRecordRequest:
    """A PutRecordRequest; `record` maps feature names to Python values (None: absent)."""
    request = pb.PutRecordRequest(feature_group_name=group, record=to_record(record))
    if ttl_s is not None:
        request.ttl_s = float(ttl_s)
    return request


def get_record_request(
    group: str,
    identifier: RecordId,
    features: Iterable[str] | str | None,
    with_expiry: bool,
    consistent_after: str | None = None,
) -> pb.GetRecordRequest:
    """A GetRecordRequest; `consistent_after`: a write token the read must reflect."""
    return pb.GetRecordRequest(
        feature_group_name=group,
        record_identifier=record_id(identifier),
        feature_names=feature_names(features),
        expiration_time_response=with_expiry,
        consistent_after=consistent_after or "",
    )


class WriteTokens:
    """A client's read-your-writes state: the newest write token it was acknowledged with, kept
    across threads (writes may complete in any order), and what its reads pass along."""

    def __init__(self, read_your_writes: bool) -> None:
        self._read_your_writes = read_your_writes
        self._lock = threading.Lock()
        self._token: str | None = None

    @property
    def token(self) -> str | None:
        """The newest token of this client's acknowledged writes (None: no write yet)."""
        return self._token

    def acknowledged(self, token: str) -> None:
        """Keep `token` (a write response's write_token) if it is newer than the one held."""
        if not token:  # a call that committed nothing (an empty PutRecords)
            return
        with self._lock:
            self._token = latest(self._token, token)

    def for_read(self, consistent_after: str | None) -> str | None:
        """The token a read sends: the newer of `consistent_after` (one from elsewhere) and
        this client's own, unless read-your-writes is off for it."""
        own = self._token if self._read_your_writes else None
        if not consistent_after:
            return own
        decode_token(consistent_after, "consistent_after")  # refused here, not after a call
        return latest(own, consistent_after)


def expires_at_s(message: pb.GetRecordResponse | pb.BatchGetRecordResultDetail) -> float | None:
    """The expiry a response carries, in epoch seconds (None: no TTL, or not asked for)."""
    if message.HasField("expires_at_us"):
        return message.expires_at_us / 1_000_000
    return None


def parse_get_record_response(
    response: pb.GetRecordResponse, with_expiry: bool
) -> dict[str, Any] | None:
    """The record as a dict, or None when it does not exist, was deleted, or has expired."""
    if not response.HasField("record"):
        return None
    record = from_record(response.record)
    if with_expiry:
        record[EXPIRES_AT_KEY] = expires_at_s(response)
    return record


def event_time_text(event_time: EventTime | None, now: float | None = None) -> str:
    """DeleteRecord's event time as sent: ISO-8601 UTC or epoch seconds, as a string.

    None means now; an aware datetime becomes ISO-8601 UTC with a 'Z'; numbers become epoch
    seconds; a string is sent as is (the server parses and checks it).
    """
    if event_time is None:
        return repr(time.time() if now is None else now)
    if isinstance(event_time, str):
        return event_time
    if isinstance(event_time, datetime):
        if event_time.tzinfo is None:
            raise InvalidRequestError(
                f"event_time {event_time.isoformat()} is a naive datetime; give it a time zone"
            )
        return event_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(event_time, bool):
        raise InvalidRequestError("event_time must be a time, not a bool")
    if isinstance(event_time, int | np.integer):
        return str(int(event_time))
    if isinstance(event_time, float | np.floating):
        return repr(float(event_time))
    raise InvalidRequestError(
        f"event_time {event_time!r} is a {type(event_time).__name__}; allowed: None (now), "
        "epoch seconds, an aware datetime or an ISO-8601 string"
    )


def delete_record_request(
    group: str,
    identifier: RecordId,
    event_time: EventTime | None,
    mode: DeletionMode | str,
) -> pb.DeleteRecordRequest:
    """A DeleteRecordRequest; `mode` is 'soft' (reads as absent) or 'hard' (removed)."""
    deletion_mode = _DELETION_MODES.get(mode)
    if deletion_mode is None:
        raise InvalidRequestError(f"deletion mode {mode!r} is not valid; allowed: 'soft', 'hard'")
    return pb.DeleteRecordRequest(
        feature_group_name=group,
        record_identifier=record_id(identifier),
        event_time=event_time_text(event_time),
        deletion_mode=deletion_mode,
    )
