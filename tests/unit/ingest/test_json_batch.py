"""The whole-batch JSON path: it accepts exactly what the per-message fast path accepts and writes
the same bytes; a batch's bad messages each end as a dead letter with the per-message path's
reason while the good ones become records, in order."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.schema import (
    CompiledSchema,
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
)
from tessera.ingest import config_from_dict, json_batch
from tessera.ingest.batch import PreparedBatch, Preparer
from tessera.ingest.encode import FastEncoder
from tessera.ingest.json_batch import BatchEncoder
from tests.unit.ingest.fakes import FakeMessage

pytestmark = pytest.mark.skipif(not json_batch.load(), reason="needs Numba")


def group_schema(id_type: str = "String", et_type: str = "Fractional",
                 **extra: str) -> CompiledSchema:
    features = {"user_id": id_type, "ts": et_type, "clicks": "Integral", "ctr": "Fractional",
                "country": "String", **extra}
    definition = FeatureGroupDefinition(
        feature_group_name="users", record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in features.items()],
    )
    return CompiledSchema.of(FeatureGroup(definition=definition, feature_group_id=7,
                                          creation_time=0.0, last_modified_time=0.0))


SCHEMAS = {
    "string id": group_schema(),
    "integral id": group_schema(id_type="Integral"),
    "iso event time": group_schema(et_type="String"),
}

values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Cs", "Ll"]), max_size=3),  # lone surrogates
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                         max_size=1),
)
objects = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.one_of(st.text(max_size=12), st.integers(-(2**64), 2**64), values),
        "ts": st.one_of(st.floats(min_value=-10, max_value=3e11), st.integers(-5, 2**40),
                        st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01", "nope"]),
                        values),
        "clicks": values, "ctr": values, "country": values, "bogus": values,
    },
)


def _shuffled(obj: dict[str, Any], seed: int) -> dict[str, Any]:
    keys = list(obj)
    random.Random(seed).shuffle(keys)
    return {k: obj[k] for k in keys}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(objects, st.integers(0, 3)), min_size=1, max_size=40),
       st.sampled_from(sorted(SCHEMAS)), st.sampled_from([None, 60.0]), st.booleans())
def test_the_batch_encoder_accepts_what_the_fast_encoder_accepts_with_the_same_bytes(
        batch: list[tuple[dict[str, Any], int]], which: str, ttl_s: float | None,
        ignore_unknown: bool) -> None:
    schema = SCHEMAS[which]
    # A few key orders in one batch: each is its own group of columns.
    objs = [_shuffled(obj, seed) for obj, seed in batch]
    got = BatchEncoder(schema, ttl_s, ignore_unknown).encode(objs)
    fast = FastEncoder(schema, ttl_s)
    for obj, record in zip(objs, got, strict=True):
        flat = ({k: v for k, v in obj.items() if k in schema.features} if ignore_unknown
                else obj)
        assert record == fast.encode(flat), obj


def test_a_typical_batch_is_encoded_whole() -> None:
    schema = group_schema()
    objs = [{"user_id": f"u{i}", "ts": 1.7e9 + i / 7, "clicks": i * 1000 - 5000,
             "ctr": i / 3, "country": "fr" if i % 2 else "日本"} for i in range(500)]
    got = BatchEncoder(schema, 3600.0, False).encode(objs)
    fast = FastEncoder(schema, 3600.0)
    assert got == [fast.encode(o) for o in objs]
    assert None not in got


def test_a_schema_with_a_collection_is_left_to_the_per_message_path() -> None:
    schema = group_schema(tags="List[String]")
    assert not BatchEncoder(schema, None, False).usable


# --- Preparer: bad messages in a bulk-decoded batch ----------------------------------------------

TOPIC = config_from_dict({"bootstrap_servers": "x", "topics": [
    {"topic": "t", "feature_group": "users"}]}).topics[0]


def message(value: bytes | None, offset: int, partition: int = 0) -> FakeMessage:
    return FakeMessage(value, partition=partition, offset=offset)


def good_value(i: int) -> bytes:
    return json.dumps({"user_id": f"u{i}", "ts": 1.7e9 + i, "clicks": i, "ctr": 0.5,
                       "country": "fr"}).encode()


def mixed_batch() -> list[FakeMessage]:
    bad = [
        None,  # a tombstone
        b"{not json",
        b"[1, 2]",
        json.dumps({"user_id": "x", "ts": 1.7e9, "clicks": "many"}).encode(),
        json.dumps({"user_id": "x", "ts": 1.7e9, "unknown_feature": 1}).encode(),
        json.dumps({"ts": 1.7e9, "clicks": 1}).encode(),  # no record identifier
        json.dumps({"user_id": "x", "ts": -5.0}).encode(),
        json.dumps({"user_id": "x", "ts": 1.7e9, "clicks": 2**70}).encode(),
        b'{"user_id": "a\\ud800", "ts": 1.0}',  # a lone surrogate
        json.dumps({"user_id": "x", "ts": 1.7e9, "country": "y" * 2000}).encode(),
    ]
    msgs: list[FakeMessage] = []
    for i in range(40):
        msgs.append(message(good_value(i), offset=len(msgs), partition=i % 2))
        if i < len(bad):
            msgs.append(message(bad[i], offset=len(msgs), partition=i % 2))
    return msgs


def summary(batch: PreparedBatch) -> dict[str, Any]:
    return {
        "records": [(r.validated, r.source) for r in batch.records],
        "record_offsets": [m.offset() for m in batch.record_messages],
        "dead": [(d.message.offset(), d.error_class, d.reason) for d in batch.dead],
        "next_offsets": batch.next_offsets,
    }


def test_bad_messages_in_a_bulk_batch_are_dead_lettered_with_their_reasons() -> None:
    schema = group_schema()
    msgs = mixed_batch()
    bulk = Preparer(TOPIC, max_message_bytes=1500)
    each = Preparer(TOPIC, max_message_bytes=1500)
    each._bulk_json = False  # the per-message path: the reference for every outcome
    got, want = summary(bulk.prepare(msgs, schema)), summary(each.prepare(msgs, schema))
    assert got == want
    assert len(got["records"]) == 40 and len(got["dead"]) == 10
    classes = [c for _, c, _ in got["dead"]]
    assert classes == ["undecodable", "undecodable", "undecodable", "schema", "schema", "schema",
                       "schema", "schema", "schema", "oversized"]
    reasons = [r for _, _, r in got["dead"]]
    assert "clicks" in reasons[3] and "unknown_feature" in reasons[4]
    assert got["next_offsets"] == {("t", 0): 49, ("t", 1): 50}


def test_a_record_over_the_size_limit_is_refused_by_the_per_message_path() -> None:
    schema = group_schema()
    huge = json.dumps({"user_id": "x", "ts": 1.7e9, "country": "y" * 400_000}).encode()
    msgs = [message(good_value(0), 0), message(huge, 1), message(good_value(2), 2)]
    got = summary(Preparer(TOPIC, max_message_bytes=1 << 20).prepare(msgs, schema))
    assert got["record_offsets"] == [0, 2]
    assert [(o, c) for o, c, _ in got["dead"]] == [(1, "oversized")]
