"""The fast encoder agrees with the reference path (to_record + validate_record) byte for byte,
and steps aside (None) whenever the reference path would refuse or normalize."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.errors import InvalidRequestError
from tessera.core.records import ValidatedRecord, validate_record
from tessera.ingest.encode import FastEncoder
from tessera.ingest.mapping import record_from_values
from tests.unit.ingest.fakes import schema

SCHEMA = schema(ctr="Fractional", tags="List[String]", country="String")

values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=200),
    st.lists(st.text(max_size=3), max_size=3),
)
records = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.one_of(st.text(max_size=30), st.integers()),
        "ts": st.one_of(st.floats(min_value=-10, max_value=3e11), st.integers(-5, 2**40),
                        st.text(max_size=5)),
        "clicks": values, "ctr": values, "country": values, "tags": values, "bogus": values,
    },
)


def reference(values: dict[str, Any], ttl_s: float | None) -> ValidatedRecord | None:
    try:
        return validate_record(SCHEMA, record_from_values(values), ttl_s)
    except InvalidRequestError:
        return None


@settings(max_examples=400, deadline=None)
@given(records, st.sampled_from([None, 60.0]))
def test_fast_path_is_the_reference_path_or_steps_aside(values: dict[str, Any],
                                                        ttl_s: float | None) -> None:
    fast = FastEncoder(SCHEMA, ttl_s).encode(values)
    if fast is not None:
        assert fast == reference(values, ttl_s)


def test_the_common_case_takes_the_fast_path() -> None:
    values = {"user_id": "u1", "ts": 1_700_000_000.25, "clicks": 300, "ctr": 2,
              "country": "fr", "tags": None}
    fast = FastEncoder(SCHEMA, 3600.0).encode(values)
    assert fast is not None and fast == reference(values, 3600.0)
    assert fast.expires_at_us == fast.event_time_us + 3600 * 10**6


def test_negative_and_large_integers_encode_like_protobuf() -> None:
    for clicks in (-1, -(2**63), 2**63 - 1, 127, 128, 0):
        values = {"user_id": "u", "ts": 1.0, "clicks": clicks}
        assert FastEncoder(SCHEMA, None).encode(values) == reference(values, None)


def test_unusual_values_step_aside() -> None:
    enc = FastEncoder(SCHEMA, None)
    for bad in ({"user_id": "u", "ts": 1.0, "clicks": True},
                {"user_id": "u", "ts": 1.0, "ctr": math.nan},
                {"user_id": "", "ts": 1.0},
                {"user_id": "u", "ts": -1.0},
                {"user_id": "u", "ts": 1.0, "tags": ["a"]},
                {"user_id": "u", "ts": 1.0, "clicks": 2**64},
                {"ts": 1.0}):
        assert enc.encode(bad) is None, bad
