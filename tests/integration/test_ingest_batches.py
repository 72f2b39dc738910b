"""The consumer process of `tessera serve --workers 2` writing each batch as one PutBatch: a real
broker, a real server, its writer process.

- A batch mixing good and bad messages writes the good ones (readable) and dead-letters each bad
  one with its reason; two topics into two feature groups are written side by side; a feature
  added while consuming is known to the next batch that uses it.
- Offsets are committed only after the writer's acknowledgement: with the writer stopped
  (SIGSTOP) the consumer's write cannot be acknowledged, nothing more is committed; the consumer
  killed then (between its write and the ack) is restarted, writes the batch again, and nothing
  is lost.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tessera.client import FeatureStoreClient
from tessera.ingest.dlq import ERROR_CLASS, ERROR_REASON, SOURCE_OFFSET
from tests.integration.wire_helpers import Wire
from tests.kafka_fixtures import session_broker
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def wait_until(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def good(i: int, version: int = 0) -> bytes:
    return json.dumps({"user_id": f"u{i}", "ts": T0 + version, "clicks": i + version}).encode()


BAD: list[tuple[bytes, str, str]] = [
    (b"{not json", "undecodable", "not valid JSON"),
    (json.dumps({"user_id": "p1", "ts": T0, "clicks": "many"}).encode(), "schema",
     "feature 'clicks' has type Integral; got a String"),
    (json.dumps({"user_id": "p2", "ts": T0, "bogus": 1}).encode(), "schema",
     "feature 'bogus' is not in group 'g1'"),
    (json.dumps({"ts": T0, "clicks": 1}).encode(), "schema",
     "the record identifier feature 'user_id' is missing"),
]


def test_batches_are_written_whole_dead_lettered_per_record_and_committed_after_the_ack(
    tmp_path: Path, compiled_kernels: None,
) -> None:
    kafka = session_broker()
    t1 = kafka.create_topic(kafka.unique("batches-a"), partitions=1)
    t2 = kafka.create_topic(kafka.unique("batches-b"), partitions=1)
    for t in (t1, t2):
        kafka.create_topic(f"{t}.dlq")
    gid = kafka.unique("batches")
    config = {"bootstrap_servers": kafka.bootstrap, "group_id": gid, "batch_max_ms": 100,
              "topics": [{"topic": t1, "feature_group": "g1"},
                         {"topic": t2, "feature_group": "g2"}]}
    proc = ServerProcess(tmp_path / "data", workers=2, extra_env={
        "TESSERA_INGEST": json.dumps(config)})
    try:
        proc.start(timeout_s=120)
        w = Wire(proc.grpc_target, proc.http_url)
        for group in ("g1", "g2"):  # scalar features: the whole-batch JSON path
            w.create_group(group, features=[
                {"feature_name": "user_id", "feature_type": "String"},
                {"feature_name": "ts", "feature_type": "Fractional"},
                {"feature_name": "clicks", "feature_type": "Integral"}])

        # One produce call: the good and the bad messages of topic 1 reach the consumer in
        # the same batches.
        mixed = [good(i) for i in range(20)] + [b for b, _, _ in BAD] + [
            good(i) for i in range(20, 40)]
        kafka.produce(t1, [(None, v) for v in mixed])
        kafka.produce(t2, [(None, good(i, version=1)) for i in range(40)])
        wait_until(lambda: w.get("g1", "u39") is not None and w.get("g2", "u39") is not None,
                   what="both groups' records")
        for i in range(40):
            assert w.get("g1", f"u{i}") == {"user_id": f"u{i}", "ts": T0, "clicks": i}
            assert w.get("g2", f"u{i}") == {"user_id": f"u{i}", "ts": T0 + 1, "clicks": i + 1}
        assert all(w.get("g1", p) is None for p in ("p1", "p2"))
        dead = kafka.consume_all(f"{t1}.dlq", len(BAD))
        by_offset = {int(dict(m.headers())[SOURCE_OFFSET]): m for m in dead}
        assert sorted(by_offset) == [20, 21, 22, 23]
        for k, (value, error_class, reason) in enumerate(BAD):
            msg = by_offset[20 + k]
            headers = dict(msg.headers())
            assert msg.value() == value
            assert headers[ERROR_CLASS] == error_class.encode()
            assert reason in headers[ERROR_REASON].decode(), headers[ERROR_REASON]
        wait_until(lambda: kafka.committed(gid, t1, 1) == {0: len(mixed)}, what="t1 committed")
        wait_until(lambda: kafka.committed(gid, t2, 1) == {0: 40}, what="t2 committed")

        # A feature added while consuming is known at once (the consumer process's secondary
        # catches up on its slow timer, and whenever the consumer asks for the schema).
        with FeatureStoreClient(grpc=proc.grpc_target, http=proc.http_url) as fs:
            fs.update_feature_group("g2", add_features={"extra": "String"})
        kafka.produce(t2, [(None, json.dumps({"user_id": "n1", "ts": T0, "extra": "x"}).encode())])
        wait_until(lambda: w.get("g2", "n1") is not None, what="the record with the new feature")
        assert w.get("g2", "n1") == {"user_id": "n1", "ts": T0, "extra": "x"}
        wait_until(lambda: kafka.committed(gid, t2, 1) == {0: 41}, what="t2 committed")

        # The writer stopped: the consumer's next write gets no acknowledgement, so nothing is
        # committed; killed meanwhile, it is restarted and writes the batch again.
        info = proc.info()
        writer, consumer = info["writer_pid"], info["consumer_pids"][0]
        os.kill(writer, signal.SIGSTOP)
        try:
            kafka.produce(t1, [(None, good(i, version=2)) for i in range(40)])
            time.sleep(1.5)  # consumed, prepared, submitted to the stopped writer
            assert kafka.committed(gid, t1, 1) == {0: len(mixed)}, "committed before the ack"
            os.kill(consumer, signal.SIGKILL)
        finally:
            os.kill(writer, signal.SIGCONT)
        wait_until(lambda: proc.info()["consumer_pids"] != [consumer], what="the restart")
        wait_until(lambda: kafka.committed(gid, t1, 1) == {0: len(mixed) + 40},
                   what="the batch committed after the restart")
        for i in range(40):
            assert w.get("g1", f"u{i}") == {"user_id": f"u{i}", "ts": T0 + 2, "clicks": i + 2}
        w.close()
        assert proc.stop() == 0
    finally:
        proc.kill()
