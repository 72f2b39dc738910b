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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import cast

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation.columns import Events
from tessera.core.aggregation.inputs import AggregateColumns, AggregationInput
from tessera.core.aggregation.plan import AggregationPlan, StreamPlan
from tessera.core.keys import aggregate_key
from tessera.proto.v1 import feature_store_pb2 as pb

__all__ = ["AggregateColumns", "AggregateEvent", "CommitAggregates", "TileCache",
           "ensure_kernels"]

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


#: A commit's events of one group as `fold` gathers them: per op (group id, event, event time,
#: seq), or a batch (group id, columns, event times, seqs).
_OpEvent = tuple[int, AggregateEvent, int, int]
_BatchEvents = tuple[int, AggregateColumns, npt.NDArray[np.int64], npt.NDArray[np.int64]]


class CommitAggregates:
    """A commit's aggregation events, folded into its WriteBatch in one pass.

    `add` keeps each event as it comes (one list append: the writer's loop over ops stays
    light), `add_columns` a batch's as columns; `fold` then turns them into columns per (group,
    stream) (key codes, event times, sequence numbers, source values) in seq order, reads every
    touched key's tiles with ONE multi-get, and folds each (group, stream) with one kernel call
    (`online.fold`: decode, fold, encode)."""

    def __init__(self) -> None:
        self._events: list[_OpEvent | _BatchEvents] = []

    def __bool__(self) -> bool:
        return bool(self._events)

    def add(self, group_id: int, event: AggregateEvent, event_time_us: int, seq: int) -> None:
        """An accepted put (applied online or older than the stored record: both are events)."""
        self._events.append((group_id, event, event_time_us, seq))

    def add_columns(
        self,
        group_id: int,
        columns: AggregateColumns,
        event_time_us: npt.NDArray[np.int64],
        seq: npt.NDArray[np.int64],
        accepted: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """A batch's accepted puts (`accepted`: which of the columns' puts were; None: all),
        with their event times and seqs (one per put of the columns)."""
        if accepted is not None and not accepted.all():
            keep = np.flatnonzero(accepted)
            if not len(keep):
                return
            columns = AggregateColumns(
                columns.group_name, columns.plan,
                tuple([keys[i] for i in keep.tolist()] for keys in columns.keys),
                tuple(values[keep] for values in columns.values),
            )  # fmt: skip
            event_time_us, seq = event_time_us[keep], seq[keep]
        if len(columns):
            self._events.append((group_id, columns, event_time_us, seq))

    def discard_groups(self, group_ids: set[int]) -> None:
        """Forget the events of groups dropped in (or before) this commit."""
        if group_ids:
            self._events = [e for e in self._events if e[0] not in group_ids]

    def fold(
        self,
        read: Callable[[list[bytes]], Sequence[bytes | None]],
        put: Callable[[bytes, bytes], None],
        delete: Callable[[bytes], None],
        commit_us: int,
    ) -> dict[str, int]:
        """Fold every stream's events into its keys' stored tiles (read with `read`, once for
        every key of the commit; written with `put` / `delete`); the events dropped as too
        late, per group name."""
        from tessera.core.aggregation import online

        ensure_kernels()
        streams = _stream_columns(self._events, commit_us)
        keys = [key for batch in streams for key in batch.keys]
        stored = read(keys) if keys else []
        dropped: dict[str, int] = {}
        at = 0
        for batch in streams:
            k = len(batch.keys)
            result = online.fold(batch.stream, stored[at : at + k], batch.events, commit_us)
            at += k
            for key, value in zip(batch.keys, result.values, strict=True):
                if value is None:
                    delete(key)
                else:
                    put(key, value)
            n = int(result.dropped.sum())
            if n:
                dropped[batch.group_name] = dropped.get(batch.group_name, 0) + n
        return dropped


@dataclass(frozen=True, eq=False)
class _StreamColumns:
    """One (group, stream)'s events of a commit: the distinct keys in first-seen order, the
    events (in seq order) as columns whose `key` indexes `keys`."""

    group_name: str
    stream: StreamPlan
    keys: list[bytes]
    events: Events


def _stream_columns(
    events: list[_OpEvent | _BatchEvents], commit_us: int
) -> list[_StreamColumns]:
    """A commit's events as columns per (group, stream), groups and streams in first-seen
    order, events in seq order; a stream's plan is the first event's (aggregations never
    change in a group's life, only their plan object may be rebuilt). Every event's write time
    is the commit's."""
    by_group: dict[int, list[_OpEvent | _BatchEvents]] = {}
    for e in events:
        by_group.setdefault(e[0], []).append(e)
    out: list[_StreamColumns] = []
    for group_id, evs in by_group.items():
        parts = _group_parts(evs)
        first = parts[0]
        for stream in first.plan.streams:
            sid = stream.stream_id
            texts: list[str | None] = []
            for part in parts:
                texts.extend(part.keys[sid])
            values = np.concatenate([part.values[sid] for part in parts])
            times = np.concatenate([part.times for part in parts])
            seqs = np.concatenate([part.seqs for part in parts])
            if len(parts) > 1 and np.any(seqs[1:] < seqs[:-1]):  # ops and batches interleaved
                order = np.argsort(seqs, kind="stable")
                texts = [texts[i] for i in order.tolist()]
                values, times, seqs = values[order], times[order], seqs[order]
            if None in texts:  # a null key feature: the event is in none of the stream's keys
                kept = [j for j, t in enumerate(texts) if t is not None]
                if not kept:
                    continue
                texts = [texts[j] for j in kept]
                values, times, seqs = values[kept], times[kept], seqs[kept]
            codes: dict[str | None, int] = {}
            key_codes = [codes.setdefault(t, len(codes)) for t in texts]
            prefix = aggregate_key(group_id, sid, "")
            out.append(_StreamColumns(
                first.group_name, stream, [prefix + cast(str, t).encode() for t in codes],
                Events(np.array(key_codes, np.int64), times,
                       np.full(len(texts), commit_us, np.int64), seqs, values),
            ))  # fmt: skip
    return out


@dataclass(frozen=True, eq=False)
class _Part:
    """A run of one group's events: per-op events gathered into columns, or a batch's."""

    group_name: str
    plan: AggregationPlan
    keys: tuple[Sequence[str | None], ...]
    values: tuple[npt.NDArray[np.float64], ...]
    times: npt.NDArray[np.int64]
    seqs: npt.NDArray[np.int64]


def _group_parts(evs: list[_OpEvent | _BatchEvents]) -> list[_Part]:
    """One group's events as parts in commit order: each batch as it came, each run of per-op
    events made columns (a list comprehension per column, not a loop per event)."""
    parts: list[_Part] = []
    run: list[_OpEvent] = []

    def close_run() -> None:
        if not run:
            return
        first = run[0][1]
        inputs = [e[1].inputs for e in run]
        m = len(run)
        keys = tuple([i.keys[sid] for i in inputs] for sid in range(len(first.plan.streams)))
        values = tuple(
            np.fromiter(chain.from_iterable([i.values[s.stream_id] for i in inputs]),
                        np.float64, m * s.n_sources).reshape(m, s.n_sources)
            for s in first.plan.streams
        )  # fmt: skip
        parts.append(_Part(first.group_name, first.plan, keys, values,
                           np.array([e[2] for e in run], np.int64),
                           np.array([e[3] for e in run], np.int64)))
        run.clear()

    for e in evs:
        if isinstance(e[1], AggregateEvent):
            run.append(e)
        else:
            close_run()
            _, cols, times, seqs = e
            parts.append(_Part(cols.group_name, cols.plan, cols.keys, cols.values,
                               np.asarray(times, np.int64), np.asarray(seqs, np.int64)))
    close_run()
    return parts


class TileCache:
    """The writer's copy of the stored tile values it wrote last, most recently written kept,
    at most `max_bytes` of keys and values: a commit's fold reads its keys from here and
    multi-gets only the others. The writer is the only writer of the aggregates, so a value
    here is the stored one as long as the writer keeps the rules: `update` only after the
    commit's WriteBatch is durable, `clear` when the stored values may have changed otherwise
    (a group dropped, a failed write that may still have reached the WAL, a reopen). One
    thread (the writer's) uses it."""

    #: Bytes counted per entry beyond its key and value (the dict slot, two bytes objects).
    ENTRY_OVERHEAD = 120

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def read(
        self, keys: list[bytes], load: Callable[[list[bytes]], Sequence[bytes | None]]
    ) -> list[bytes | None]:
        """The stored value of each key (None: absent): from the cache, the others from
        `load` (one call for all of them)."""
        get = self._values.get
        out: list[bytes | None] = [get(key) for key in keys]
        missing = [i for i, value in enumerate(out) if value is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            loaded = load([keys[i] for i in missing])
            for i, value in zip(missing, loaded, strict=True):
                out[i] = value
        return out

    def update(self, written: dict[bytes, bytes | None]) -> None:
        """A durable commit wrote these values (None: deleted the key); the least recently
        written keys go when the cache is over its budget."""
        if self.max_bytes <= 0:
            return
        values = self._values
        size = self._bytes
        extra = self.ENTRY_OVERHEAD
        for key, value in written.items():
            old = values.pop(key, None)
            if old is not None:
                size -= len(key) + len(old) + extra
            if value is not None:
                values[key] = value
                size += len(key) + len(value) + extra
        while size > self.max_bytes and values:
            key, old = values.popitem(last=False)
            size -= len(key) + len(old) + extra
        self._bytes = size

    def clear(self) -> None:
        self._values.clear()
        self._bytes = 0


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
