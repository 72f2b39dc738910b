"""`tessera ingest`: a consumer-group member writing Kafka topics into feature groups through a
Tessera server's gRPC API (also `python -m tessera.ingest`).

One topic from flags:

    tessera ingest --bootstrap-servers 127.0.0.1:9092 --topic clicks --feature-group users \\
        --dead-letter-topic clicks.dlq --grpc 127.0.0.1:50051 --http http://127.0.0.1:8080

Against a secured server: `--api-key KEY` (or $TESSERA_API_KEY) and `--tls-ca ca.pem`
(`--tls-cert`/`--tls-key` for mutual TLS).

Several topics from a file (JSON, TOML, or YAML with PyYAML): `tessera ingest --config FILE`.
Stops on SIGTERM / SIGINT after finishing and committing the current batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.ingest.config import IngestConfig, KafkaProperty, config_from_dict, load_config

log = logging.getLogger("tessera.ingest")

_TOPIC_FLAGS = ("topic", "feature_group", "dead_letter_topic", "format", "protobuf_message",
                "descriptor_set", "map", "record_id_from_key", "event_time_from_timestamp",
                "ignore_unknown_fields", "ttl_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `tessera ingest` (shared by `python -m tessera.ingest`)."""
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port[,...]")
    kafka.add_argument("--topic", help="the topic to consume")
    kafka.add_argument("--feature-group", help="the feature group its records go to")
    kafka.add_argument("--dead-letter-topic",
                       help="where bad messages go, with the reason (default: TOPIC.dlq)")
    kafka.add_argument("--group-id", help="consumer group (default: tessera-ingest)")
    kafka.add_argument("--config", type=Path,
                       help="several topics -> feature groups from a .json/.toml/.yaml file "
                            "(an IngestConfig); --bootstrap-servers and --group-id override it")
    kafka.add_argument("--consumer-property", action="append", default=[], metavar="KEY=VALUE",
                       help="extra librdkafka consumer property (repeatable)")
    kafka.add_argument("--producer-property", action="append", default=[], metavar="KEY=VALUE",
                       help="extra librdkafka property of the dead-letter producer (repeatable)")

    fmt = parser.add_argument_group("decoding and mapping")
    fmt.add_argument("--format", choices=("json", "protobuf", "avro"), default="json",
                     help="message value format (avro is not supported yet)")
    fmt.add_argument("--protobuf-message",
                     help="protobuf: the value's message type (default tessera.v1.Record)")
    fmt.add_argument("--descriptor-set", type=Path,
                     help="protobuf: FileDescriptorSet defining --protobuf-message")
    fmt.add_argument("--map", action="append", default=[], metavar="FEATURE=SOURCE",
                     help="feature <- message field ('a.b' nested), '$key' or '$timestamp' "
                          "(repeatable); other features come from the field of the same name")
    fmt.add_argument("--record-id-from-key", action="store_true",
                     help="the record identifier is the message key")
    fmt.add_argument("--event-time-from-timestamp", action="store_true",
                     help="the event time is the Kafka message timestamp")
    fmt.add_argument("--ignore-unknown-fields", action="store_true",
                     help="drop message fields that are not features (default: dead-letter)")
    fmt.add_argument("--ttl-s", type=float, help="records' time to live (default: the group's)")

    batching = parser.add_argument_group("batching")
    batching.add_argument("--batch-max-records", type=int, help="default 5000")
    batching.add_argument("--batch-max-ms", type=int, help="default 25")
    batching.add_argument("--max-message-bytes", type=int,
                          help="larger values are dead-lettered as oversized (default 1 MiB)")

    out = parser.add_argument_group("Tessera")
    out.add_argument("--grpc", default="127.0.0.1:50051", help="the server's gRPC address")
    out.add_argument("--http", default="http://127.0.0.1:8080",
                     help="the server's HTTP URL (for the feature groups' schemas)")
    out.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                     help="API key with write (and read) on the feature groups (default "
                          "$TESSERA_API_KEY)")
    out.add_argument("--tls-ca", type=Path,
                     help="CA bundle (PEM) the server's certificate must chain to: TLS on both "
                          "APIs (the default --http becomes https)")
    out.add_argument("--tls-cert", type=Path, help="client certificate (PEM; mutual TLS)")
    out.add_argument("--tls-key", type=Path, help="the client certificate's key (PEM)")
    out.add_argument("--metrics-port", type=int,
                     help="serve Prometheus metrics on this port (0: any free port)")
    out.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    parser.set_defaults(func=run_from_args)


def register(subparsers: Any) -> None:
    """Add the `ingest` subcommand to the `tessera` CLI (server/cli.py)."""
    parser = subparsers.add_parser(
        "ingest", help="consume Kafka topics into feature groups (through the gRPC API)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    """The IngestConfig the flags describe; InvalidRequestError when they do not add up."""
    if args.format == "avro":
        raise InvalidRequestError(
            "--format avro is not supported yet; use json or protobuf (a tessera.v1.Record, or "
            "your own message type with --protobuf-message and --descriptor-set)"
        )
    overrides: dict[str, Any] = {
        k: v for k, v in (
            ("bootstrap_servers", args.bootstrap_servers),
            ("group_id", args.group_id),
            ("batch_max_records", args.batch_max_records),
            ("batch_max_ms", args.batch_max_ms),
            ("max_message_bytes", args.max_message_bytes),
        ) if v is not None
    }
    consumer = _properties(args.consumer_property, "--consumer-property")
    producer = _properties(args.producer_property, "--producer-property")
    if args.config is not None:
        given = [f"--{f.replace('_', '-')}" for f in _TOPIC_FLAGS if _given(args, f)]
        if given:
            raise InvalidRequestError(
                f"{', '.join(given)}: topic flags cannot be combined with --config; describe "
                "the topics in the file"
            )
        base = load_config(args.config)
        data = base.model_dump(mode="json")
        data.update(overrides)
        data["consumer"] = {**base.consumer, **consumer}
        data["producer"] = {**base.producer, **producer}
        return config_from_dict(data, str(args.config))
    missing = [flag for flag, v in (("--bootstrap-servers", args.bootstrap_servers),
                                    ("--topic", args.topic),
                                    ("--feature-group", args.feature_group)) if not v]
    if missing:
        raise InvalidRequestError(f"{', '.join(missing)} required (or --config FILE)")
    topic: dict[str, Any] = {
        "topic": args.topic,
        "feature_group": args.feature_group,
        "dead_letter_topic": args.dead_letter_topic,
        "format": args.format,
        "protobuf_message": args.protobuf_message,
        "descriptor_set": args.descriptor_set,
        "fields": _properties(args.map, "--map"),
        "record_id": "key" if args.record_id_from_key else "field",
        "event_time": "timestamp" if args.event_time_from_timestamp else "field",
        "unknown_fields": "ignore" if args.ignore_unknown_fields else "reject",
        "ttl_s": args.ttl_s,
    }
    data = {**overrides, "topics": [topic], "consumer": consumer, "producer": producer}
    return config_from_dict(data, "tessera ingest")


def _given(args: argparse.Namespace, name: str) -> bool:
    value = getattr(args, name)
    if name == "format":
        return bool(value != "json")
    return bool(value)


def _properties(items: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, KafkaProperty] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"{flag} '{item}' is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def run_from_args(args: argparse.Namespace) -> int:
    """Run the consumers the flags describe until SIGTERM / SIGINT; the process's exit code."""
    from prometheus_client import start_http_server

    from tessera.ingest.grpc_sink import GrpcSink
    from tessera.ingest.metrics import IngestMetrics
    from tessera.ingest.runner import IngestFailedError, run_consumers

    config = config_from_args(args)
    metrics = IngestMetrics()
    if args.metrics_port is not None:
        server, _ = start_http_server(args.metrics_port, args.metrics_host, metrics.registry)
        port = server.server_address[1]
        log.info("ingest: metrics on http://%s:%d/metrics", args.metrics_host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sink = GrpcSink(args.grpc, args.http, api_key=args.api_key, tls_ca=args.tls_ca,
                    tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        run_consumers(config, sink, stop, metrics)
    except IngestFailedError as exc:
        print(f"tessera ingest: {exc}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tessera.ingest`: the same flags as `tessera ingest`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="tessera ingest", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except TesseraError as exc:
        print(f"tessera ingest: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 2
