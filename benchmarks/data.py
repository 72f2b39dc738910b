"""The benchmark's data: one feature group of 10 mixed-type features, records derived from their
index alone (so any process can rebuild, and check, record i), and gRPC request bodies."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import numpy as np

from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb

GROUP = "bench_users"
BASE_TS = 1_700_000_000.0
VECTOR_DIM = 8

FEATURES: list[tuple[str, str, str | None]] = [  # name, type, collection
    ("user_id", "String", None),
    ("ts", "Fractional", None),
    ("clicks", "Integral", None),
    ("views", "Integral", None),
    ("age_days", "Integral", None),
    ("ctr", "Fractional", None),
    ("score", "Fractional", None),
    ("country", "String", None),
    ("tags", "String", "List"),
    ("emb", "Fractional", "Vector"),
]
_COUNTRIES = ("fr", "de", "us", "jp", "br", "in", "ng")


def group_definition(name: str = GROUP, offline: bool | None = None) -> dict[str, Any]:
    """The JSON body of POST /v1/feature-groups for the benchmark's group; `offline` sets
    offline_store_config.enable_offline_store (None: the server's default)."""
    defs = []
    for fname, ftype, coll in FEATURES:
        d: dict[str, Any] = {"feature_name": fname, "feature_type": ftype, "collection_type": coll}
        if coll == "Vector":
            d["collection_config"] = {"vector_config": {"dimension": VECTOR_DIM}}
        defs.append(d)
    body: dict[str, Any] = {
        "feature_group_name": name,
        "record_identifier_feature_name": "user_id",
        "event_time_feature_name": "ts",
        "feature_definitions": defs,
    }
    if offline is not None:
        body["offline_store_config"] = {"enable_offline_store": offline}
    return body


def create_group(http_url: str, name: str = GROUP, offline: bool | None = None) -> dict[str, Any]:
    """Create the group over HTTP and read it back."""
    with httpx.Client(base_url=http_url, timeout=30) as http:
        r = http.post("/v1/feature-groups", json=group_definition(name, offline))
        if r.status_code != 201:
            raise RuntimeError(f"creating '{name}' failed: {r.status_code} {r.text}")
        return http.get(f"/v1/feature-groups/{name}").raise_for_status().json()


def record_id(i: int) -> str:
    return f"u{i:08d}"


def record_values(i: int) -> dict[str, Any]:
    """Record i's feature values: cheap arithmetic of i, no RNG state."""
    return {
        "user_id": record_id(i),
        "ts": BASE_TS + (i % 86_400) + 0.25,
        "clicks": (i * 7919) % 10_000,
        "views": (i * 104_729) % 1_000_000,
        "age_days": i % 3650,
        "ctr": ((i * 31) % 1000) / 1000.0,
        "score": ((i * 17) % 977) / 977.0 - 0.5,
        "country": _COUNTRIES[i % len(_COUNTRIES)],
        "tags": [f"t{i % 5}", f"s{i % 11}", "bench"],
        "emb": (np.arange(VECTOR_DIM, dtype=np.float32) + np.float32(i % 97)) / np.float32(100),
    }


def record(i: int) -> pb.Record:
    return to_record(record_values(i))


def matches(i: int, rec: pb.Record) -> bool:
    """Whether a record read back equals record i, feature by feature."""
    got = from_record(rec)
    want = record_values(i)
    if set(got) != set(want):
        return False
    for name, value in want.items():
        if isinstance(value, np.ndarray):
            if not np.array_equal(np.asarray(got[name]), value):
                return False
        elif got[name] != value:
            return False
    return True


def index_of(rid: str) -> int:
    return int(rid[1:])


# --- request bodies ------------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: 0 (not compressed), 4-byte big-endian length, message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def get_request(i: int, group: str = GROUP) -> bytes:
    return pb.GetRecordRequest(
        feature_group_name=group, record_identifier=record_id(i)
    ).SerializeToString()


def batch_get_request(indexes: list[int], group: str = GROUP) -> bytes:
    req = pb.BatchGetRecordRequest()
    req.identifiers.add(
        feature_group_name=group, record_identifiers=[record_id(i) for i in indexes]
    )
    return req.SerializeToString()


def put_records_request(indexes: range | list[int], group: str = GROUP) -> bytes:
    req = pb.PutRecordsRequest(feature_group_name=group)
    req.records.extend(record(i) for i in indexes)
    return req.SerializeToString()


def echo_request(response_size: int) -> bytes:
    """An EchoRequest whose (identical) EchoResponse is `response_size` bytes on the wire."""
    payload_len = response_size - 2  # tag byte + 1-byte length, for payloads under 128 bytes
    while len(pb.EchoRequest(payload=b"x" * payload_len).SerializeToString()) > response_size:
        payload_len -= 1
    return pb.EchoRequest(payload=b"x" * payload_len).SerializeToString()
