"""Event times: ISO-8601 UTC strings or epoch seconds in, integer microseconds inside."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from tessera.core.errors import InvalidRequestError

US_PER_S = 1_000_000
# Years 1970 through 9999: before the epoch is refused, as SageMaker does.
MAX_EVENT_TIME_S = 253_402_300_800.0


def from_epoch_s(value: float, field: str) -> int:
    """Epoch seconds (fractional) to microseconds, refusing what is not a time."""
    if not (math.isfinite(value) and 0.0 <= value < MAX_EVENT_TIME_S):
        raise InvalidRequestError(
            f"{field}: {value!r} is not a valid event time; allowed: epoch seconds "
            "from 0 (1970-01-01) to before year 10000"
        )
    return round(value * US_PER_S)


def from_iso(text: str, field: str) -> int:
    """An ISO-8601 time with a UTC designator ('Z' or an offset) to epoch microseconds."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"{field}: '{text[:64]}' is not a valid event time; allowed: ISO-8601 with a time "
            "zone, e.g. 2026-01-02T03:04:05.678Z, or epoch seconds"
        ) from None
    if dt.tzinfo is None:
        raise InvalidRequestError(
            f"{field}: '{text[:64]}' has no time zone; write it in UTC with a 'Z' suffix"
        )
    delta = dt - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds
    if us < 0:
        raise InvalidRequestError(f"{field}: '{text[:64]}' is before 1970-01-01")
    return us


def parse(text: str, field: str) -> int:
    """A string that is either epoch seconds or ISO-8601 (DeleteRecord's event_time)."""
    try:
        seconds = float(text)
    except ValueError:
        return from_iso(text, field)
    return from_epoch_s(seconds, field)


def to_iso(us: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with a 'Z'."""
    dt = datetime.fromtimestamp(us // US_PER_S, tz=UTC).replace(microsecond=us % US_PER_S)
    return dt.isoformat().replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
