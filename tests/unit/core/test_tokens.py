"""Read-your-writes tokens (core/tokens.py): round trip, ordering, garbage refused by name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.core.errors import InvalidRequestError
from tessera.core.tokens import decode_token, encode_token, latest


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_a_token_round_trips_its_seq(seq: int) -> None:
    token = encode_token(seq)
    assert isinstance(token, str) and len(token) == 12 and token.isascii()
    assert decode_token(token) == seq


def test_tokens_are_opaque_url_safe_text() -> None:
    assert encode_token(42) == "AQAAAAAAAAAq"
    assert all(c.isalnum() or c in "-_" for c in encode_token(2**64 - 1))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "42",
        "AQAAAAAAAAA",  # one character short
        "AQAAAAAAAAAqA",  # one too many
        "AQAAAAAAAAA!",
        "AQAAAAAAAA+/",  # standard base64 letters, not the url-safe ones encode_token uses
        "AQAAAAAAA AA",
        "ÄQAAAAAAAAAq",
        "x" * 5000,
    ],
)
def test_garbage_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="consistent_after .* is not a write token"):
        decode_token(text, "consistent_after")


def test_a_long_garbage_token_is_shown_shortened() -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_token("y" * 5000)
    assert len(info.value.message) < 400


def test_an_unknown_version_is_refused_saying_so() -> None:
    with pytest.raises(InvalidRequestError, match="version 2"):
        decode_token("AgAAAAAAAAAq", "consistent_after")


def test_latest_keeps_the_newer_token() -> None:
    old, new = encode_token(7), encode_token(300)
    assert latest(old, new) == new and latest(new, old) == new
    assert latest(None, old) == old and latest(old, None) == old
    assert latest(None, None) is None
    assert latest(old, old) == old
