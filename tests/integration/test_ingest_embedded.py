"""The embedded ingest sink: the consumer writing straight into a RocksDB online store and its
registry (as `tessera serve` would run it), against a real broker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core.keys import record_key
from tessera.core.schema import FeatureDefinition, FeatureGroupDefinition, FeatureGroupUpdate
from tessera.core.values import from_record
from tessera.ingest import IngestMetrics, config_from_dict, run_consumers
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.ingest_sink import EmbeddedSink
from tessera.server.online_store import RocksDBOnlineStore, now_us
from tessera.server.registry import FeatureGroupRegistry
from tessera.server.rocksdb import RocksDB, open_rocksdb
from tests.kafka_fixtures import KafkaBroker, session_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka() -> KafkaBroker:
    return session_broker()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[FeatureGroupRegistry, RocksDBOnlineStore, RocksDB]]:
    rocks = open_rocksdb(tmp_path / "online", block_cache_mb=8, write_buffer_mb=4)
    online = RocksDBOnlineStore(rocks)
    registry = FeatureGroupRegistry(rocks)
    yield registry, online, rocks
    online.close()
    rocks.close()


def read(registry: FeatureGroupRegistry, online: RocksDBOnlineStore, group: str, rid: str
         ) -> dict[str, object] | None:
    schema = registry.schema(group)
    hit = online.get(record_key(schema.group_id, rid), now_us())
    return None if hit is None else from_record(pb.Record.FromString(bytes(hit[0])))


def test_embedded_sink_writes_into_the_store_and_follows_added_features(
    kafka: KafkaBroker, store: tuple[FeatureGroupRegistry, RocksDBOnlineStore, RocksDB],
) -> None:
    registry, online, _ = store
    registry.create(FeatureGroupDefinition(
        feature_group_name="users", record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of("user_id", "String"),
                             FeatureDefinition.of("ts", "Fractional"),
                             FeatureDefinition.of("clicks", "Integral")],
    ))
    topic = kafka.create_topic(kafka.unique("embedded"), partitions=2)
    kafka.create_topic(f"{topic}.dlq")
    config = config_from_dict({
        "bootstrap_servers": kafka.bootstrap, "group_id": kafka.unique("embedded"),
        "batch_max_ms": 50,
        "topics": [{"topic": topic, "feature_group": "users", "event_time": "timestamp",
                    "record_id": "key"}],
    })
    metrics = IngestMetrics()
    stop = threading.Event()
    sink = EmbeddedSink(registry, online)
    thread = threading.Thread(target=run_consumers, args=(config, sink, stop, metrics))
    thread.start()
    try:
        kafka.produce(topic, [(f"u{i}".encode(), json.dumps({"clicks": i}).encode())
                              for i in range(200)])
        deadline = time.monotonic() + 60
        while read(registry, online, "users", "u199") is None:
            assert time.monotonic() < deadline, "records did not land"
            time.sleep(0.1)
        record = read(registry, online, "users", "u7")
        assert record is not None and record["clicks"] == 7
        assert isinstance(record["ts"], float) and abs(record["ts"] - time.time()) < 120

        # A feature added while consuming: the next messages carrying it land too.
        registry.update("users", FeatureGroupUpdate(
            feature_additions=[FeatureDefinition.of("ctr", "Fractional")]))
        time.sleep(1.1)  # the consumer re-reads a schema at most once a second on errors
        kafka.produce(topic, [(b"u7", json.dumps({"clicks": 70, "ctr": 0.5}).encode())])
        while (read(registry, online, "users", "u7") or {}).get("clicks") != 70:
            assert time.monotonic() < deadline, "the record with the added feature did not land"
            time.sleep(0.1)
        assert read(registry, online, "users", "u7") == pytest.approx(
            {"user_id": "u7", "ts": pytest.approx(time.time(), abs=120), "clicks": 70, "ctr": 0.5})
    finally:
        stop.set()
        thread.join(30)
    assert metrics.registry.get_sample_value(
        "tessera_ingest_records_total", {"topic": topic, "feature_group": "users"}) == 201


def test_tessera_serve_consumes_topics_configured_in_settings(
    kafka: KafkaBroker, tmp_path: Path, compiled_kernels: None
) -> None:
    """The embedded consumer inside a real `tessera serve` process, configured by TESSERA_INGEST:
    records land online, in their group's aggregations and in history with their Kafka source,
    and SIGTERM drains cleanly."""
    from tessera.client import FeatureStoreClient
    from tests.integration.test_offline_history import wait_for_rows
    from tests.serverproc import ServerProcess

    topic = kafka.create_topic(kafka.unique("embedded"), partitions=2)
    config = {"bootstrap_servers": kafka.bootstrap, "group_id": kafka.unique("g"),
              "topics": [{"topic": topic, "feature_group": "events"}]}
    proc = ServerProcess(tmp_path / "data", extra_env={
        "TESSERA_INGEST": json.dumps(config),
        "TESSERA_OFFLINE_STORE__FLUSH_INTERVAL_S": "0.2",
    })
    proc.start()
    try:
        fs = FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url)
        fs.create_feature_group("events", record_identifier="user_id", event_time="ts",
                                features={"user_id": "String", "ts": "Fractional",
                                          "clicks": "Integral"},
                                aggregations=[{"name": "clicks_sum_1h", "source": "clicks",
                                               "function": "sum", "window": "1h"},
                                              {"name": "events_1h", "function": "count",
                                               "window": "1h"}])
        t0 = time.time()
        kafka.produce(topic, [
            (None, json.dumps({"user_id": f"u{i % 10}", "ts": t0 + i, "clicks": i}).encode())
            for i in range(200)
        ])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = fs.get_record("events", "u9")
            if got is not None and got["clicks"] == 199 and got["events_1h"] == 20:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"records did not arrive:\n{proc.log()[-3000:]}")
        # The consumer's batches fold into the aggregates as PutRecords' do.
        assert got["clicks_sum_1h"] == sum(range(9, 200, 10))
        rows = wait_for_rows(proc, "events", 200)
        assert len(rows) == 200
        assert all(r["tessera_source"].startswith(f"kafka:{topic}/") for r in rows)
        fs.close()
        assert proc.stop() == 0
        assert "stopped cleanly" in proc.log()
    finally:
        proc.kill()
