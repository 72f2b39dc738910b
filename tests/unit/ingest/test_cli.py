"""`tessera ingest` flags -> IngestConfig."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tessera.core.errors import InvalidRequestError
from tessera.ingest.cli import add_arguments, config_from_args
from tessera.server.cli import build_parser


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_describe_one_topic() -> None:
    config = config_from_args(parse(
        "--bootstrap-servers", "k:9092", "--topic", "clicks", "--feature-group", "users",
        "--dead-letter-topic", "clicks.bad", "--group-id", "g1", "--map", "clicks=stats.clicks",
        "--record-id-from-key", "--event-time-from-timestamp", "--batch-max-records", "10",
        "--consumer-property", "security.protocol=PLAINTEXT",
    ))
    (topic,) = config.topics
    assert (config.bootstrap_servers, config.group_id, config.batch_max_records) == ("k:9092", "g1", 10)
    assert (topic.topic, topic.feature_group, topic.dlq_topic) == ("clicks", "users", "clicks.bad")
    assert topic.fields == {"clicks": "stats.clicks"}
    assert (topic.record_id, topic.event_time) == ("key", "timestamp")
    assert config.consumer == {"security.protocol": "PLAINTEXT"}


def test_avro_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(InvalidRequestError, match="--format avro is not supported yet; use json"):
        config_from_args(parse("--bootstrap-servers", "k", "--topic", "t", "--feature-group",
                               "g", "--format", "avro"))


def test_a_config_file_cannot_be_mixed_with_topic_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"bootstrap_servers": "a", "topics": [{"topic": "t", "feature_group": "g"}]}')
    with pytest.raises(InvalidRequestError, match="--topic: topic flags cannot be combined"):
        config_from_args(parse("--config", str(path), "--topic", "x"))
    config = config_from_args(parse("--config", str(path), "--bootstrap-servers", "b:1"))
    assert config.bootstrap_servers == "b:1"


def test_missing_flags_are_named() -> None:
    with pytest.raises(InvalidRequestError, match="--bootstrap-servers, --feature-group required"):
        config_from_args(parse("--topic", "t"))


def test_the_tessera_cli_has_the_ingest_subcommand() -> None:
    args = build_parser().parse_args(["ingest", "--topic", "t", "--grpc", "h:1"])
    assert args.grpc == "h:1" and args.topic == "t"
