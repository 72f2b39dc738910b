from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.core import eventtime
from tessera.core.errors import InvalidRequestError

_TIMES = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31),
                      timezones=st.just(UTC))


@given(_TIMES)
def test_iso_round_trips_to_the_microsecond(dt: datetime) -> None:
    us = eventtime.from_iso(dt.isoformat(), "t")
    assert eventtime.to_iso(us) == dt.isoformat().replace("+00:00", "Z")
    assert eventtime.parse(eventtime.to_iso(us), "t") == us


@given(st.integers(min_value=0, max_value=4_000_000_000 * 1_000_000))
def test_epoch_seconds_string_parses_like_iso(us: int) -> None:
    seconds = us / 1e6
    assert abs(eventtime.parse(repr(seconds), "t") - us) <= 1


def test_offsets_are_converted_to_utc() -> None:
    a = eventtime.from_iso("2026-01-02T03:04:05+01:00", "t")
    b = eventtime.from_iso("2026-01-02T02:04:05Z", "t")
    assert a == b
    assert b == int(datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC).timestamp()) * 1_000_000
    assert eventtime.from_iso(
        (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=1)).isoformat(), "t"
    ) % 1_000_000 == 1


@pytest.mark.parametrize("bad", ["2026-01-02T03:04:05", "soon", "1969-12-31T23:59:59Z"])
def test_bad_iso_is_refused_with_the_field_named(bad: str) -> None:
    with pytest.raises(InvalidRequestError, match="^when"):
        eventtime.from_iso(bad, "when")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 1e12])
def test_bad_epoch_seconds_are_refused(bad: float) -> None:
    with pytest.raises(InvalidRequestError, match="not a valid event time"):
        eventtime.from_epoch_s(bad, "t")
