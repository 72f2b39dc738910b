"""The JSON answers written by the compiled kernels (server/record_json.py) against the reference
paths (REST: decode, dict, msgspec; SageMaker's Record: server/sagemaker_values.py value by
value): the same bytes for records of every value type, expiries, record ids and missing ids;
bytes the server never stores go to the reference path and fail or answer as it does."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.core import eventtime
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import record_json as rj
from tessera.server import record_json_kernels as kernels
from tessera.server import sagemaker_values as smv

INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 5e-324, 1e16, 1e22, 1.5e-7, 0.1, 1e-5, 1.7976931348623157e308, math.nan])
FLOAT32_BYTES = st.binary(min_size=4, max_size=4) | st.floats(width=32).map(
    lambda f: struct.pack("<f", f))
NAMES = st.text(max_size=12) | st.sampled_from(["user_id", "ctr_7d", 'q"uote', "back\\slash",
                                                "tab\tnl\n\x00\x1f\x7f", "é€😀"])
STRINGS = st.text(max_size=40)
EXPIRY = st.none() | st.integers(0, kernels.MAX_EXPIRY_US - 1) | st.sampled_from(
    [0, 1, 999_999, 1_000_000, 86_400_000_000, 951_782_400_000_000,  # 2000-02-29
     kernels.MAX_EXPIRY_US - 1, 4_102_444_800_000_000])


@st.composite
def feature_values(draw: Any, name: str) -> pb.FeatureValue:
    fv = pb.FeatureValue(feature_name=name)
    kind = draw(st.sampled_from(["int", "float", "string", "int_list", "float_list",
                                 "string_list", "vector", "none"]))
    if kind == "int":
        fv.int_value = draw(INT64)
    elif kind == "float":
        fv.float_value = draw(DOUBLES)
    elif kind == "string":
        fv.string_value = draw(STRINGS)
    elif kind == "int_list":
        fv.int_list.SetInParent()
        fv.int_list.values.extend(draw(st.lists(INT64, max_size=6)))
    elif kind == "float_list":
        fv.float_list.SetInParent()
        fv.float_list.values.extend(draw(st.lists(DOUBLES, max_size=6)))
    elif kind == "string_list":
        fv.string_list.SetInParent()
        fv.string_list.values.extend(draw(st.lists(STRINGS, max_size=5)))
    elif kind == "vector":
        fv.vector_value = b"".join(draw(st.lists(FLOAT32_BYTES, max_size=10)))
    return fv  # "none": a feature without a value (an aggregation without events)


@st.composite
def records(draw: Any, unique: bool = True) -> bytes:
    names = draw(st.lists(NAMES, max_size=12, unique=unique))
    record = pb.Record(features=[draw(feature_values(n)) for n in names])
    return record.SerializeToString()


def _compiled_status(payloads: list[bytes], expiries: list[int | None], batch: bool,
                     shape: int | None = None) -> int:
    buf = np.frombuffer(b"".join(payloads), np.uint8)
    offsets = np.zeros(len(payloads) + 1, np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    expires = np.array([kernels.NO_EXPIRY if e is None else e for e in expiries], np.int64)
    room = buf.shape[0] // 4 + 1
    if shape is None:
        shape = kernels.BATCH if batch else kernels.GET
    status: int = kernels.measure(buf, offsets, expires, shape, np.empty(room, np.float64),
                                  np.empty(room, np.float32))[0]
    return status


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Exception as exc:  # the reference's own failure (e.g. DecodeError) is the contract
        return "raised", type(exc)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=records(), expires_at_us=EXPIRY)
def test_get_record_body_is_the_reference_answer_for_every_value_type(
        payload: bytes, expires_at_us: int | None) -> None:
    assert _compiled_status([payload], [expires_at_us], False) == kernels.OK
    body = rj.get_record_body(payload, expires_at_us)
    assert body == rj.reference_get_record_body(payload, expires_at_us)
    json.loads(body)  # valid JSON (NaN and infinities as null)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(found=st.lists(st.tuples(STRINGS, records(), EXPIRY), max_size=8),
       missing=st.lists(STRINGS, max_size=4))
def test_batch_get_body_is_the_reference_answer(
        found: list[tuple[str, bytes, int | None]], missing: list[str]) -> None:
    hits = [(rid, (memoryview(payload), exp)) for rid, payload, exp in found]
    assert _compiled_status([p for _, p, _ in found], [e for _, _, e in found], True) == kernels.OK
    body = rj.batch_get_body(hits, missing)
    assert body == rj.reference_batch_get_body(hits, missing)
    answer = json.loads(body)
    assert [r["record_id"] for r in answer["records"]] == [rid for rid, _, _ in found]
    assert answer["missing"] == missing


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=records())
def test_sagemaker_record_is_the_reference_answer_for_every_value_type(payload: bytes) -> None:
    assert _compiled_status([payload], [None], False, kernels.SAGEMAKER) == kernels.OK
    body = smv.record_json(payload)
    assert body == smv.reference_record_json(payload)
    json.loads(body)


@settings(max_examples=60, deadline=None)
@given(payload=records(unique=False))
def test_sagemaker_record_with_names_given_twice_is_the_reference(payload: bytes) -> None:
    assert smv.record_json(payload) == smv.reference_record_json(payload)


@settings(max_examples=60, deadline=None)
@given(payload=records(unique=False))
def test_feature_names_given_twice_answer_as_the_reference(payload: bytes) -> None:
    assert rj.get_record_body(payload, None) == rj.reference_get_record_body(payload, None)


@settings(max_examples=120, deadline=None)
@given(payload=records(), data=st.data())
def test_corrupted_bytes_fail_or_answer_as_the_reference(payload: bytes, data: Any) -> None:
    raw = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 3))):
        if raw and data.draw(st.booleans()):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        else:
            raw.insert(data.draw(st.integers(0, len(raw))), data.draw(st.integers(0, 255)))
    corrupted = bytes(raw)
    assert (_outcome(rj.get_record_body, corrupted, None)
            == _outcome(rj.reference_get_record_body, corrupted, None))
    assert _outcome(smv.record_json, corrupted) == _outcome(smv.reference_record_json, corrupted)


def test_expiries_outside_what_datetime_writes_fail_as_the_reference() -> None:
    payload = pb.Record(features=[pb.FeatureValue(feature_name="a", int_value=1)]
                        ).SerializeToString()
    for us in (kernels.MAX_EXPIRY_US, -5):
        assert _compiled_status([payload], [us], False) == kernels.FALLBACK
        assert (_outcome(rj.get_record_body, payload, us)
                == _outcome(rj.reference_get_record_body, payload, us))


@pytest.mark.parametrize("us", [0, 1, 59_999_999, 951_825_599_000_001, 1_764_400_000_123_456,
                                kernels.MAX_EXPIRY_US - 1])
def test_expires_at_is_eventtime_iso(us: int) -> None:
    body = json.loads(rj.get_record_body(b"", us))
    assert body == {"record": {}, "expires_at": eventtime.to_iso(us)}


def test_wire_forms_protobuf_reads_alike_answer_as_the_reference() -> None:
    """Unpacked list members, several packed runs and empty runs (never what the server stores,
    but protobuf reads them): the same values either way."""
    unpacked_ints = bytes([0x2A, 0x04, 0x08, 0x01, 0x08, 0x7F])  # int_list: 1, 127
    two_runs = bytes([0x2A, 0x06, 0x0A, 0x01, 0x05, 0x0A, 0x01, 0x06])  # packed 5, then 6
    empty_run = bytes([0x2A, 0x02, 0x0A, 0x00])
    doubles = struct.pack("<d", 0.5) + struct.pack("<d", -2.0)
    floats = bytes([0x32, 0x12, 0x09]) + doubles[:8] + bytes([0x09]) + doubles[8:]
    for body in (unpacked_ints, two_runs, empty_run, floats):
        fv = bytes([0x0A, 0x01, 0x78]) + body  # feature_name "x"
        payload = bytes([0x0A, len(fv)]) + fv
        assert _compiled_status([payload], [None], False) == kernels.OK
        assert rj.get_record_body(payload, None) == rj.reference_get_record_body(payload, None)
        assert smv.record_json(payload) == smv.reference_record_json(payload)


def test_value_before_name_and_unknown_fields() -> None:
    value_first = bytes([0x10, 0x07, 0x0A, 0x01, 0x79])  # int_value 7, then feature_name "y"
    payload = bytes([0x0A, len(value_first)]) + value_first
    assert rj.get_record_body(payload, None) == b'{"record":{"y":7},"expires_at":null}'
    unknown = bytes([0x0A, 0x01, 0x79, 0x48, 0x01])  # field 9: unknown to FeatureValue
    payload = bytes([0x0A, len(unknown)]) + unknown
    assert _compiled_status([payload], [None], False) == kernels.FALLBACK
    assert rj.get_record_body(payload, None) == rj.reference_get_record_body(payload, None)


def test_a_feature_without_a_value_and_a_name_that_is_not_utf8_fails_as_the_reference() -> None:
    payload = bytes([0x0A, 0x04, 0x0A, 0x02, 0x00, 0x80])  # feature_name b"\x00\x80", no value
    assert _compiled_status([payload], [None], False) == kernels.FALLBACK
    assert (_outcome(rj.get_record_body, payload, None)
            == _outcome(rj.reference_get_record_body, payload, None) != ("ok", None))


def test_a_large_batch_of_wide_records() -> None:
    rng = np.random.default_rng(7)
    payloads = []
    for _ in range(100):
        record = pb.Record()
        for j in range(300):
            fv = record.features.add(feature_name=f"f{j}")
            if j % 3 == 0:
                fv.float_value = float(rng.normal())
            elif j % 3 == 1:
                fv.int_value = int(rng.integers(-(2**40), 2**40))
            else:
                fv.vector_value = rng.normal(size=4).astype("<f4").tobytes()
        payloads.append(record.SerializeToString())
    hits = [(f"id{i}", (memoryview(p), None)) for i, p in enumerate(payloads)]
    assert rj.batch_get_body(hits, ["gone"]) == rj.reference_batch_get_body(hits, ["gone"])
    assert smv.record_json(payloads[0]) == smv.reference_record_json(payloads[0])


_PY_FUNC_SCRIPT = """
import json, sys
from tessera.server import record_json as rj, record_json_kernels as kernels, sagemaker_values
payloads = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
assert not hasattr(kernels.measure, "py_func")  # the kernels run as plain Python here
hits = [(f"r{i}", (p, None if i % 2 else 1_764_400_000_123_456)) for i, p in enumerate(payloads)]
print(json.dumps([rj.batch_get_body(hits, ["gone"]).hex()]
                 + [rj.get_record_body(p, 5_000_000).hex() for p in payloads]
                 + [sagemaker_values.record_json(p).hex() for p in payloads]))
"""


def test_the_compiled_kernels_answer_as_their_python_source() -> None:
    """The kernels' own Python (NUMBA_DISABLE_JIT, in a subprocess) against the compiled ones:
    the same bytes for records of every value type (int64 edges, NaN, -0.0, escapes, UTF-8)."""
    rng = np.random.default_rng(11)
    payloads = []
    for n in range(12):
        record = pb.Record()
        record.features.add(feature_name="id", string_value=f'r"{n}\\\n\u00e9\U0001F600')
        record.features.add(feature_name="i", int_value=int(rng.integers(-(2**63), 2**63 - 1)))
        record.features.add(feature_name="m", int_value=-(2**63) if n % 2 else 2**63 - 1)
        record.features.add(feature_name="f", float_value=[math.nan, -0.0, 1e-300, 0.1][n % 4])
        record.features.add(feature_name="il").int_list.values.extend([-1, 0, 2**40])
        record.features.add(feature_name="fl").float_list.values.extend(
            rng.normal(size=n % 4).tolist() + [math.inf])
        record.features.add(feature_name="sl").string_list.values.extend(["a", "\x01", ""])
        record.features.add(feature_name="v", vector_value=rng.normal(size=n % 5).astype(
            "<f4").tobytes())
        record.features.add(feature_name="none")
        payloads.append(record.SerializeToString())
    hits = [(f"r{i}", (p, None if i % 2 else 1_764_400_000_123_456))
            for i, p in enumerate(payloads)]
    compiled = ([rj.batch_get_body(hits, ["gone"])]
                + [rj.get_record_body(p, 5_000_000) for p in payloads]
                + [smv.record_json(p) for p in payloads])
    out = subprocess.run(
        [sys.executable, "-c", _PY_FUNC_SCRIPT], input=json.dumps([p.hex() for p in payloads]),
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert [bytes.fromhex(h) for h in json.loads(out.stdout)] == compiled
