"""Batching by size and time, classifying bad messages, and the configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.core.errors import InvalidRequestError
from tessera.ingest.batch import Batcher, Preparer
from tessera.ingest.config import TopicConfig, config_from_dict, load_config
from tests.unit.ingest.fakes import FakeMessage, good, schema


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_is_due_when_full_or_old_enough() -> None:
    clock = Clock()
    b = Batcher(max_records=3, max_ms=100, clock=clock)
    assert not b.due() and b.time_left_s() == pytest.approx(0.1)
    b.add([good("a", 1), good("b", 2)])
    assert not b.due() and b.room() == 1
    clock.now += 0.1
    assert b.due()
    assert len(b.take()) == 2 and len(b) == 0
    b.add([good("a", 1), good("b", 2), good("c", 3)])
    assert b.due()


def test_revoked_partitions_leave_the_batch() -> None:
    b = Batcher(max_records=10, max_ms=100)
    b.add([good("a", 1, partition=0), good("b", 2, partition=1)])
    assert b.drop_partitions({("t", 0)}) == 1
    assert [m.partition() for m in b.take()] == [1]


def test_prepare_sorts_records_from_dead_letters_and_tracks_next_offsets() -> None:
    preparer = Preparer(TopicConfig(topic="t", feature_group="users"), max_message_bytes=1000)
    msgs = [
        good("a", 1, offset=5),
        FakeMessage(b"nope", offset=6),
        FakeMessage(json.dumps({"user_id": "b", "ts": 1.0, "clicks": "x"}).encode(), offset=7),
        FakeMessage(b"x" * 1001, offset=8),
        FakeMessage(None, partition=1, offset=0),
        FakeMessage(json.dumps({"user_id": "c", "ts": 1.0,
                                "clicks": 1}).encode(), partition=1, offset=1),
    ]
    batch = preparer.prepare(msgs, schema())
    assert [r.source for r in batch.records] == ["kafka:t/0/5", "kafka:t/1/1"]
    assert [(d.message.offset(), d.error_class) for d in batch.dead] == [
        (6, "undecodable"), (7, "schema"), (8, "oversized"), (0, "undecodable")]
    assert batch.dead[1].reason == (
        "record: feature 'clicks' has type Integral; got a String (string_value)")
    assert batch.next_offsets == {("t", 0): 9, ("t", 1): 2}
    batch.drop_partitions({("t", 1)})
    assert batch.next_offsets == {("t", 0): 9} and len(batch.records) == 1


def test_a_record_over_350_kb_is_oversized() -> None:
    preparer = Preparer(TopicConfig(topic="t", feature_group="users"),
                        max_message_bytes=10_000_000)
    big = FakeMessage(json.dumps({"user_id": "a", "ts": 1.0, "s": "x" * 400_000}).encode())
    (dead,) = preparer.prepare([big], schema(s="String")).dead
    assert dead.error_class == "oversized"
    assert dead.reason.startswith("record: the record is ")
    assert dead.reason.endswith("bytes; the limit is 358400 (350 KB)")


def test_config_files_in_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "ingest.toml"
    toml.write_text("""
        bootstrap_servers = "k:9092"
        batch_max_ms = 50
        [[topics]]
        topic = "clicks"
        feature_group = "users"
        fields = { user_id = "$key", clicks = "stats.clicks" }
        [[topics]]
        topic = "orders"
        feature_group = "orders"
        dead_letter_topic = "orders-bad"
        format = "protobuf"
    """)
    config = load_config(toml)
    assert config.batch_max_ms == 50 and config.group_id == "tessera-ingest"
    assert [t.dlq_topic for t in config.topics] == ["clicks.dlq", "orders-bad"]
    js = tmp_path / "ingest.json"
    js.write_text(config.model_dump_json())
    assert load_config(js) == config


@pytest.mark.parametrize(("data", "message"), [
    ({"topics": []}, "bootstrap_servers: Field required"),
    ({"bootstrap_servers": "k", "topics": [{"topic": "t"}]}, "topics.0.feature_group"),
    ({"bootstrap_servers": "k", "topics": [{"topic": "t", "feature_group": "g",
                                            "fields": {"a": "$nope"}}]}, "'$nope' is not a source"),
    ({"bootstrap_servers": "k", "topics": [{"topic": "t", "feature_group": "g"},
                                           {"topic": "t", "feature_group": "h"}]},
     "topic 't' is listed twice"),
    ({"bootstrap_servers": "k", "topics": [{"topic": "t", "feature_group": "g",
                                            "format": "protobuf", "protobuf_message": "a.B"}]},
     "needs descriptor_set"),
])
def test_bad_configs_are_refused_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("$", r"\$")):
        config_from_dict(data)


def test_unknown_config_file_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "c.ini").write_text("")
    with pytest.raises(InvalidRequestError, match="unknown config file type '.ini'"):
        load_config(tmp_path / "c.ini")
