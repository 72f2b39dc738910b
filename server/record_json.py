"""The JSON answers of the REST runtime's reads, written from the stored records' bytes.

    GetRecord   {"record": {feature: value, ...}, "expires_at": ISO-8601 | null}
    batchGet    {"records": [{"record_id", "record", "expires_at"}, ...], "missing": [...]}

Values are typed as in the SDK (core/values.py): ints stay ints, floats floats (msgspec's text;
NaN and infinities, which validation keeps out of stored records, as null), strings strings,
lists lists, vectors lists of their float32 values widened to float64; features in the order
stored; features without a value (an aggregation without events) left out.

`get_record_body` and `batch_get_body` write the answer in one compiled pass over the stored
bytes (server/record_json_kernels.py: no protobuf objects, no dict per record; the floats of the
whole answer formatted in one msgspec call). Whatever the kernels do not take (bytes the server
does not store: unknown fields, malformed data) goes to the reference path, `record_json` and
msgspec's encoder over the decoded record, which is what the REST runtime answered before; the
tests check both give the same bytes on generated records of every type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from tessera.core import eventtime
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import record_json_kernels as kernels

_SCALARS = frozenset(("int_value", "float_value", "string_value"))
_encode = msgspec.json.Encoder().encode
_NO_BYTES = np.zeros(0, np.uint8)
_NONE = kernels.NO_EXPIRY
_NO_EXPIRY = np.array((_NONE,), np.int64)


class RecordBody(msgspec.Struct):
    record: dict[str, Any]
    expires_at: str | None


class BatchRecord(msgspec.Struct):
    record_id: str
    record: dict[str, Any]
    expires_at: str | None


class BatchGetResult(msgspec.Struct):
    """The records found, in the order asked, and the ids not found (canonical form)."""

    records: list[BatchRecord]
    missing: list[str]


def get_record_body(payload: bytes | memoryview, expires_at_us: int | None) -> bytes:
    """The GetRecord answer of one stored record (its wire bytes) and its expiry."""
    buf = np.frombuffer(payload, np.uint8)
    offsets = np.array((0, buf.shape[0]), np.int64)
    expires = np.array((_NONE if expires_at_us is None else expires_at_us,), np.int64)
    body = _compiled(buf, offsets, expires, kernels.GET, b"", 0, b"")
    return reference_get_record_body(payload, expires_at_us) if body is None else body


def batch_get_body(
    found: Sequence[tuple[str, tuple[bytes | memoryview, int | None]]], missing: list[str]
) -> bytes:
    """The batchGet answer of the records found ((record id, (stored bytes, expiry)), in the
    order asked) and the ids not found."""
    n = len(found)
    payloads = [hit[0] for _, hit in found]
    buf = np.frombuffer(b"".join(payloads), np.uint8)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    expires = np.array([_NONE if hit[1] is None else hit[1] for _, hit in found], np.int64)
    ids = _encode([rid for rid, _ in found])
    body = _compiled(buf, offsets, expires, kernels.BATCH, ids, n, _encode(missing))
    return reference_batch_get_body(found, missing) if body is None else body


def sagemaker_record(payload: bytes | memoryview) -> bytes | None:
    """SageMaker's Record of a stored record (server/sagemaker_values.py's `record_json`):
    the list of {"FeatureName", "ValueAsString" | "ValueAsStringList"}, values as text (ints in
    decimal, doubles as Python's repr, vector members as NumPy's float32 text); None when the
    kernels leave it to the reference path."""
    buf = np.frombuffer(payload, np.uint8)
    offsets = np.array((0, buf.shape[0]), np.int64)
    return _compiled(buf, offsets, _NO_EXPIRY, kernels.SAGEMAKER, b"", 0, b"")


def _compiled(buf: np.ndarray, offsets: np.ndarray, expires: np.ndarray, shape: int,
              ids: bytes, n: int, missing: bytes) -> bytes | None:
    """The answer from the kernels; None when they leave it to the reference path."""
    room = buf.shape[0] // 4 + 1
    sm = shape == kernels.SAGEMAKER
    floats = np.empty(room, np.float64)
    floats32 = np.empty(room if sm else 0, np.float32)
    status, size, nf, nf32 = kernels.measure(buf, offsets, expires, shape, floats, floats32)
    if status != kernels.OK:
        return None
    text32 = b""
    if sm:  # the reference path's texts: repr of each double, NumPy's of each float32
        text = repr(floats[:nf].tolist()).encode()
        size += len(text) - 2 - 2 * max(nf - 1, 0)  # "[a, b]": less brackets and separators
        if nf32:
            text32 = ("[" + ",".join(floats32[:nf32].astype(str).tolist()) + "]").encode()
            size += len(text32) - 1 - nf32
    else:
        text = _encode(floats[:nf].tolist())
        # Texts of the floats and of the record ids: their JSON lists less brackets and commas.
        size += len(text) - 1 - max(nf, 1)
    if shape == kernels.BATCH:
        size += len(ids) - 1 - max(n, 1) + len(missing)
    return kernels.write(
        buf, offsets, expires, shape, np.frombuffer(text, np.uint8),
        np.frombuffer(text32, np.uint8) if text32 else _NO_BYTES,
        np.frombuffer(ids, np.uint8) if ids else _NO_BYTES,
        np.frombuffer(missing, np.uint8) if missing else _NO_BYTES, size,
    ).tobytes()


# --- the reference path ------------------------------------------------------------------------


def record_json(record: pb.Record) -> dict[str, Any]:
    """A stored record as JSON values (the SDK's types; vectors as lists of float32 values)."""
    out: dict[str, Any] = {}
    for fv in record.features:
        kind = fv.WhichOneof("value")
        if kind in _SCALARS:
            out[fv.feature_name] = getattr(fv, kind)
        elif kind == "vector_value":
            out[fv.feature_name] = np.frombuffer(fv.vector_value, dtype="<f4").tolist()
        elif kind is not None:
            out[fv.feature_name] = list(getattr(fv, kind).values)
    return out


def reference_get_record_body(payload: bytes | memoryview, expires_at_us: int | None) -> bytes:
    """`get_record_body` by the reference path (decode, dict, msgspec)."""
    return _encode(RecordBody(record_json(_stored(payload)), _iso(expires_at_us)))


def reference_batch_get_body(
    found: Sequence[tuple[str, tuple[bytes | memoryview, int | None]]], missing: list[str]
) -> bytes:
    """`batch_get_body` by the reference path."""
    records = [BatchRecord(rid, record_json(_stored(payload)), _iso(expires_at_us))
               for rid, (payload, expires_at_us) in found]
    return _encode(BatchGetResult(records, missing))


def _stored(payload: bytes | memoryview) -> pb.Record:
    """A stored record's bytes as a Record (upb parses any buffer: no copy to bytes)."""
    return pb.Record.FromString(payload)  # type: ignore[arg-type]


def _iso(expires_at_us: int | None) -> str | None:
    return None if expires_at_us is None else eventtime.to_iso(expires_at_us)
