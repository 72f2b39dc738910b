"""Bulk histogram observations equal one observe() per value."""

from __future__ import annotations

import random

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from tessera.ingest.metrics import observe_many


def samples(registry: CollectorRegistry) -> dict[object, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}


def test_observe_many_matches_observe_one_by_one() -> None:
    rng = random.Random(3)
    values = [rng.choice([0.01, 0.025, 0.3, 5.0]) * rng.choice([0.5, 1.0, 2.0]) for _ in range(500)]
    values += [0.0, -1.0, 1e12]
    one, many = CollectorRegistry(), CollectorRegistry()
    bounds = (0.01, 0.025, 0.3, 5.0)
    h1 = Histogram("f", "f", ["g"], buckets=bounds, registry=one)
    h2 = Histogram("f", "f", ["g"], buckets=bounds, registry=many)
    for v in values:
        h1.labels("a").observe(v)
    observe_many(h2.labels("a"), values)
    assert samples(one) == samples(many)
    array = CollectorRegistry()  # the writer hands a NumPy array of a batch's freshness
    h3 = Histogram("f", "f", ["g"], buckets=bounds, registry=array)
    observe_many(h3.labels("a"), np.array(values))
    observe_many(h3.labels("a"), np.array([]))
    assert samples(one) == samples(array)
