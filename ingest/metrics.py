"""Prometheus metrics of the ingest consumer, in a registry of its own (served by `tessera ingest
--metrics-port`; the embedded consumer can be given the server's registry instead).

    tessera_ingest_records_total{topic,feature_group}        records durable in the store
    tessera_ingest_dead_letters_total{topic,error_class}     messages sent to the dead-letter topic
    tessera_ingest_batch_duration_seconds{topic}             batch: decode .. durable .. committed
    tessera_ingest_freshness_seconds{feature_group}          event time -> durable in the store
    tessera_ingest_consumer_lag{topic,partition}             high watermark - position
    tessera_ingest_store_retries_total{topic}                failed writes retried with backoff
    tessera_ingest_paused{topic}                             1 while consumption is paused
    tessera_ingest_rebalances_total{topic,kind}              assign / revoke / lost
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)


class IngestMetrics:
    """The ingest's metrics, registered in `registry` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records = Counter(
            "tessera_ingest_records",
            "Records made durable in the store by the ingest consumer.",
            ["topic", "feature_group"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tessera_ingest_dead_letters",
            "Messages sent to the dead-letter topic, by error class "
            "(undecodable, schema, oversized).",
            ["topic", "error_class"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "tessera_ingest_batch_duration_seconds",
            "Time to process one batch: decode, validate, write until durable, dead-letter, "
            "commit.",
            ["topic"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.freshness = Histogram(
            "tessera_ingest_freshness_seconds",
            "End-to-end freshness: from a record's event time to durable in the store.",
            ["feature_group"],
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "tessera_ingest_consumer_lag",
            "Messages behind the partition's high watermark (high watermark - position).",
            ["topic", "partition"],
            registry=r,
        )
        self.store_retries = Counter(
            "tessera_ingest_store_retries",
            "Batch writes (or dead-letter sends) that failed and are retried with backoff.",
            ["topic"],
            registry=r,
        )
        self.paused = Gauge(
            "tessera_ingest_paused",
            "1 while consumption is paused because the store is unavailable.",
            ["topic"],
            registry=r,
        )
        self.rebalances = Counter(
            "tessera_ingest_rebalances",
            "Partition assignment changes seen by the consumer (assign, revoke, lost).",
            ["topic", "kind"],
            registry=r,
        )


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """Observe every value, one bucket increment per bucket rather than per value (a batch's
    records all become durable at once: ~1.5 us per observe adds up at 50,000 records/s); the
    buckets are found for the whole batch at once (`bisect_left` of each value, as `observe`).

    Uses prometheus_client's Histogram internals (`_upper_bounds`, `_buckets`, `_sum`); falls
    back to observe() if they are not there."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            histogram.observe(float(v))
        return
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds, np.float64), array, side="left"),
                         minlength=len(bounds))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
    total.inc(sum(array.tolist()))  # summed in order, as one observe() after another
