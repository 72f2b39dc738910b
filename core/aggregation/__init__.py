"""Aggregation features: count, sum, mean, min, max, last and last_n of a feature group's events
over sliding windows, kept online as time tiles and computed offline, point in time, by the same
rules, so that the dataset builder's value for (id, t) is what GetRecord returned at t.

    spec      AggregationDefinition, AggregationConfig, check(): validation (no Numba)
    plan      the compiled form: streams (one per aggregation key), kernel plan arrays
    kernels   the Numba kernels: fold_values (the write path), read_encoded, pit_aggregate
    codec     tile state <-> RocksDB value (one per stream and key), the key layout
    online    fold(stored values, events) -> new values; read(stored values, now)
    inputs    what one put contributes (AggregationInput), many puts' as AggregateColumns
    record_inputs  AggregateColumns of many records read from their wire bytes (Numba)
    offline   point_in_time(events, queries)
    dataset   the dataset builder's aggregation columns: events and queries read with DuckDB
    warmup    warm_up(): compile every kernel signature at start-up
    bench     the micro-benchmarks (python -m tessera.core.aggregation.bench)

Only `spec` is imported here: `tessera.core.schema` may import it, and the client never loads
Numba.

THE CONTRACT (the plain-Python reference in tests/unit/core/aggregation/reference.py transcribes
it literally)

Events. Every accepted put of the group is one event, whether or not it replaced the online
record (an older put is still history): exactly the history rows with is_deleted = false.
Deletes, TTL and expiry do not touch aggregates. An event e has

    event_time(e)  the event time feature, epoch microseconds
    write_time(e)  its commit time: the history row's `write_time`
    seq(e)         its commit sequence number: `tessera_seq` (total write order)
    key(e)         the record identifier, or the value of the aggregation's `key` feature
                   (an event whose key is null is not in that key's stream)
    value(e)       the source feature as float64; null, NaN and +-inf are "no value"
                   (Integral values are exact up to 2^53)
    agg(e)         min(event_time(e), write_time(e)), its aggregation time: an event stamped
                   in the future counts from its commit, never before it is known

Lateness. With the group's bound L (`aggregation_config.lateness`; default the largest window
plus one tile), e is too late when write_time(e) - event_time(e) > L: online it is dropped and
counted (`FoldResult.dropped`, a per-group metric), offline it is excluded the same way. The
default drops only events that already lie before every window when they are committed, so
nothing that could count is lost; a smaller L trades completeness for a bounded write path.

Tiles. T is the group's tile size (`aggregation_config.tile_size`; every window a multiple of
it; default in spec.py: the largest of 1s/10s/1m/5m/1h/1d that divides every window and is at
most a tenth of the smallest); tile(x) = floor(x / T), aligned on the epoch (1d tiles are UTC
days).

The value at time t of an aggregation with window W, for key k, covers

    E(k, W, t) = { e : key(e) = k,  write_time(e) <= t,  write_time(e) - event_time(e) <= L,
                       tile(t) - W/T < tile(agg(e)) <= tile(t) }

(agg(e) <= write_time(e) <= t, so the head is exact). The window spans between W - T and W:
the tail is exact to the tile, a sawtooth. Unlike Chronon's (which reaches up to one hop beyond
W) it never holds an event older than W: a "1h" feature never counts events from more than an
hour before t. Precision is T, chosen per group because every window of a key shares one tile
array, one RocksDB value and one kernel call.

    count    events of E with a value (no source: all of E)                     0 when empty
    sum      the sum of the values (compensated: Neumaier)                      0 when empty
    mean     sum / count                                                     null when empty
    min/max  the least / greatest value                                      null when empty
    last     the value of the e with a value and the greatest (agg(e), seq(e))  null when empty
    last_n   the values of the n greatest (agg(e), seq(e)), newest first       [] when empty

Output types: count Integral; mean Fractional; sum, min, max, last the source's type; last_n a
List of it (`CompiledAggregation.output_type`).

Online. Each commit folds its events, in seq order, into the tiles of their key's stream in the
same WriteBatch as the records (`online.fold`, commit_us = the commit time); tiles and recent
events older than tile(commit) - (largest window)/T are evicted, since no window reaches them
again, and a key left with nothing is deleted. GetRecord at wall time t reads one value per
stream and `online.read(..., now_us=t)`: E(k, W, t) over the commits made before the read (a
commit in flight is not yet visible; reads must not precede a folded commit's time).

Offline. For spine rows (id, t), the dataset builder passes `offline.point_in_time`:
  1. every history row of the group with is_deleted = false (not only the latest per id), with
     its `tessera_event_time`, `write_time` and `tessera_seq`, the stream's sources as float64
     (NaN for null) and the key's code (record id, or the key feature's value in that row);
     with `as_of`, only rows with write_time <= as_of (as the join does);
  2. queries (key code, t): for a keyed stream, the key value is the key feature of the record
     the point-in-time join picked for (id, t).
It then equals GetRecord at t for every (id, t): count, min, max, last and last_n exactly; sum
and mean to 1e-9 of the sum of |value| over the window (relative whenever values do not cancel),
because both sides add the same per-tile compensated sums, in a different association.
"""

from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition, check

__all__ = ["AggregationConfig", "AggregationDefinition", "check"]
