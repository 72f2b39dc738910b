"""Aggregation features in the online store: the writer folds each commit's events into the
tiles kept in the "aggregates" column family, in the commit's own WriteBatch (so an
acknowledged put is in its aggregates exactly when it is durable), and reads return them next to
the record's features.

The server runs `ensure_kernels()` before it reports ready: the kernels (Numba) are compiled, or
loaded from Numba's on-disk cache (~0.3 s; a compile takes ~20 s, once per installation), so no
read or write ever pays a compilation, whenever its group was created.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tessera.core.aggregation.inputs import AggregationInput
from tessera.core.aggregation.plan import AggregationPlan, StreamPlan
from tessera.core.keys import aggregate_key
from tessera.proto.v1 import feature_store_pb2 as pb

log = logging.getLogger(__name__)

_warm_lock = threading.Lock()
_warm = False


def ensure_kernels() -> None:
    """Compile (or load from Numba's cache) every aggregation kernel and the compiled record
    validation (core/record_scan.py), once per process; callers block until it is done."""
    global _warm
    if _warm:
        return
    with _warm_lock:
        if _warm:
            return
        from tessera.core.aggregation.warmup import warm_up
        from tessera.core.records import load_compiled_validation

        log.info("loading the aggregation kernels (the first start after an install compiles "
                 "them: ~20 s)")
        done = warm_up()
        log.info(
            "aggregation kernels ready: compiled or loaded in %.2f s, first run %.2f s",
            done.compile_s,
            done.first_run_s,
        )
        # The compiled record validation too, so the first PutRecord does not wait for it.
        start = time.perf_counter()
        load_compiled_validation()
        log.info("record validation kernel ready in %.2f s", time.perf_counter() - start)
        _warm = True


@dataclass(frozen=True, slots=True)
class AggregateEvent:
    """What a put hands the writer for its group's aggregations."""

    group_name: str
    plan: AggregationPlan
    inputs: AggregationInput


@dataclass
class _StreamBatch:
    """One stream's events of one commit: keys in first-seen order, events in seq order."""

    group_name: str
    stream: StreamPlan
    keys: dict[bytes, int] = field(default_factory=dict)
    key_index: list[int] = field(default_factory=list)
    event_time_us: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    values: list[tuple[float, ...]] = field(default_factory=list)


class CommitAggregates:
    """Collects a commit's events per (group, stream), then folds them into its WriteBatch."""

    def __init__(self) -> None:
        self._streams: dict[tuple[int, int], _StreamBatch] = {}

    def __bool__(self) -> bool:
        return bool(self._streams)

    def add(self, group_id: int, event: AggregateEvent, event_time_us: int, seq: int) -> None:
        """An accepted put (applied online or older than the stored record: both are events)."""
        inputs = event.inputs
        for stream in event.plan.streams:
            text = inputs.keys[stream.stream_id]
            if text is None:
                continue  # a null key feature: the event is in none of this stream's keys
            batch = self._streams.get((group_id, stream.stream_id))
            if batch is None:
                batch = _StreamBatch(event.group_name, stream)
                self._streams[(group_id, stream.stream_id)] = batch
            key = aggregate_key(group_id, stream.stream_id, text)
            batch.key_index.append(batch.keys.setdefault(key, len(batch.keys)))
            batch.event_time_us.append(event_time_us)
            batch.seq.append(seq)
            batch.values.append(inputs.values[stream.stream_id])

    def discard_groups(self, group_ids: set[int]) -> None:
        """Forget the events of groups dropped in (or before) this commit."""
        for gid, sid in [k for k in self._streams if k[0] in group_ids]:
            del self._streams[(gid, sid)]

    def fold(
        self,
        read: Callable[[list[bytes]], Sequence[bytes | None]],
        put: Callable[[bytes, bytes], None],
        delete: Callable[[bytes], None],
        commit_us: int,
    ) -> dict[str, int]:
        """Fold every stream's events into its keys' stored tiles (read with `read`, written
        with `put` / `delete`); the events dropped as too late, per group name."""
        from tessera.core.aggregation import online
        from tessera.core.aggregation.columns import Events

        ensure_kernels()
        dropped: dict[str, int] = {}
        for batch in self._streams.values():
            keys = list(batch.keys)
            m = len(batch.key_index)
            n_sources = batch.stream.n_sources
            values = np.array(batch.values, dtype=np.float64).reshape(m, n_sources)
            events = Events(
                np.array(batch.key_index, dtype=np.int64),
                np.array(batch.event_time_us, dtype=np.int64),
                np.full(m, commit_us, dtype=np.int64),
                np.array(batch.seq, dtype=np.int64),
                values,
            )
            result = online.fold(batch.stream, read(keys), events, commit_us)
            for key, value in zip(keys, result.values, strict=True):
                if value is None:
                    delete(key)
                else:
                    put(key, value)
            n = int(result.dropped.sum())
            if n:
                dropped[batch.group_name] = dropped.get(batch.group_name, 0) + n
        return dropped


# --- reads -------------------------------------------------------------------------------------


def stream_keys(
    plan: AggregationPlan, group_id: int, record_id: str, payload: bytes | memoryview
) -> list[bytes | None]:
    """The aggregate key of each stream for a stored record (None: its key feature is null).
    The record is decoded only when a stream is keyed by a feature other than the id."""
    keyed = [s for s in plan.streams if s.key is not None]
    found: dict[str, str | None] = {}
    if keyed:
        from tessera.core.aggregation.inputs import key_text

        wanted = {s.key for s in keyed}
        for fv in pb.Record.FromString(bytes(payload)).features:
            if fv.feature_name in wanted:
                found[fv.feature_name] = key_text(fv)
    out: list[bytes | None] = []
    for s in plan.streams:
        text = record_id if s.key is None else found.get(s.key)
        out.append(None if text is None else aggregate_key(group_id, s.stream_id, text))
    return out


def read_features(
    plan: AggregationPlan,
    stored: Sequence[Sequence[bytes | None]],
    present: Sequence[Sequence[bool]],
    now_us: int,
    wanted: frozenset[str] | None = None,
) -> list[bytes]:
    """Per record: its aggregation features as of `now_us`, encoded as Record.features entries
    to append to the stored record's bytes (by the kernel, which reads and encodes in one
    call per stream). `stored[s][i]` is stream s's value for record i (None: no events),
    `present[s][i]` False where the record's key feature is null (its aggregates of that
    stream are null). `wanted`: only these names (None: all)."""
    from tessera.core.aggregation import online

    ensure_kernels()
    n = len(stored[0]) if stored else 0
    out = [b""] * n
    for stream, values, here in zip(plan.streams, stored, present, strict=True):
        fields = online.encoded_fields(stream, wanted)
        if not len(fields.kinds):
            continue
        encoded = online.read_encoded(stream, values, now_us, fields)
        for i in range(n):
            if here[i]:
                out[i] += encoded[i]
    return out
