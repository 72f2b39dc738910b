"""The aggregation kernels (Numba). Semantics: the package docstring. Entry points, each
compiled for one signature at start-up (warmup.py):

    decode_values  stored values (one buffer, many keys) -> tile state (codec.py's layout)
    fold_tiles     tile state + a commit's events -> new tile state
    encode_values  tile state -> stored values (one buffer)
    fold_values    the three above in one call, events in any key order: the write path
    read_values    stored values + now -> every aggregation (the read path, in one call)
    pit_aggregate  history events + (key, t) queries -> every aggregation (the dataset builder)

No Python runs per key or per tile: the write path is decode, fold, encode over all the keys of
a commit's stream (one call, `fold_values`), the read path one call. Every jitted function and
every constant they read is in this one file, because Numba's on-disk cache is invalidated
only by changes to the kernel's own source file.

Array shapes (k keys, n tiles, m events, q queries, s sources, R recent rows, w windows,
a aggregations; CSR offsets `*_off` of k + 1 entries split the rows by key):

    tiles     t_off (k+1) t_id (n) t_events (n) t_count (n,s) t_hi t_lo t_min t_max (n,s)
              per key, ascending tile id; t_hi + t_lo is a compensated sum; t_min/t_max are
              +inf/-inf where t_count is 0
    recent    r_len (k,s) r_val (k,R,s) r_time (k,R,s) r_seq (k,R,s): per key and source, its
              r_len greatest (aggregation time, seq) events, newest first
    events    e_off (k+1) e_time e_write e_seq (m) e_val (m,s): event time, commit (write) time,
              commit sequence, source values (NaN = null); pit_aggregate takes e_key (m), key
              codes, instead of e_off
    plan      window_tiles (w) agg_func agg_source agg_window agg_n (a) list_off (a+1): plan.py
    outputs   values (k|q, a) float64 (NaN where not valid), valid (k|q, a) bool,
              lists (k|q, list_off[a]) float64, list_len (k|q, a) int64 (last_n, newest first)

Every kernel is a pure function of its arguments: it never writes its inputs; outputs are new
arrays.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from tessera.core.aggregation._jit import (
    F64_2,
    F64_3,
    I64,
    I64_1,
    I64_2,
    I64_3,
    U8_1,
    helper,
    kernel,
    rw,
)

F64s = npt.NDArray[np.float64]
I64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
U8s = npt.NDArray[np.uint8]
Outputs = tuple[F64s, Bools, F64s, I64s]
Tiles = tuple[I64s, I64s, I64s, I64s, F64s, F64s, F64s, F64s]
Recent = tuple[I64s, F64s, I64s, I64s]

# Function codes (plan.py's FUNCTION_CODES must agree: a test checks). Defined here, not
# imported: a cached kernel would not see a change made in another file.
COUNT, SUM, MEAN, MIN, MAX, LAST, LAST_N = 0, 1, 2, 3, 4, 5, 6
NO_TILE = 9_223_372_036_854_775_807  # int64 max: "no tile" in merges
VERSION = 1  # of the stored value layout (codec.py)
#: Flags of a stored value (its header's second byte): blocks left out because the decoder
#: knows them: every count equals its tile's events (no null source in any tile) / every
#: sum_lo is +0.0 (exact sums: integers, or one value per tile).
COUNT_IS_EVENTS, LO_IS_ZERO = 1, 2

# The one signature each entry point is compiled for (warmup.py): arrays from Python are
# read-only C-contiguous views (the wrappers make them); tile state is what decode_values
# returns, writable.
_TILES = (I64_1, I64_1, I64_1, I64_2, F64_2, F64_2, F64_2, F64_2)
_RECENT = (I64_2, F64_3, I64_3, I64_3)
_EVENTS = (I64_1, I64_1, I64_1, I64_1, F64_2)
_PLAN = (I64_1,) * 6
_RW_STATE = tuple(rw(t.dtype, t.ndim) for t in (*_TILES, *_RECENT))  # as decode_values returns
FOLD_SIGNATURE = (*_RW_STATE, *_EVENTS, I64_1, I64, I64, I64, I64)
READ_VALUES_SIGNATURE = (U8_1, I64_1, I64, I64, I64, I64, *_PLAN)
PIT_SIGNATURE = (*_EVENTS, I64_1, I64_1, I64_1, I64, I64, I64, *_PLAN, I64_1)
DECODE_SIGNATURE = (U8_1, I64_1, I64, I64)
ENCODE_SIGNATURE = _RW_STATE
FOLD_VALUES_SIGNATURE = (U8_1, I64_1, *_EVENTS, I64_1, I64, I64, I64, I64, I64, I64)


# --- helpers -------------------------------------------------------------------------------


@helper
def is_value(v: float) -> bool:
    """A value the aggregations count: NaN is null, and +-inf is treated as null too (a window
    holding both would sum to NaN)."""
    return math.isfinite(v)


@helper
def dd_add(hi: float, lo: float, v: float) -> tuple[float, float]:
    """Neumaier's compensated addition: (hi + lo) += v, the rounding error kept in lo."""
    s = hi + v
    if abs(hi) >= abs(v):
        lo += (hi - s) + v
    else:
        lo += (v - s) + hi
    return s, lo


@kernel
def recent_insert(
    vals: F64s,
    times: I64s,
    seqs: I64s,
    lens: I64s,
    src: int,
    cap: int,
    v: float,
    t: int,
    sq: int,
) -> None:
    """Insert event (t, sq, v) into source `src`'s list of its `cap` greatest (time, seq) events,
    kept newest first in vals[:, src], times[:, src], seqs[:, src] (lens[src] long)."""
    n = lens[src]
    if n == cap:
        if cap == 0 or times[n - 1, src] > t or (times[n - 1, src] == t and seqs[n - 1, src] >= sq):
            return
        n -= 1
    p = n
    while p > 0 and (times[p - 1, src] < t or (times[p - 1, src] == t and seqs[p - 1, src] < sq)):
        vals[p, src] = vals[p - 1, src]
        times[p, src] = times[p - 1, src]
        seqs[p, src] = seqs[p - 1, src]
        p -= 1
    vals[p, src] = v
    times[p, src] = t
    seqs[p, src] = sq
    lens[src] = n + 1


@kernel
def stable_order(values: I64s, n: int) -> I64s:
    """The stable sort order of values[:n]: the identity when already sorted (the usual case),
    else a bottom-up merge sort (hand-written: np.argsort's mergesort adds seconds of compile)."""
    order = np.arange(n)
    for i in range(1, n):
        if values[i] < values[i - 1]:
            break
    else:
        return order
    tmp = np.empty(n, np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            a, b, out = lo, mid, lo
            while a < mid and b < hi:
                if values[order[b]] < values[order[a]]:
                    tmp[out] = order[b]
                    b += 1
                else:
                    tmp[out] = order[a]
                    a += 1
                out += 1
            while a < mid:
                tmp[out] = order[a]
                a += 1
                out += 1
            while b < hi:
                tmp[out] = order[b]
                b += 1
                out += 1
        order, tmp = tmp, order
        width *= 2
    return order


# --- the kernels -------------------------------------------------------------------------------


@kernel
def fold_tiles(
    t_off: I64s,
    t_id: I64s,
    t_events: I64s,
    t_count: I64s,
    t_hi: F64s,
    t_lo: F64s,
    t_min: F64s,
    t_max: F64s,
    r_len: I64s,
    r_val: F64s,
    r_time: I64s,
    r_seq: I64s,
    e_off: I64s,
    e_time: I64s,
    e_write: I64s,
    e_seq: I64s,
    e_val: F64s,
    caps: I64s,
    tile_us: int,
    lateness_us: int,
    retention_tiles: int,
    commit_us: int,
) -> tuple[Tiles, Recent, I64s]:
    """Fold a batch of events into k keys' tiles: ((new tiles), (new recent), dropped per key).

    An event is dropped (and counted) when e_write - e_time > lateness_us; otherwise it folds
    into the tile of its aggregation time min(e_time, e_write), in input order within a tile,
    and into its source's recent list. `commit_us` (the batch's latest commit time, or any
    time no later than every future read) evicts what no window can reach again: tiles and
    recent events at or before tile(commit_us) - retention_tiles.
    """
    k = t_off.shape[0] - 1
    s = t_count.shape[1]
    m = e_time.shape[0]
    horizon = commit_us // tile_us - retention_tiles
    cap = t_id.shape[0] + m
    o_off = np.empty(k + 1, np.int64)
    o_id = np.empty(cap, np.int64)
    o_events = np.empty(cap, np.int64)
    o_count = np.empty((cap, s), np.int64)
    o_hi = np.empty((cap, s))
    o_lo = np.empty((cap, s))
    o_min = np.empty((cap, s))
    o_max = np.empty((cap, s))
    o_rlen = r_len.copy()
    o_rval = r_val.copy()
    o_rtime = r_time.copy()
    o_rseq = r_seq.copy()
    dropped = np.zeros(k, np.int64)
    sc_tile = np.empty(m, np.int64)
    sc_idx = np.empty(m, np.int64)
    pos = 0
    for key in range(k):
        o_off[key] = pos
        n_new = 0
        for i in range(e_off[key], e_off[key + 1]):
            if e_write[i] - e_time[i] > lateness_us:
                dropped[key] += 1
                continue
            agg = min(e_time[i], e_write[i])
            for c in range(s):
                if caps[c] > 0 and is_value(e_val[i, c]):
                    recent_insert(
                        o_rval[key], o_rtime[key], o_rseq[key], o_rlen[key],
                        c, caps[c], e_val[i, c], agg, e_seq[i],
                    )  # fmt: skip
            tile = agg // tile_us
            if tile > horizon:
                sc_tile[n_new] = tile
                sc_idx[n_new] = i
                n_new += 1
        for c in range(s):  # recent events older than every window: gone for good
            while o_rlen[key, c] > 0 and o_rtime[key, o_rlen[key, c] - 1, c] // tile_us <= horizon:
                o_rlen[key, c] -= 1
        order = stable_order(sc_tile, n_new)
        p = t_off[key]
        end = t_off[key + 1]
        q = 0
        while p < end or q < n_new:
            new_tile = sc_tile[order[q]] if q < n_new else NO_TILE
            old_tile = t_id[p] if p < end else NO_TILE
            if old_tile < new_tile:  # an old tile no event of the batch touches: keep or evict
                if old_tile > horizon:
                    _copy_tile(t_id, t_events, t_count, t_hi, t_lo, t_min, t_max, p,
                               o_id, o_events, o_count, o_hi, o_lo, o_min, o_max, pos)  # fmt: skip
                    pos += 1
                p += 1
                continue
            if old_tile == new_tile:
                _copy_tile(t_id, t_events, t_count, t_hi, t_lo, t_min, t_max, p,
                           o_id, o_events, o_count, o_hi, o_lo, o_min, o_max, pos)  # fmt: skip
                p += 1
            else:
                o_id[pos] = new_tile
                o_events[pos] = 0
                for c in range(s):
                    o_count[pos, c] = 0
                    o_hi[pos, c] = 0.0
                    o_lo[pos, c] = 0.0
                    o_min[pos, c] = np.inf
                    o_max[pos, c] = -np.inf
            while q < n_new and sc_tile[order[q]] == o_id[pos]:
                i = sc_idx[order[q]]
                q += 1
                o_events[pos] += 1
                for c in range(s):
                    v = e_val[i, c]
                    if is_value(v):
                        o_count[pos, c] += 1
                        o_hi[pos, c], o_lo[pos, c] = dd_add(o_hi[pos, c], o_lo[pos, c], v)
                        o_min[pos, c] = min(o_min[pos, c], v)
                        o_max[pos, c] = max(o_max[pos, c], v)
            pos += 1
    o_off[k] = pos
    tiles = (
        o_off, o_id[:pos], o_events[:pos], o_count[:pos],
        o_hi[:pos], o_lo[:pos], o_min[:pos], o_max[:pos],
    )  # fmt: skip
    return tiles, (o_rlen, o_rval, o_rtime, o_rseq), dropped


@kernel
def _copy_tile(
    t_id: I64s,
    t_events: I64s,
    t_count: I64s,
    t_hi: F64s,
    t_lo: F64s,
    t_min: F64s,
    t_max: F64s,
    p: int,
    o_id: I64s,
    o_events: I64s,
    o_count: I64s,
    o_hi: F64s,
    o_lo: F64s,
    o_min: F64s,
    o_max: F64s,
    pos: int,
) -> None:
    o_id[pos] = t_id[p]
    o_events[pos] = t_events[p]
    for c in range(t_count.shape[1]):
        o_count[pos, c] = t_count[p, c]
        o_hi[pos, c] = t_hi[p, c]
        o_lo[pos, c] = t_lo[p, c]
        o_min[pos, c] = t_min[p, c]
        o_max[pos, c] = t_max[p, c]


@kernel
def read_tiles(
    t_off: I64s,
    t_id: I64s,
    t_events: I64s,
    t_count: I64s,
    t_hi: F64s,
    t_lo: F64s,
    t_min: F64s,
    t_max: F64s,
    r_len: I64s,
    r_val: F64s,
    r_time: I64s,
    r_seq: I64s,
    now_us: int,
    tile_us: int,
    window_tiles: I64s,
    agg_func: I64s,
    agg_source: I64s,
    agg_window: I64s,
    agg_n: I64s,
    list_off: I64s,
) -> Outputs:
    """Every aggregation of k keys as of `now_us`, from their tiles and recent lists: one
    backward pass over each key's tiles fills one bucket per window, then buckets accumulate
    from the smallest window to the largest."""
    k = t_off.shape[0] - 1
    s = t_count.shape[1]
    w = window_tiles.shape[0]
    a = agg_func.shape[0]
    values = np.full((k, a), np.nan)
    valid = np.zeros((k, a), np.bool_)
    lists = np.full((k, list_off[a]), np.nan)
    list_len = np.zeros((k, a), np.int64)
    now_tile = now_us // tile_us
    ev = np.zeros(w, np.int64)
    cnt = np.zeros((w, s), np.int64)
    hi = np.zeros((w, s))
    lo = np.zeros((w, s))
    mn = np.zeros((w, s))
    mx = np.zeros((w, s))
    for key in range(k):
        ev[:] = 0
        cnt[:] = 0
        hi[:] = 0.0
        lo[:] = 0.0
        mn[:] = np.inf
        mx[:] = -np.inf
        j = 0
        for p in range(t_off[key + 1] - 1, t_off[key] - 1, -1):
            age = now_tile - t_id[p]
            if age < 0:
                continue
            while j < w and window_tiles[j] <= age:
                j += 1
            if j == w:
                break
            ev[j] += t_events[p]
            for c in range(s):
                if t_count[p, c] > 0:
                    cnt[j, c] += t_count[p, c]
                    hi[j, c], lo[j, c] = dd_add(hi[j, c], lo[j, c] + t_lo[p, c], t_hi[p, c])
                    mn[j, c] = min(mn[j, c], t_min[p, c])
                    mx[j, c] = max(mx[j, c], t_max[p, c])
        for j in range(1, w):
            ev[j] += ev[j - 1]
            for c in range(s):
                cnt[j, c] += cnt[j - 1, c]
                hi[j, c], lo[j, c] = dd_add(hi[j, c], lo[j, c] + lo[j - 1, c], hi[j - 1, c])
                mn[j, c] = min(mn[j, c], mn[j - 1, c])
                mx[j, c] = max(mx[j, c], mx[j - 1, c])
        for x in range(a):
            f = agg_func[x]
            c = agg_source[x]
            j = agg_window[x]
            if f in (LAST, LAST_N):
                continue
            if c < 0:
                values[key, x] = ev[j]
                valid[key, x] = True
            else:
                total = hi[j, c] + lo[j, c]
                _finish(values, valid, key, x, f, cnt[j, c], total, mn[j, c], mx[j, c])
        _last_values(
            r_val[key], r_time[key], r_len[key], now_tile, tile_us, window_tiles,
            agg_func, agg_source, agg_window, agg_n, list_off,
            values[key], valid[key], lists[key], list_len[key],
        )  # fmt: skip
    return values, valid, lists, list_len


@helper
def _finish(
    values: F64s, valid: Bools, row: int, x: int, f: int, n: int, total: float, lo: float, hi: float
) -> None:
    """Write aggregation x of a row from a window's count, sum, min and max."""
    if f == COUNT:
        values[row, x] = n
    elif f == SUM:
        values[row, x] = total if n > 0 else 0.0
    elif n == 0:
        return
    elif f == MEAN:
        values[row, x] = total / n
    elif f == MIN:
        values[row, x] = lo
    elif f == MAX:
        values[row, x] = hi
    valid[row, x] = True


@kernel
def _tree_fix(
    ev: I64s, cnt: I64s, hi: F64s, lo: F64s, mn: F64s, mx: F64s, dirty: I64s, n: int, s: int
) -> None:
    """Recompute the ancestors of the n leaves in dirty[:n] from their children, a level at a
    time so a parent shared by several dirty leaves is recomputed once when they are adjacent
    (the usual case: events enter in time order). dirty is overwritten."""
    while n > 0 and dirty[0] > 1:
        m = 0
        last = -1
        for d in range(n):
            p = dirty[d] >> 1
            if p == last:
                continue
            last = p
            dirty[m] = p
            m += 1
            a = 2 * p
            b = a + 1
            ev[p] = ev[a] + ev[b]
            for c in range(s):
                cnt[p, c] = cnt[a, c] + cnt[b, c]
                hi[p, c], lo[p, c] = dd_add(hi[a, c], lo[a, c] + lo[b, c], hi[b, c])
                mn[p, c] = min(mn[a, c], mn[b, c])
                mx[p, c] = max(mx[a, c], mx[b, c])
        n = m


@kernel
def _group(key: I64s, n_keys: int) -> tuple[I64s, I64s]:
    """A stable counting sort by dense key code: (offsets (n_keys+1), order)."""
    off = np.zeros(n_keys + 1, np.int64)
    for i in range(key.shape[0]):
        off[key[i] + 1] += 1
    for k in range(n_keys):
        off[k + 1] += off[k]
    fill = off[:-1].copy()
    order = np.empty(key.shape[0], np.int64)
    for i in range(key.shape[0]):
        order[fill[key[i]]] = i
        fill[key[i]] += 1
    return off, order


@kernel
def _tree_suffix(
    ev: I64s,
    cnt: I64s,
    hi: F64s,
    lo: F64s,
    mn: F64s,
    mx: F64s,
    first: int,
    size: int,
    s: int,
    q_cnt: I64s,
    q_hi: F64s,
    q_lo: F64s,
    q_mn: F64s,
    q_mx: F64s,
) -> int:
    """Combine leaves first..size-1 into q_* (reset here); returns their event count."""
    q_cnt[:] = 0
    q_hi[:] = 0.0
    q_lo[:] = 0.0
    q_mn[:] = np.inf
    q_mx[:] = -np.inf
    total = 0
    left = first + size
    right = 2 * size
    while left < right:
        if left & 1:
            total += ev[left]
            for c in range(s):
                q_cnt[c] += cnt[left, c]
                q_hi[c], q_lo[c] = dd_add(q_hi[c], q_lo[c] + lo[left, c], hi[left, c])
                q_mn[c] = min(q_mn[c], mn[left, c])
                q_mx[c] = max(q_mx[c], mx[left, c])
            left += 1
        left >>= 1
        right >>= 1
    return total


@kernel
def pit_aggregate(
    e_key: I64s,
    e_time: I64s,
    e_write: I64s,
    e_seq: I64s,
    e_val: F64s,
    q_key: I64s,
    q_time: I64s,
    q_row: I64s,
    n_keys: int,
    tile_us: int,
    lateness_us: int,
    window_tiles: I64s,
    agg_func: I64s,
    agg_source: I64s,
    agg_window: I64s,
    agg_n: I64s,
    list_off: I64s,
    caps: I64s,
) -> Outputs:
    """Every aggregation at each query, from the raw events; query i's result in row q_row[i].

    Events come in commit order (write time, then seq: as history is stored), queries in time
    order, each with a dense key code below n_keys; a stable counting sort groups both by key.
    Sweeping a key's queries in time order, events enter as they become visible (write time
    <= t), in commit order, into the leaf of their tile in a segment tree over the key's
    distinct tiles; a leaf accumulates exactly as the online tile does. Window W at t is the
    suffix of leaves with tile > tile(t) - W/T (a pointer per window), combined in O(log
    tiles): nothing ever leaves by subtraction, so a sum's rounding is bounded by the window's
    own values. last and last_n: the visible events' top list, filtered by the window, as
    online. O(m + q + keys) to group, then O((m + q w) s log tiles).
    """
    e_off, e_order = _group(e_key, n_keys)
    q_off, q_order = _group(q_key, n_keys)
    k = n_keys
    s = e_val.shape[1]
    w = window_tiles.shape[0]
    a = agg_func.shape[0]
    nq = q_time.shape[0]
    k = e_off.shape[0] - 1
    s = e_val.shape[1]
    w = window_tiles.shape[0]
    a = agg_func.shape[0]
    nq = q_time.shape[0]
    values = np.full((nq, a), np.nan)
    valid = np.zeros((nq, a), np.bool_)
    lists = np.full((nq, list_off[a]), np.nan)
    list_len = np.zeros((nq, a), np.int64)
    need_win = np.zeros(w, np.bool_)
    need_recent = False
    for x in range(a):
        if agg_func[x] in (LAST, LAST_N):
            need_recent = True
        else:
            need_win[agg_window[x]] = True
    seg = 1
    for key in range(k):
        seg = max(seg, e_off[key + 1] - e_off[key])
    width = 1
    while width < seg:
        width *= 2
    leaf_of = np.empty(seg, np.int64)
    tiles = np.empty(seg, np.int64)
    dirty = np.empty(seg, np.int64)
    g_time = np.empty(seg, np.int64)
    g_write = np.empty(seg, np.int64)
    g_seq = np.empty(seg, np.int64)
    g_val = np.empty((seg, s))
    t_ev = np.zeros(2 * width, np.int64)
    t_cnt = np.zeros((2 * width, s), np.int64)
    t_hi = np.zeros((2 * width, s))
    t_lo = np.zeros((2 * width, s))
    t_mn = np.zeros((2 * width, s))
    t_mx = np.zeros((2 * width, s))
    first = np.zeros(w, np.int64)
    q_cnt = np.zeros(s, np.int64)
    q_hi = np.zeros(s)
    q_lo = np.zeros(s)
    q_mn = np.zeros(s)
    q_mx = np.zeros(s)
    rows = caps.max() if s > 0 else 0
    r_val = np.empty((rows, s))
    r_time = np.empty((rows, s), np.int64)
    r_seq = np.empty((rows, s), np.int64)
    r_len = np.zeros(s, np.int64)
    for key in range(k):
        qa = q_off[key]
        qb = q_off[key + 1]
        if qa == qb:
            continue
        c0 = e_off[key]
        n = e_off[key + 1] - c0
        for i in range(n):  # gather the key's events, in commit order
            src = e_order[c0 + i]
            g_time[i] = e_time[src]
            g_write[i] = e_write[src]
            g_seq[i] = e_seq[src]
            for c in range(s):
                g_val[i, c] = e_val[src, c]
        for i in range(n):  # aggregation tiles, then their distinct values in order: the leaves
            tiles[i] = min(g_time[i], g_write[i]) // tile_us
        order = stable_order(tiles, n)
        agg_tile = tiles[order]
        n_leaves = 0
        for r in range(n):
            if n_leaves == 0 or agg_tile[r] != tiles[n_leaves - 1]:
                tiles[n_leaves] = agg_tile[r]
                n_leaves += 1
            leaf_of[order[r]] = n_leaves - 1
        size = 1
        while size < max(n_leaves, 1):
            size *= 2
        t_ev[: 2 * size] = 0
        t_cnt[: 2 * size] = 0
        t_hi[: 2 * size] = 0.0
        t_lo[: 2 * size] = 0.0
        t_mn[: 2 * size] = np.inf
        t_mx[: 2 * size] = -np.inf
        first[:] = 0
        r_len[:] = 0
        ep = 0
        for qq in range(qa, qb):
            qi = q_order[qq]
            t = q_time[qi]
            row = q_row[qi]
            now_tile = t // tile_us
            n_dirty = 0
            while ep < n and g_write[ep] <= t:  # events becoming visible, commit order
                i = ep
                ep += 1
                if g_write[i] - g_time[i] > lateness_us:
                    continue
                leaf = size + leaf_of[i]
                if n_dirty == 0 or dirty[n_dirty - 1] != leaf:
                    dirty[n_dirty] = leaf
                    n_dirty += 1
                t_ev[leaf] += 1
                for c in range(s):
                    v = g_val[i, c]
                    if is_value(v):
                        t_cnt[leaf, c] += 1
                        t_hi[leaf, c], t_lo[leaf, c] = dd_add(t_hi[leaf, c], t_lo[leaf, c], v)
                        t_mn[leaf, c] = min(t_mn[leaf, c], v)
                        t_mx[leaf, c] = max(t_mx[leaf, c], v)
                        if need_recent and caps[c] > 0:
                            agg = min(g_time[i], g_write[i])
                            recent_insert(r_val, r_time, r_seq, r_len, c, caps[c], v, agg, g_seq[i])
            _tree_fix(t_ev, t_cnt, t_hi, t_lo, t_mn, t_mx, dirty, n_dirty, s)
            for j in range(w):
                if not need_win[j]:
                    continue
                start = now_tile - window_tiles[j] + 1
                while first[j] < n_leaves and tiles[first[j]] < start:
                    first[j] += 1
                ev = _tree_suffix(
                    t_ev, t_cnt, t_hi, t_lo, t_mn, t_mx, first[j], size, s,
                    q_cnt, q_hi, q_lo, q_mn, q_mx,
                )  # fmt: skip
                for x in range(a):
                    f = agg_func[x]
                    if agg_window[x] != j or f in (LAST, LAST_N):
                        continue
                    c = agg_source[x]
                    if c < 0:
                        values[row, x] = ev
                        valid[row, x] = True
                    else:
                        total = q_hi[c] + q_lo[c]
                        _finish(values, valid, row, x, f, q_cnt[c], total, q_mn[c], q_mx[c])
            if need_recent:
                _last_values(
                    r_val, r_time, r_len, now_tile, tile_us, window_tiles,
                    agg_func, agg_source, agg_window, agg_n, list_off,
                    values[row], valid[row], lists[row], list_len[row],
                )  # fmt: skip
    return values, valid, lists, list_len


@kernel
def _last_values(
    r_val: F64s,
    r_time: I64s,
    r_len: I64s,
    now_tile: int,
    tile_us: int,
    window_tiles: I64s,
    agg_func: I64s,
    agg_source: I64s,
    agg_window: I64s,
    agg_n: I64s,
    list_off: I64s,
    values: F64s,
    valid: Bools,
    lists: F64s,
    list_len: I64s,
) -> None:
    """last and last_n of one row from its recent lists (newest first): the entries whose tile
    is inside the window (tile(t) - W/T, tile(t)]."""
    for x in range(agg_func.shape[0]):
        f = agg_func[x]
        if f not in (LAST, LAST_N):
            continue
        c = agg_source[x]
        start = now_tile - window_tiles[agg_window[x]] + 1
        taken = 0
        for r in range(r_len[c]):
            tile = r_time[r, c] // tile_us
            if tile > now_tile:
                continue
            if tile < start:
                break
            if f == LAST:
                values[x] = r_val[r, c]
                valid[x] = True
                break
            lists[list_off[x] + taken] = r_val[r, c]
            taken += 1
            if taken == agg_n[x]:
                break
        if f == LAST_N:
            list_len[x] = taken
            valid[x] = True


# --- the stored form (codec.py documents the layout) and the entry points on it ----------------


@kernel
def _value_words(n: int, s: int, r: int, flags: int) -> int:
    """The length in 8-byte words of a stored value of n tiles (header included)."""
    blocks = 5 - (flags & COUNT_IS_EVENTS) - ((flags & LO_IS_ZERO) >> 1)
    return 2 + n * (2 + blocks * s) + s * (1 + 3 * r)


@kernel
def _first_bad(words: I64s, off: I64s, s: int, r: int) -> int:
    """The index of the first value (bytes off[i]:off[i+1] of the buffer) that is not a value
    of this layout, or -1."""
    for i in range(off.shape[0] - 1):
        a = off[i]
        size = off[i + 1] - a
        if a % 8 or size < 16 or size % 8:
            return i
        head = words[a // 8]
        n = words[a // 8 + 1] & 0xFFFFFFFF
        flags = (head >> 8) & 0xFF
        layout = (head & 0xFF, (head >> 16) & 0xFFFF, (head >> 32) & 0xFFFF)
        if (layout != (VERSION, s, r) or flags & ~(COUNT_IS_EVENTS | LO_IS_ZERO)
                or size != 8 * _value_words(n, s, r, flags)):
            return i
    return -1


@kernel
def decode_values(buf: U8s, off: I64s, s: int, r: int) -> tuple[Tiles, Recent, int]:
    """The CSR tile state of the k values in buf (value i is bytes off[i]:off[i+1]), and the
    index of the first malformed value (-1: none; the state is then empty)."""
    k = off.shape[0] - 1
    words = buf.view(np.int64)
    floats = buf.view(np.float64)
    bad = _first_bad(words, off, s, r)
    total = 0
    if bad < 0:
        for i in range(k):
            total += words[off[i] // 8 + 1] & 0xFFFFFFFF
    t_off = np.zeros(k + 1, np.int64)
    t_id = np.empty(total, np.int64)
    t_events = np.empty(total, np.int64)
    t_count = np.empty((total, s), np.int64)
    t_hi = np.empty((total, s))
    t_lo = np.empty((total, s))
    t_min = np.empty((total, s))
    t_max = np.empty((total, s))
    r_len = np.zeros((k, s), np.int64)
    r_val = np.zeros((k, r, s))
    r_time = np.zeros((k, r, s), np.int64)
    r_seq = np.zeros((k, r, s), np.int64)
    tiles = (t_off, t_id, t_events, t_count, t_hi, t_lo, t_min, t_max)
    recent = (r_len, r_val, r_time, r_seq)
    if bad >= 0:
        return tiles, recent, bad
    pos = 0
    for i in range(k):  # element loops: array-expression slices cost seconds of compile
        w = off[i] // 8
        flags = (words[w] >> 8) & 0xFF
        n = words[w + 1] & 0xFFFFFFFF
        w += 2
        t_off[i] = pos
        for x in range(n):
            t_id[pos + x] = words[w + x]
            t_events[pos + x] = words[w + n + x]
        w += 2 * n
        ns = n * s
        has_count = (flags & COUNT_IS_EVENTS) == 0
        has_lo = (flags & LO_IS_ZERO) == 0
        hi_at = w + ns if has_count else w  # the blocks present, in their order
        lo_at = hi_at + ns
        min_at = lo_at + ns if has_lo else lo_at
        max_at = min_at + ns
        for x in range(n):
            for c in range(s):
                at = x * s + c
                t_count[pos + x, c] = words[w + at] if has_count else t_events[pos + x]
                t_hi[pos + x, c] = floats[hi_at + at]
                t_lo[pos + x, c] = floats[lo_at + at] if has_lo else 0.0
                t_min[pos + x, c] = floats[min_at + at]
                t_max[pos + x, c] = floats[max_at + at]
        w = max_at + ns
        rs = r * s
        for c in range(s):
            r_len[i, c] = words[w + c]
            for x in range(r):
                at = w + s + x * s + c
                r_val[i, x, c] = floats[at]
                r_time[i, x, c] = words[at + rs]
                r_seq[i, x, c] = words[at + 2 * rs]
        pos += n
    t_off[k] = pos
    return tiles, recent, -1


@kernel
def encode_values(
    t_off: I64s,
    t_id: I64s,
    t_events: I64s,
    t_count: I64s,
    t_hi: F64s,
    t_lo: F64s,
    t_min: F64s,
    t_max: F64s,
    r_len: I64s,
    r_val: F64s,
    r_time: I64s,
    r_seq: I64s,
) -> tuple[U8s, I64s]:
    """The stored values of k keys, concatenated (value i is bytes off[i]:off[i+1]); a key with
    no tile and no recent event gets no bytes (delete it). The count and sum_lo blocks are left
    out of a value whose every count is its tile's events / every sum_lo +0.0 (its flags)."""
    k = t_off.shape[0] - 1
    s = t_count.shape[1]
    r = r_val.shape[1]
    off = np.zeros(k + 1, np.int64)
    value_flags = np.zeros(k, np.int64)
    for i in range(k):
        a = t_off[i]
        n = t_off[i + 1] - a
        alive = n > 0
        for c in range(s):
            alive = alive or r_len[i, c] > 0
        flags = 0
        if n > 0:
            flags = COUNT_IS_EVENTS | LO_IS_ZERO
            for x in range(a, a + n):
                for c in range(s):
                    if t_count[x, c] != t_events[x]:
                        flags &= ~COUNT_IS_EVENTS
                    lo = t_lo[x, c]
                    if lo != 0.0 or math.copysign(1.0, lo) < 0.0:  # NaN and -0.0 kept too
                        flags &= ~LO_IS_ZERO
        value_flags[i] = flags
        off[i + 1] = off[i] + (8 * _value_words(n, s, r, flags) if alive else 0)
    buf = np.zeros(off[k], np.uint8)
    words = buf.view(np.int64)
    floats = buf.view(np.float64)
    for i in range(k):
        if off[i + 1] == off[i]:
            continue
        a = t_off[i]
        n = t_off[i + 1] - a
        w = off[i] // 8
        flags = value_flags[i]
        words[w] = VERSION | (flags << 8) | (s << 16) | (r << 32)
        words[w + 1] = n
        w += 2
        for x in range(n):
            words[w + x] = t_id[a + x]
            words[w + n + x] = t_events[a + x]
        w += 2 * n
        ns = n * s
        has_count = (flags & COUNT_IS_EVENTS) == 0
        has_lo = (flags & LO_IS_ZERO) == 0
        hi_at = w + ns if has_count else w
        lo_at = hi_at + ns
        min_at = lo_at + ns if has_lo else lo_at
        max_at = min_at + ns
        for x in range(n):
            for c in range(s):
                at = x * s + c
                if has_count:
                    words[w + at] = t_count[a + x, c]
                floats[hi_at + at] = t_hi[a + x, c]
                if has_lo:
                    floats[lo_at + at] = t_lo[a + x, c]
                floats[min_at + at] = t_min[a + x, c]
                floats[max_at + at] = t_max[a + x, c]
        w = max_at + ns
        rs = r * s
        for c in range(s):
            words[w + c] = r_len[i, c]
            for x in range(r):
                at = w + s + x * s + c
                floats[at] = r_val[i, x, c]
                words[at + rs] = r_time[i, x, c]
                words[at + 2 * rs] = r_seq[i, x, c]
    return buf, off


@kernel
def read_values(
    buf: U8s,
    off: I64s,
    now_us: int,
    tile_us: int,
    s: int,
    r: int,
    window_tiles: I64s,
    agg_func: I64s,
    agg_source: I64s,
    agg_window: I64s,
    agg_n: I64s,
    list_off: I64s,
) -> tuple[F64s, Bools, F64s, I64s, int]:
    """read_tiles on stored values: (values, valid, lists, list_len, first bad value or -1).
    The read path's one call per stream."""
    tiles, recent, bad = decode_values(buf, off, s, r)
    t_off, t_id, t_events, t_count, t_hi, t_lo, t_min, t_max = tiles
    r_len, r_val, r_time, r_seq = recent
    if bad >= 0:
        t_off = np.zeros(off.shape[0], np.int64)
    values, valid, lists, list_len = read_tiles(
        t_off, t_id, t_events, t_count, t_hi, t_lo, t_min, t_max,
        r_len, r_val, r_time, r_seq,
        now_us, tile_us, window_tiles, agg_func, agg_source, agg_window, agg_n, list_off,
    )  # fmt: skip
    return values, valid, lists, list_len, bad


@kernel
def fold_values(
    buf: U8s,
    off: I64s,
    e_key: I64s,
    e_time: I64s,
    e_write: I64s,
    e_seq: I64s,
    e_val: F64s,
    caps: I64s,
    tile_us: int,
    lateness_us: int,
    retention_tiles: int,
    commit_us: int,
    s: int,
    r: int,
) -> tuple[U8s, I64s, I64s, int]:
    """The write path's one call per stream and commit: decode the k stored values in buf,
    fold the events into them (event i belongs to value e_key[i]; events in commit order, in
    any key order: a stable counting sort groups them), encode the new values. Returns (new
    values' buffer, their offsets (an empty value: delete the key), events dropped as too late
    per key, the first malformed stored value or -1: then nothing is folded)."""
    k = off.shape[0] - 1
    tiles, recent, bad = decode_values(buf, off, s, r)
    if bad >= 0:
        return np.zeros(0, np.uint8), np.zeros(k + 1, np.int64), np.zeros(k, np.int64), bad
    t_off, t_id, t_events, t_count, t_hi, t_lo, t_min, t_max = tiles
    r_len, r_val, r_time, r_seq = recent
    e_off, order = _group(e_key, k)
    m = e_key.shape[0]
    c_time = np.empty(m, np.int64)
    c_write = np.empty(m, np.int64)
    c_seq = np.empty(m, np.int64)
    c_val = np.empty((m, e_val.shape[1]))
    for i in range(m):
        j = order[i]
        c_time[i] = e_time[j]
        c_write[i] = e_write[j]
        c_seq[i] = e_seq[j]
        for c in range(e_val.shape[1]):
            c_val[i, c] = e_val[j, c]
    new_tiles, new_recent, dropped = fold_tiles(
        t_off, t_id, t_events, t_count, t_hi, t_lo, t_min, t_max,
        r_len, r_val, r_time, r_seq,
        e_off, c_time, c_write, c_seq, c_val,
        caps, tile_us, lateness_us, retention_tiles, commit_us,
    )  # fmt: skip
    o_off, o_id, o_events, o_count, o_hi, o_lo, o_min, o_max = new_tiles
    o_rlen, o_rval, o_rtime, o_rseq = new_recent
    out, out_off = encode_values(
        o_off, o_id, o_events, o_count, o_hi, o_lo, o_min, o_max,
        o_rlen, o_rval, o_rtime, o_rseq,
    )  # fmt: skip
    return out, out_off, dropped, -1


# --- the read path's response encoding ---------------------------------------------------------

# Output kinds of encode_features (server/aggregates.py maps output types to them).
KIND_INT, KIND_FLOAT, KIND_INT_LIST, KIND_FLOAT_LIST = 0, 1, 2, 3
READ_ENCODED_SIGNATURE = (*READ_VALUES_SIGNATURE, I64_1, I64_1, U8_1, I64_1)


@helper
def _varint_len(u: np.uint64) -> int:
    n = 1
    while u >= np.uint64(0x80):
        u = u >> np.uint64(7)
        n += 1
    return n


@helper
def _put_varint(out: U8s, at: int, u: np.uint64) -> int:
    while u >= np.uint64(0x80):
        out[at] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u = u >> np.uint64(7)
        at += 1
    out[at] = np.uint8(u)
    return at + 1


@helper
def _zigzagless(v: float) -> np.uint64:
    """An Integral output (a float holding a whole number) as protobuf's int64 varint does it:
    two's complement in 64 bits."""
    return np.uint64(np.int64(v))


@kernel
def _feature_sizes(
    values: F64s, valid: Bools, lists: F64s, list_len: I64s, i: int,
    kinds: I64s, columns: I64s, list_start: I64s, name_off: I64s,
) -> tuple[I64s, I64s]:
    """Per field of row i: the FeatureValue body's length (-1: null, left out), and for a
    list the packed values' length."""
    f = kinds.shape[0]
    body = np.full(f, -1, np.int64)
    packed = np.zeros(f, np.int64)
    for j in range(f):
        c = columns[j]
        name = name_off[j + 1] - name_off[j]
        kind = kinds[j]
        if kind == KIND_INT_LIST or kind == KIND_FLOAT_LIST:  # noqa: SIM109 (plain for Numba)
            n = list_len[i, c]
            p = 0
            if kind == KIND_FLOAT_LIST:
                p = 8 * n
            else:
                for x in range(n):
                    p += _varint_len(_zigzagless(lists[i, list_start[j] + x]))
            packed[j] = p
            inner = 0 if n == 0 else 1 + _varint_len(np.uint64(p)) + p
            body[j] = name + 1 + _varint_len(np.uint64(inner)) + inner
        elif valid[i, c]:
            if kind == KIND_INT:
                body[j] = name + 1 + _varint_len(_zigzagless(values[i, c]))
            else:
                body[j] = name + 9
    return body, packed


@kernel
def read_encoded(
    buf: U8s,
    off: I64s,
    now_us: int,
    tile_us: int,
    s: int,
    r: int,
    window_tiles: I64s,
    agg_func: I64s,
    agg_source: I64s,
    agg_window: I64s,
    agg_n: I64s,
    list_off: I64s,
    kinds: I64s,
    columns: I64s,
    names: U8s,
    name_off: I64s,
) -> tuple[U8s, I64s, int]:
    """read_values, then each key's fields encoded as `tessera.v1.Record` features entries
    (field 1, each a FeatureValue: the name bytes `names[name_off[j]:name_off[j+1]]`, already
    encoded as field 1, then int_value = 2, float_value = 3, int_list = 5 or float_list = 6, a
    packed field 1), ready to append to a stored record: (bytes, per-key offsets, first bad
    value or -1). Fields in `columns` order; an invalid scalar is left out (null); a list is
    always there (empty: an empty message)."""
    values, valid, lists, list_len, bad = read_values(
        buf, off, now_us, tile_us, s, r,
        window_tiles, agg_func, agg_source, agg_window, agg_n, list_off,
    )  # fmt: skip
    k = values.shape[0]
    f = kinds.shape[0]
    list_start = np.zeros(f, np.int64)
    for j in range(f):
        list_start[j] = list_off[columns[j]]
    out_off = np.zeros(k + 1, np.int64)
    sizes = np.zeros((k, f), np.int64)
    packs = np.zeros((k, f), np.int64)
    for i in range(k):
        body, packed = _feature_sizes(
            values, valid, lists, list_len, i, kinds, columns, list_start, name_off
        )
        total = 0
        for j in range(f):
            sizes[i, j] = body[j]
            packs[i, j] = packed[j]
            if body[j] >= 0:
                total += 1 + _varint_len(np.uint64(body[j])) + body[j]
        out_off[i + 1] = out_off[i] + total
    out = np.empty(out_off[k], np.uint8)
    for i in range(k):
        at = out_off[i]
        for j in range(f):
            b = sizes[i, j]
            if b < 0:
                continue
            c = columns[j]
            kind = kinds[j]
            out[at] = 0x0A  # Record.features
            at = _put_varint(out, at + 1, np.uint64(b))
            for x in range(name_off[j], name_off[j + 1]):
                out[at] = names[x]
                at += 1
            if kind == KIND_INT:
                out[at] = 0x10
                at = _put_varint(out, at + 1, _zigzagless(values[i, c]))
            elif kind == KIND_FLOAT:
                out[at] = 0x19
                bits = np.array([values[i, c]]).view(np.uint8)
                for x in range(8):
                    out[at + 1 + x] = bits[x]
                at += 9
            else:
                n = list_len[i, c]
                p = packs[i, j]
                inner = 0 if n == 0 else 1 + _varint_len(np.uint64(p)) + p
                out[at] = 0x2A if kind == KIND_INT_LIST else 0x32
                at = _put_varint(out, at + 1, np.uint64(inner))
                if n:
                    out[at] = 0x0A
                    at = _put_varint(out, at + 1, np.uint64(p))
                    for x in range(n):
                        v = lists[i, list_start[j] + x]
                        if kind == KIND_INT_LIST:
                            at = _put_varint(out, at, _zigzagless(v))
                        else:
                            bits = np.array([v]).view(np.uint8)
                            for y in range(8):
                                out[at + y] = bits[y]
                            at += 8
    return out, out_off, bad
