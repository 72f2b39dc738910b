"""Kafka ingestion end to end: a real broker (tansu, or TESSERA_TEST_KAFKA_BOOTSTRAP), a real
server process, the consumer in-process (threads) or as `python -m tessera.ingest`."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.client import FeatureStoreClient
from tessera.ingest import IngestMetrics, config_from_dict, run_consumers
from tessera.ingest.consumer import TopicConsumer
from tessera.ingest.dlq import (
    ERROR_CLASS,
    ERROR_REASON,
    FAILED_AT,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
)
from tessera.ingest.grpc_sink import GrpcSink
from tests.kafka_fixtures import FixedPortServer, IngestProcess, KafkaBroker, session_broker
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

FEATURES = {"user_id": "String", "ts": "Fractional", "clicks": "Integral", "ctr": "Fractional"}
T0 = 1_700_000_000.0


@pytest.fixture(scope="session")
def kafka() -> KafkaBroker:
    return session_broker()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(step_s)


def event(user: int, version: int) -> dict[str, Any]:
    return {"user_id": f"u{user}", "ts": T0 + version, "clicks": version, "ctr": version / 100}


def messages(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), json.dumps(e).encode()) for e in events]


def latest(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["user_id"] not in out or e["ts"] > out[e["user_id"]]["ts"]:
            out[e["user_id"]] = e
    return out


def assert_latest_readable(
    fs: FeatureStoreClient, group: str, events: list[dict[str, Any]]
) -> None:
    want = latest(events)
    got = {
        r["record_identifier"]: r["record"]
        for r in fs.batch_get_record({group: list(want)}).records
    }
    missing = sorted(set(want) - set(got))
    assert not missing, f"{len(missing)} ids missing, e.g. {missing[:5]}"
    wrong = [i for i in want if got[i]["clicks"] != want[i]["clicks"]]
    assert not wrong, f"{len(wrong)} ids not at their latest version, e.g. {wrong[:5]}"


class InProcessIngest:
    """run_consumers in a thread, against a server's gRPC API."""

    def __init__(self, config: dict[str, Any], server: ServerProcess) -> None:
        self.config = config_from_dict(config)
        self.metrics = IngestMetrics()
        self.stop_event = threading.Event()
        self.sink = GrpcSink(server.grpc_target, server.http_url)
        self.consumers = [
            TopicConsumer(self.config, t, self.sink, self.metrics) for t in self.config.topics
        ]
        self.thread = threading.Thread(
            target=run_consumers,
            args=(self.config, self.sink, self.stop_event, self.metrics, self.consumers),
        )

    def start(self) -> InProcessIngest:
        self.thread.start()
        return self

    @property
    def written(self) -> int:
        return sum(c.records_written for c in self.consumers)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        self.sink.close()
        assert not self.thread.is_alive(), "the consumer did not stop"


@pytest.fixture
def ingest_runs() -> Iterator[list[InProcessIngest]]:
    runs: list[InProcessIngest] = []
    yield runs
    for run in runs:
        if run.thread.is_alive():
            run.stop()


def make_group(server: ServerProcess, name: str) -> FeatureStoreClient:
    fs = FeatureStoreClient(grpc=server.grpc_target, http=server.http_url)
    fs.create_feature_group(name, "user_id", "ts", FEATURES)
    return fs


def topic_config(kafka: KafkaBroker, topic: str, group: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": kafka.bootstrap,
        "group_id": kafka.unique("ingest"),
        "batch_max_records": 500,
        "batch_max_ms": 50,
        "retry_initial_backoff_s": 0.05,
        "retry_max_backoff_s": 0.5,
        **extra,
        "topics": [{"topic": topic, "feature_group": group}],
    }


def committed_all(kafka: KafkaBroker, group_id: str, topic: str, partitions: int) -> bool:
    return kafka.committed(group_id, topic, partitions) == kafka.end_offsets(topic, partitions)


# --- delivery ------------------------------------------------------------------------------------


def test_produced_messages_are_all_readable_at_their_latest_version(
    kafka: KafkaBroker,
    server: ServerProcess,
    unique_group_name: str,
    ingest_runs: list[InProcessIngest],
) -> None:
    fs = make_group(server, unique_group_name)
    topic = kafka.create_topic(kafka.unique("clicks"), partitions=4)
    kafka.create_topic(f"{topic}.dlq")
    events = [event(u, v) for u in range(300) for v in range(10)]
    random.Random(7).shuffle(events)  # event time, not arrival order, decides the latest
    kafka.produce(topic, messages(events))

    cfg = topic_config(kafka, topic, unique_group_name)
    run = InProcessIngest(cfg, server).start()
    ingest_runs.append(run)
    wait_for(lambda: committed_all(kafka, cfg["group_id"], topic, 4), 60, "all offsets committed")

    assert run.written == len(events)
    assert run.metric(
        "tessera_ingest_records_total", topic=topic, feature_group=unique_group_name
    ) == len(events)
    assert_latest_readable(fs, unique_group_name, events)
    run.stop()
    # Freshness and batch latency were observed; lag is back to zero.
    assert run.metric(
        "tessera_ingest_freshness_seconds_count", feature_group=unique_group_name
    ) == len(events)
    assert run.metric("tessera_ingest_batch_duration_seconds_count", topic=topic) >= 1


def test_poison_messages_go_to_the_dead_letter_topic_and_good_ones_land(
    kafka: KafkaBroker,
    server: ServerProcess,
    unique_group_name: str,
    ingest_runs: list[InProcessIngest],
) -> None:
    fs = make_group(server, unique_group_name)
    topic = kafka.create_topic(kafka.unique("poison"), partitions=2)
    dlq = kafka.create_topic(f"{topic}.dlq")
    good = [event(u, 1) for u in range(50)]
    poison: list[tuple[bytes, str, str]] = [
        (b"not json at all", "undecodable", "the value is not valid JSON"),
        (b"[1, 2, 3]", "undecodable", "the value is a JSON array; expected a JSON object"),
        (
            json.dumps({"user_id": "p1", "ts": T0, "clicks": "many"}).encode(),
            "schema",
            "record: feature 'clicks' has type Integral; got a String (string_value)",
        ),
        (
            json.dumps({"user_id": "p2", "ts": T0, "bogus": 1}).encode(),
            "schema",
            f"record: feature 'bogus' is not in group '{unique_group_name}'; known: user_id, ts, "
            "clicks, ctr",
        ),
        (
            json.dumps({"ts": T0, "clicks": 1}).encode(),
            "schema",
            "record: the record identifier feature 'user_id' is missing",
        ),
        (
            b'{"user_id": "p3", "ts": NaN}',
            "schema",
            "record: feature 'ts' is nan; Fractional values must be finite",
        ),
        (
            json.dumps({"user_id": "p4", "ts": T0, "clicks": True}).encode(),
            "schema",
            "a bool is not a feature type",
        ),
        (
            json.dumps({"user_id": "p5", "ts": T0, "clicks": 1, "pad": "x" * 70_000}).encode(),
            "oversized",
            "the message value is",
        ),
    ]
    mixed = messages(good[:25]) + [(b"poison", p[0]) for p in poison] + messages(good[25:])
    kafka.produce(topic, mixed, partition=0, headers=[("trace-id", b"abc")])
    kafka.produce(topic, [(b"p6", None)], partition=1)  # a tombstone: no value

    cfg = topic_config(kafka, topic, unique_group_name, max_message_bytes=65_536)
    run = InProcessIngest(cfg, server).start()
    ingest_runs.append(run)
    wait_for(lambda: committed_all(kafka, cfg["group_id"], topic, 2), 60, "all offsets committed")

    dead = kafka.consume_all(dlq, len(poison) + 1)
    assert len(dead) == len(poison) + 1
    by_offset = {}
    for msg in dead:
        headers = dict(msg.headers())
        assert headers[SOURCE_TOPIC] == topic.encode()
        assert headers[FAILED_AT].endswith(b"Z")
        by_offset[(int(headers[SOURCE_PARTITION]), int(headers[SOURCE_OFFSET]))] = (msg, headers)
    for i, (value, error_class, reason) in enumerate(poison):
        msg, headers = by_offset[(0, 25 + i)]
        assert msg.value() == value, "the original bytes"
        assert headers["trace-id"] == b"abc", "the original headers are kept"
        assert headers[ERROR_CLASS] == error_class.encode()
        assert reason in headers[ERROR_REASON].decode(), headers[ERROR_REASON]
    tombstone, headers = by_offset[(1, 0)]
    assert tombstone.value() is None and headers[ERROR_CLASS] == b"undecodable"

    assert_latest_readable(fs, unique_group_name, good)
    assert run.metric("tessera_ingest_dead_letters_total", topic=topic, error_class="schema") == 5
    assert (
        run.metric("tessera_ingest_dead_letters_total", topic=topic, error_class="undecodable") == 3
    )
    assert (
        run.metric("tessera_ingest_dead_letters_total", topic=topic, error_class="oversized") == 1
    )


def test_two_consumers_share_partitions_and_a_rebalance_loses_nothing(
    kafka: KafkaBroker,
    server: ServerProcess,
    unique_group_name: str,
    ingest_runs: list[InProcessIngest],
) -> None:
    fs = make_group(server, unique_group_name)
    topic = kafka.create_topic(kafka.unique("shared"), partitions=4)
    kafka.create_topic(f"{topic}.dlq")
    cfg = topic_config(kafka, topic, unique_group_name)
    gid = cfg["group_id"]
    events: list[dict[str, Any]] = []

    def produce(version: int) -> None:
        batch = [event(u, version) for u in range(400)]
        events.extend(batch)
        kafka.produce(topic, messages(batch))

    a = InProcessIngest(cfg, server).start()
    ingest_runs.append(a)
    produce(1)
    wait_for(lambda: committed_all(kafka, gid, topic, 4), 60, "A committed round 1")

    b = InProcessIngest(cfg, server).start()  # joins: the four partitions are split
    ingest_runs.append(b)
    wait_for(
        lambda: (
            a.metric("tessera_ingest_rebalances_total", topic=topic, kind="revoke") >= 1
            and b.metric("tessera_ingest_rebalances_total", topic=topic, kind="assign") >= 1
        ),
        30,
        "a rebalance",
    )
    produce(2)
    wait_for(lambda: committed_all(kafka, gid, topic, 4), 60, "round 2 committed")
    assert b.written > 0 and a.written > 400, "both members took part"

    a.stop()  # leaves: B takes every partition
    produce(3)
    wait_for(lambda: committed_all(kafka, gid, topic, 4), 60, "round 3 committed by B")
    b.stop()
    assert_latest_readable(fs, unique_group_name, events)
    assert a.written + b.written >= len(events), "at least once"


# --- failures ------------------------------------------------------------------------------------


def ingest_args(
    kafka: KafkaBroker, server: ServerProcess, topic: str, group: str, group_id: str, *extra: str
) -> list[str]:
    return [
        "--bootstrap-servers",
        kafka.bootstrap,
        "--topic",
        topic,
        "--feature-group",
        group,
        "--dead-letter-topic",
        f"{topic}.dlq",
        "--grpc",
        server.grpc_target,
        "--http",
        server.http_url,
        "--group-id",
        group_id,
        *extra,
    ]


def test_consumer_killed_with_sigkill_and_restarted_loses_nothing(
    kafka: KafkaBroker,
    server: ServerProcess,
    unique_group_name: str,
    tmp_path: Path,
) -> None:
    fs = make_group(server, unique_group_name)
    topic = kafka.create_topic(kafka.unique("kill"), partitions=2)
    kafka.create_topic(f"{topic}.dlq")
    gid = kafka.unique("ingest")
    args = ingest_args(
        kafka,
        server,
        topic,
        unique_group_name,
        gid,
        "--batch-max-records",
        "200",
        "--batch-max-ms",
        "20",
    )
    events = [event(u, v) for v in range(12) for u in range(500)]  # 6,000, in waves of versions

    def produce_steadily() -> None:
        for i in range(0, len(events), 500):  # ~1,700 events/s for ~3.6 s
            kafka.produce(topic, messages(events[i : i + 500]))
            time.sleep(0.3)

    proc = IngestProcess(args, tmp_path / "ingest.log").start()
    try:
        wait_for(lambda: "ingest: assigned" in proc.log(), 60, "the partition assignment")
        producer = threading.Thread(target=produce_steadily)
        producer.start()
        wait_for(
            lambda: any(o > 0 for o in kafka.committed(gid, topic, 2).values()),
            60,
            "a first commit",
        )
        proc.kill()  # mid-stream: batches in flight, some written but not committed
        assert producer.is_alive(), "killed while messages were still arriving"
        proc = IngestProcess(args, tmp_path / "ingest.log").start()
        producer.join()
        wait_for(lambda: committed_all(kafka, gid, topic, 2), 90, "all committed after restart")
        assert_latest_readable(fs, unique_group_name, events)
    finally:
        proc.kill()
    assert "dead-lettered" not in proc.log()


def test_sigterm_drains_the_batch_and_commits(
    kafka: KafkaBroker,
    server: ServerProcess,
    unique_group_name: str,
    tmp_path: Path,
) -> None:
    fs = make_group(server, unique_group_name)
    topic = kafka.create_topic(kafka.unique("term"), partitions=1)
    kafka.create_topic(f"{topic}.dlq")
    gid = kafka.unique("ingest")
    # A batch that would wait a minute for more messages: only the drain writes it.
    args = ingest_args(
        kafka,
        server,
        topic,
        unique_group_name,
        gid,
        "--batch-max-records",
        "100000",
        "--batch-max-ms",
        "60000",
    )
    proc = IngestProcess(args, tmp_path / "ingest.log").start()
    try:
        wait_for(lambda: "ingest: assigned" in proc.log(), 60, "the partition assignment")
        events = [event(u, 1) for u in range(300)]
        kafka.produce(topic, messages(events))
        time.sleep(1.0)  # fetched into the batch
        assert fs.get_record(unique_group_name, "u0") is None, "still batched"
        assert proc.stop() == 0, proc.log()
    finally:
        proc.kill()
    assert committed_all(kafka, gid, topic, 1)
    assert_latest_readable(fs, unique_group_name, events)


def test_store_down_pauses_without_committing_and_recovers_when_it_is_back(
    kafka: KafkaBroker,
    tmp_path: Path,
    ingest_runs: list[InProcessIngest],
) -> None:
    server = FixedPortServer(tmp_path / "data")
    server.start()
    try:
        group = "down"
        fs = make_group(server, group)
        topic = kafka.create_topic(kafka.unique("down"), partitions=2)
        kafka.create_topic(f"{topic}.dlq")
        cfg = topic_config(kafka, topic, group)
        gid = cfg["group_id"]
        run = InProcessIngest(cfg, server).start()
        ingest_runs.append(run)
        first = [event(u, 1) for u in range(100)]
        kafka.produce(topic, messages(first))
        wait_for(lambda: committed_all(kafka, gid, topic, 2), 60, "round 1 committed")
        before = kafka.committed(gid, topic, 2)

        server.stop()
        second = [event(u, 2) for u in range(100)]
        kafka.produce(topic, messages(second))
        wait_for(
            lambda: run.metric("tessera_ingest_store_retries_total", topic=topic) >= 3,
            30,
            "failed writes being retried",
        )
        assert run.metric("tessera_ingest_paused", topic=topic) == 1
        assert kafka.committed(gid, topic, 2) == before, "nothing committed while down"

        server.start()
        wait_for(lambda: committed_all(kafka, gid, topic, 2), 60, "round 2 committed")
        assert run.metric("tessera_ingest_paused", topic=topic) == 0
        fs.close()
        fs = FeatureStoreClient(grpc=server.grpc_target, http=server.http_url)
        assert_latest_readable(fs, group, first + second)
        run.stop()
    finally:
        server.kill()
