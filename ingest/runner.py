"""Running the consumers of an IngestConfig: one thread per topic, all writing through one sink,
until a stop event is set (the CLI sets it on SIGTERM / SIGINT; the server on shutdown).

    stop = threading.Event()
    run_consumers(config, sink, stop)          # blocks; returns once every consumer has
                                               # drained its batch, committed and left
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tessera.ingest.config import IngestConfig, TopicConfig
from tessera.ingest.consumer import ConsumerLike, TopicConsumer
from tessera.ingest.metrics import IngestMetrics
from tessera.ingest.sinks import Sink

log = logging.getLogger(__name__)


class IngestFailedError(RuntimeError):
    """A consumer stopped on an error it cannot recover from (the others were stopped too)."""


def build_consumers(
    config: IngestConfig,
    sink: Sink,
    metrics: IngestMetrics,
    consumer_factory: Callable[[dict[str, Any]], ConsumerLike] | None = None,
) -> list[TopicConsumer]:
    """One TopicConsumer per configured topic."""

    def one(topic: TopicConfig) -> TopicConsumer:
        if consumer_factory is None:
            return TopicConsumer(config, topic, sink, metrics)
        return TopicConsumer(config, topic, sink, metrics, consumer_factory=consumer_factory)

    return [one(t) for t in config.topics]


def run_consumers(
    config: IngestConfig,
    sink: Sink,
    stop: threading.Event,
    metrics: IngestMetrics | None = None,
    consumers: list[TopicConsumer] | None = None,
) -> None:
    """Run a consumer per topic until `stop` is set; each drains and commits before this
    returns. If one fails, all are stopped and IngestFailedError is raised."""
    metrics = metrics if metrics is not None else IngestMetrics()
    consumers = consumers if consumers is not None else build_consumers(config, sink, metrics)
    errors: list[BaseException] = []

    def run(consumer: TopicConsumer, topic: TopicConfig) -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:
            log.exception("ingest: the consumer of '%s' failed; stopping", topic.topic)
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=run, args=(c, t), name=f"tessera-ingest-{t.topic}", daemon=True)
        for c, t in zip(consumers, config.topics, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise IngestFailedError(f"ingest stopped: {errors[0]!r}") from errors[0]
