"""Start-up compilation: every kernel signature compiled (or loaded from Numba's on-disk cache)
before the first request, and checked to be the only one a request can use."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.core.aggregation import kernels, record_inputs
from tessera.core.aggregation.columns import Events
from tessera.core.aggregation.plan import StreamPlan

#: The entry points called from Python, each with the one signature it is compiled for (the
#: functions they call are compiled with them).
KERNELS: tuple[tuple[str, Any, tuple[Any, ...]], ...] = (
    ("decode_values", kernels.decode_values, kernels.DECODE_SIGNATURE),
    ("fold_tiles", kernels.fold_tiles, kernels.FOLD_SIGNATURE),
    ("encode_values", kernels.encode_values, kernels.ENCODE_SIGNATURE),
    ("fold_values", kernels.fold_values, kernels.FOLD_VALUES_SIGNATURE),
    ("read_values", kernels.read_values, kernels.READ_VALUES_SIGNATURE),
    ("read_encoded", kernels.read_encoded, kernels.READ_ENCODED_SIGNATURE),
    ("pit_aggregate", kernels.pit_aggregate, kernels.PIT_SIGNATURE),
    ("scan_inputs", record_inputs.scan_inputs, record_inputs.SCAN_SIGNATURE),
)


@dataclass(frozen=True)
class WarmUp:
    """What warm_up did: seconds to compile (or load) the kernels, and to run each once; and
    how many specialisations each entry point has (its one signature, plus any compiled for
    calls from another kernel)."""

    compile_s: float
    first_run_s: float
    signatures: dict[str, int]


def signature_counts() -> dict[str, int]:
    """Specialisations compiled per entry point: must not grow after warm_up."""
    return {name: len(kern.signatures) for name, kern, _ in KERNELS}


def warm_up() -> WarmUp:
    """Compile every entry point for its one signature, then run fold, read, point-in-time and
    the codec once through the public wrappers; raises RuntimeError if that needed another
    signature (a request would then pay a compilation)."""
    start = time.perf_counter()
    for _, kern, sig in KERNELS:
        kern.compile(sig)
    compiled = time.perf_counter()
    counts = signature_counts()
    _exercise()
    ran = time.perf_counter()
    grown = [name for name, n in signature_counts().items() if n != counts[name]]
    if grown:
        raise RuntimeError(f"a call compiled a new signature of: {', '.join(grown)}")
    return WarmUp(compiled - start, ran - compiled, counts)


def _exercise() -> None:
    from tessera.core.aggregation import codec, offline, online
    from tessera.core.aggregation.spec import AggregationDefinition, check
    from tessera.core.schema import FeatureType
    from tessera.core.values import to_record

    plan = check(
        [
            AggregationDefinition(name="n", function="count", window="1h"),
            AggregationDefinition(name="s", function="sum", source="x", window="1h"),
            AggregationDefinition(name="l", function="last_n", source="x", window="1d", n=2),
        ],
        {"id": FeatureType.parse("String"), "x": FeatureType.parse("Fractional")},
        record_identifier="id",
    ).streams[0]
    events = _events(plan)
    result = online.fold(plan, [None], events)
    online.read(plan, result.values, 3_600_000_000)
    online.read_encoded(plan, result.values, 3_600_000_000, online.encoded_fields(plan, None))
    codec.encode(codec.decode(result.values, plan.n_sources, plan.recent_capacity))
    offline.point_in_time(plan, events, np.zeros(1, np.int64), np.array([3_600_000_000]))
    payload = to_record({"id": "a", "x": 1.5}).SerializeToString()
    group = check(
        [AggregationDefinition(name="n", function="count", window="1h")],
        {"id": FeatureType.parse("String"), "x": FeatureType.parse("Fractional")},
        record_identifier="id",
    )
    record_inputs.aggregate_columns("g", group, ["a"], payload, np.array([0, len(payload)]))


def _events(plan: StreamPlan) -> Events:
    one = np.ones(1, np.int64)
    return Events(0 * one, one, one, one, np.ones((1, plan.n_sources)))
