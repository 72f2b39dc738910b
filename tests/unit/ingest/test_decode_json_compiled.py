"""`decode_json` (msgspec first, the standard library for what it refuses) accepts exactly what
the standard-library decoder accepts, gives the same values (same types: 1 is not 1.0, -0.0 is
not 0.0) and the same dead-letter reasons, on random JSON and random bytes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.errors import SerializationError
from tessera.ingest.decode import _json_kind, decode_json, decode_json_reference


def reference(value: bytes) -> dict[str, Any]:
    """decode_json as it was: the standard library only."""
    obj = decode_json_reference(value)
    if not isinstance(obj, dict):
        raise SerializationError(
            f"the value is a JSON {_json_kind(obj)}; expected a JSON object of field -> value"
        )
    return obj


def outcome(fn: Any, value: bytes) -> tuple[str, str]:
    try:
        return ("ok", repr(fn(value)))
    except SerializationError as exc:
        return ("error", exc.message)
    except RecursionError:
        return ("recursion", "")


SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(-(1 << 70), 1 << 70)
    | st.floats() | st.text() | st.sampled_from(["\ud800", "é", "\x00", "\u2028"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=5),
    max_leaves=20,
)


@settings(max_examples=800, deadline=None)
@given(JSON, st.booleans(), st.sampled_from(["", " ", "\n", "\x0c", " x", "\t\r\n"]),
       st.sampled_from(["", " ", "\ufeff", "\x0c"]), st.sampled_from(["utf-8", "utf-16"]))
def test_json_values_decode_as_the_standard_library_decodes_them(
    obj: Any, ascii_only: bool, tail: str, head: str, encoding: str
) -> None:
    value = (head + json.dumps(obj, ensure_ascii=ascii_only) + tail).encode(
        encoding, "surrogatepass")
    assert outcome(decode_json, value) == outcome(reference, value)


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=40) | st.builds(
    lambda obj, cut, junk: json.dumps(obj).encode()[:cut] + junk,
    JSON, st.integers(0, 40), st.binary(max_size=4)))
def test_any_bytes_decode_or_fail_as_with_the_standard_library(value: bytes) -> None:
    assert outcome(decode_json, value) == outcome(reference, value)


def test_numbers_keep_their_types_and_range() -> None:
    value = b'{"i": 123456789012345678901234567890, "f": 1.5E3, "z": -0.0, "n": -0, "big": 1e400}'
    assert repr(decode_json(value)) == repr(reference(value))
    assert decode_json(b'{"a": NaN}')["a"] != decode_json(b'{"a": NaN}')["a"]  # accepted: nan
