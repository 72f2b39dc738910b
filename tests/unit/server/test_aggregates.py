"""The writer's fold (server/aggregates.py CommitAggregates) on a real RocksDB: a commit's
events collected as columns, one multi-get, one kernel call per (group, stream), against folding
the same events one at a time, per stream, with `online.fold` (whose semantics the tests of
tests/unit/core/aggregation check against the brute-force reference)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rocksdict

from tessera.core.aggregation import codec, online
from tessera.core.aggregation.columns import Events
from tessera.core.aggregation.inputs import AggregationInput
from tessera.core.aggregation.plan import AggregationPlan
from tessera.core.aggregation.spec import AggregationDefinition, check
from tessera.core.keys import aggregate_key
from tessera.core.schema import FeatureType
from tessera.server.aggregates import AggregateColumns, AggregateEvent, CommitAggregates
from tessera.server.rocksdb import AGGREGATES, RocksDB, open_rocksdb

S = 1_000_000
MIN = 60 * S
T0 = 1_700_000_000 * S
TYPES = {
    "id": FeatureType.parse("String"),
    "ts": FeatureType.parse("Fractional"),
    "x": FeatureType.parse("Fractional"),
    "n": FeatureType.parse("Integral"),
    "shop": FeatureType.parse("String"),
}


def _plan(lateness: str | None = None) -> AggregationPlan:
    from tessera.core.aggregation.spec import AggregationConfig

    defs = [
        AggregationDefinition(name="events_1h", function="count", window="1h"),
        AggregationDefinition(name="x_sum_10m", function="sum", source="x", window="10m"),
        AggregationDefinition(name="x_last_3", function="last_n", source="x", window="1h", n=3),
        AggregationDefinition(name="n_max_1h", function="max", source="n", window="1h"),
        # A second stream, keyed by another feature (null for some events).
        AggregationDefinition(name="shop_x_mean_1h", function="mean", source="x", window="1h",
                              key="shop"),
        AggregationDefinition(name="shop_events_1h", function="count", window="1h", key="shop"),
    ]
    config = AggregationConfig(lateness=lateness) if lateness else None
    return check(defs, TYPES, record_identifier="id", config=config)


@pytest.fixture
def rocks(tmp_path: Path) -> RocksDB:
    return open_rocksdb(tmp_path / "db", block_cache_mb=8, write_buffer_mb=4)


class _Commits:
    """Commits through CommitAggregates into the aggregates column family, counting reads."""

    def __init__(self, rocks: RocksDB) -> None:
        self.rocks = rocks
        self.reads: list[int] = []

    def read(self, keys: list[bytes]) -> Sequence[bytes | None]:
        self.reads.append(len(keys))
        return list(self.rocks.aggregates.get(keys))  # type: ignore[arg-type]

    def commit(self, aggregates: CommitAggregates, commit_us: int) -> dict[str, int]:
        cf = self.rocks.handle(AGGREGATES)
        wb = rocksdict.WriteBatch(raw_mode=True)
        dropped = aggregates.fold(self.read, lambda k, v: wb.put(k, v, cf),
                                  lambda k: wb.delete(k, cf), commit_us)
        self.rocks.db.write(wb)
        return dropped


def _random_events(
    rng: random.Random, plan: AggregationPlan, n: int, now_us: int
) -> list[tuple[int, AggregationInput, int]]:
    """(group id, inputs, event time) of n puts over a few ids and shops, nulls included."""
    out = []
    for _ in range(n):
        rid = f"u{rng.randrange(6)}"
        shop = rng.choice(["s1", "s2", "ü", None])
        x = rng.choice([rng.uniform(-5, 5), math.nan, 1e16, 1.0])
        nv = rng.choice([float(rng.randrange(100)), math.nan])
        keys = (rid, shop)
        values = ((x, nv), (x,))
        assert [s.sources for s in plan.streams] == [("x", "n"), ("x",)]
        event_us = now_us - rng.randrange(0, 3 * 60 * MIN)  # some too old for the 1h windows
        out.append((rng.choice([1, 2]), AggregationInput(keys, values), event_us))
    return out


def _expected(
    plan: AggregationPlan, commits: list[tuple[int, list[tuple[int, AggregationInput, int]]]],
    seqs: list[list[int]] | None = None,
) -> dict[bytes, bytes]:
    """The stored values after folding every event alone, in order, per stream; seqs 1, 2, ...
    unless given (per commit, per event)."""
    state: dict[bytes, bytes | None] = {}
    seq = 0
    for c, (commit_us, events) in enumerate(commits):
        for e, (gid, inputs, event_us) in enumerate(events):
            seq = seq + 1 if seqs is None else seqs[c][e]
            for stream in plan.streams:
                text = inputs.keys[stream.stream_id]
                if text is None:
                    continue
                key = aggregate_key(gid, stream.stream_id, text)
                one = Events(np.zeros(1, np.int64), np.array([event_us]), np.array([commit_us]),
                             np.array([seq]), np.array([inputs.values[stream.stream_id]]))
                state[key] = online.fold(stream, [state.get(key)], one, commit_us).values[0]
    return {k: v for k, v in state.items() if v is not None}


def _stored(rocks: RocksDB) -> dict[bytes, bytes]:
    return dict(rocks.aggregates.items())


def _state(plan: AggregationPlan, values: dict[bytes, bytes]) -> dict[bytes, list[object]]:
    """Each key's tiles and recent events, exactly (the recent lists' unused rows left out: they
    hold whatever a shifted list left there, which depends on how events were batched)."""
    out: dict[bytes, list[object]] = {}
    for key, value in values.items():
        stream = plan.streams[key[4]]
        st = codec.decode([value], stream.n_sources, stream.recent_capacity)
        recent = [
            (st.recent_value[0, :n, c].tobytes(), st.recent_time[0, :n, c].tolist(),
             st.recent_seq[0, :n, c].tolist())
            for c, n in enumerate(st.recent_len[0].tolist())
        ]
        out[key] = [a.tobytes() for a in st.tiles()] + [recent]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_commit_fold_equals_folding_each_event_alone(rocks: RocksDB, seed: int) -> None:
    rng = random.Random(seed)
    plan = _plan()
    commits = []
    now = T0
    for _ in range(5):
        now += rng.randrange(0, 40 * MIN)
        commits.append((now, _random_events(rng, plan, rng.randrange(1, 60), now)))
    db = _Commits(rocks)
    seq = 0
    for commit_us, events in commits:
        aggregates = CommitAggregates()
        for gid, inputs, event_us in events:
            seq += 1
            aggregates.add(gid, AggregateEvent(f"g{gid}", plan, inputs), event_us, seq)
        db.commit(aggregates, commit_us)
    assert db.reads == [len(set(
        aggregate_key(gid, s.stream_id, t) for gid, inputs, _ in events for s in plan.streams
        if (t := inputs.keys[s.stream_id]) is not None)) for _, events in commits]
    assert _state(plan, _stored(rocks)) == _state(plan, _expected(plan, commits))


def test_one_multi_get_for_every_group_and_stream_of_a_commit(rocks: RocksDB) -> None:
    plan = _plan()
    db = _Commits(rocks)
    aggregates = CommitAggregates()
    for seq, (gid, rid, shop) in enumerate([(1, "a", "s"), (2, "a", "s"), (1, "b", None),
                                            (1, "a", "t")], start=1):
        inputs = AggregationInput((rid, shop), ((1.0, 2.0), (1.0,)))
        aggregates.add(gid, AggregateEvent(f"g{gid}", plan, inputs), T0, seq)
    db.commit(aggregates, T0)
    # Group 1: ids a, b and shops s, t; group 2: id a and shop s. One read of all six.
    assert db.reads == [6]
    assert len(_stored(rocks)) == 6


def test_too_late_events_are_dropped_and_counted_per_group(rocks: RocksDB) -> None:
    plan = _plan(lateness="10m")
    db = _Commits(rocks)
    aggregates = CommitAggregates()
    late = AggregationInput(("a", "s"), ((1.0, 1.0), (1.0,)))
    aggregates.add(1, AggregateEvent("g1", plan, late), T0 - 11 * MIN, 1)
    aggregates.add(1, AggregateEvent("g1", plan, late), T0 - MIN, 2)
    aggregates.add(2, AggregateEvent("g2", plan, late), T0 - 30 * MIN, 3)
    # Each too-late event is counted once per stream it is in (two streams here).
    assert db.commit(aggregates, T0) == {"g1": 2, "g2": 2}
    read = online.read(plan.streams[0], [rocks.aggregates.get(aggregate_key(1, 0, "a"))], T0)
    assert read.row(0)["events_1h"] == 1
    assert rocks.aggregates.get(aggregate_key(2, 0, "a")) is None  # nothing left: deleted


def test_discarded_groups_fold_nothing(rocks: RocksDB) -> None:
    plan = _plan()
    db = _Commits(rocks)
    aggregates = CommitAggregates()
    inputs = AggregationInput(("a", None), ((1.0, 1.0), (1.0,)))
    aggregates.add(1, AggregateEvent("g1", plan, inputs), T0, 1)
    aggregates.add(2, AggregateEvent("g2", plan, inputs), T0, 2)
    aggregates.discard_groups({1})
    db.commit(aggregates, T0)
    assert list(_stored(rocks)) == [aggregate_key(2, 0, "a")]
    empty = CommitAggregates()
    empty.add(1, AggregateEvent("g1", plan, inputs), T0, 3)
    empty.discard_groups({1})
    assert not empty
    assert db.commit(empty, T0) == {}
    assert db.reads == [1]  # the empty commit read nothing


def _columns(plan: AggregationPlan, group: str, events: list[tuple[int, AggregationInput, int]]
             ) -> AggregateColumns:
    return AggregateColumns(
        group, plan,
        tuple([inputs.keys[s.stream_id] for _, inputs, _ in events] for s in plan.streams),
        tuple(np.array([inputs.values[s.stream_id] for _, inputs, _ in events],
                       np.float64).reshape(len(events), s.n_sources) for s in plan.streams),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_batches_and_single_puts_of_a_commit_fold_in_seq_order(rocks: RocksDB, seed: int) -> None:
    """Columns of a batch of puts (`add_columns`) next to single puts of the same groups, seqs
    interleaved: the same tiles as every event folded alone in seq order; puts a batch refused
    (`accepted` false) are no events."""
    rng = random.Random(seed)
    plan = _plan()
    db = _Commits(rocks)
    now = T0
    accepted_commits = []
    accepted_seqs: list[list[int]] = []
    for _ in range(4):
        now += rng.randrange(0, 30 * MIN)
        events = _random_events(rng, plan, rng.randrange(2, 50), now)
        seqs = list(range(1, len(events) + 1))
        rng.shuffle(seqs)  # which put got which seq: batches and single puts interleave
        by_seq = dict(zip(seqs, events, strict=True))
        accepted = {q for q in seqs if rng.random() < 0.8}
        aggregates = CommitAggregates()
        batch = sorted(rng.sample(seqs, len(seqs) // 2))
        for gid in (1, 2):
            mine = [q for q in batch if by_seq[q][0] == gid]
            if mine:
                aggregates.add_columns(
                    gid, _columns(plan, f"g{gid}", [by_seq[q] for q in mine]),
                    np.array([by_seq[q][2] for q in mine], np.int64),
                    np.array([q + 1000 * len(accepted_commits) for q in mine], np.int64),
                    np.array([q in accepted for q in mine]),
                )
        for q in sorted(set(seqs) - set(batch)):
            if q in accepted:
                gid, inputs, event_us = by_seq[q]
                aggregates.add(gid, AggregateEvent(f"g{gid}", plan, inputs), event_us,
                               q + 1000 * len(accepted_commits))
        db.commit(aggregates, now)
        accepted_commits.append((now, [by_seq[q] for q in sorted(accepted)]))
        accepted_seqs.append([q + 1000 * len(accepted_seqs) for q in sorted(accepted)])
    want = _expected(plan, accepted_commits, accepted_seqs)
    assert _state(plan, _stored(rocks)) == _state(plan, want)


def test_columns_must_match_the_plans_streams() -> None:
    plan = _plan()
    ok = _columns(plan, "g", [(1, AggregationInput(("a", None), ((1.0, 2.0), (1.0,))), T0)])
    assert len(ok) == 1
    with pytest.raises(ValueError, match="streams"):
        AggregateColumns("g", plan, ok.keys[:1], ok.values[:1])
    with pytest.raises(ValueError, match="stream 1"):
        AggregateColumns("g", plan, ok.keys, (ok.values[0], np.zeros((1, 2))))


def test_interleaved_batch_and_single_puts_of_one_tile_sum_in_seq_order(rocks: RocksDB) -> None:
    """A float sum depends on the order of its terms: events of one key and tile, split
    between a batch and single puts, must enter in seq order."""
    plan = _plan()
    # Terms whose compensated sum differs (in its last bits) when the odd ones come first.
    values = [-0.1, -1e16, -0.001, -0.1, -0.1, 0.001, 0.001, 3.0, -1e16, 0.001, 3.0, 7e15]
    events = [(1, AggregationInput(("a", "s"), ((v, v), (v,))), T0) for v in values]
    aggregates = CommitAggregates()
    batch = list(range(0, 12, 2))  # seqs 1, 3, 5, ...: the batch; 2, 4, ...: single puts
    aggregates.add_columns(1, _columns(plan, "g1", [events[i] for i in batch]),
                           np.full(len(batch), T0, np.int64), np.array(batch, np.int64) + 1)
    for i in range(1, 12, 2):
        aggregates.add(1, AggregateEvent("g1", plan, events[i][1]), T0, i + 1)
    _Commits(rocks).commit(aggregates, T0)
    assert _state(plan, _stored(rocks)) == _state(plan, _expected(plan, [(T0, events)]))
