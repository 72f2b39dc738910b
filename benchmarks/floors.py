"""The storage floor: the same reads in-process on raw rocksdict, on the benchmark's own data.

Run on the server's data directory after the server stopped, opened with `open_rocksdb` (the
server's options: bloom filter, block cache, and the per-column-family options on reopen).
The transport floor (Diagnostics/Echo) is driven like the other RPCs, by benchmarks/run.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks import data
from tessera.core.keys import group_prefix, record_key
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.online_store import HEADER_SIZE
from tessera.server.rocksdb import open_rocksdb

BATCH = 100


def storage_floor(
    db_path: Path, group_id: int, n: int, duration_s: float, seed: int
) -> dict[str, object]:
    """Count the group's records, check a sample, then time random single gets and 100-key
    multi gets (`duration_s` each, after a warm-up pass)."""
    rocks = open_rocksdb(db_path)
    try:
        records = rocks.records
        count = _count(records, group_id)
        rng = np.random.default_rng(seed)
        keys = [record_key(group_id, data.record_id(int(i))) for i in rng.integers(0, n, 200_000)]
        _check_sample(records, group_id, rng.integers(0, n, 200).tolist())
        for key in keys[:20_000]:  # warm the block cache like the server's was
            records.get(key)
        single = _time_calls(lambda k: records.get(k), keys, duration_s, 1)
        multi = _time_calls(lambda ks: records.get(ks), keys, duration_s, BATCH)
        fixed = _time_calls(lambda k: records.get(k), keys[:1] * 1000, duration_s / 4, 1)
    finally:
        rocks.close()
    return {"records_in_group": count, "get": single, "multi_get_100": multi,
            "get_fixed_key": fixed}


def _count(records: object, group_id: int) -> int:
    prefix, end = group_prefix(group_id), group_prefix(group_id + 1)
    it = records.iter()  # type: ignore[attr-defined]
    it.seek(prefix)
    count = 0
    while it.valid() and it.key() < end:
        count += 1
        it.next()
    del it
    return count


def _check_sample(records: object, group_id: int, indexes: list[int]) -> None:
    for i in indexes:
        raw = records.get(record_key(group_id, data.record_id(i)))  # type: ignore[attr-defined]
        if raw is None or not data.matches(i, pb.Record.FromString(raw[HEADER_SIZE:])):
            raise RuntimeError(f"storage floor: record {i} is missing or differs from the put")


def _time_calls(fn, keys: list[bytes], duration_s: float, batch: int) -> dict[str, float]:  # noqa: ANN001
    lat_ns: list[int] = []
    pos, misses = 0, 0
    clock = time.perf_counter_ns
    stop = clock() + int(duration_s * 1e9)
    while True:
        arg = keys[pos:pos + batch] if batch > 1 else keys[pos]
        pos = (pos + batch) % (len(keys) - batch)
        t0 = clock()
        got = fn(arg)
        t1 = clock()
        lat_ns.append(t1 - t0)
        misses += (got is None) if batch == 1 else sum(v is None for v in got)
        if t1 >= stop:
            break
    if misses:
        raise RuntimeError(f"storage floor: {misses} reads found nothing")
    lat_ms = np.array(lat_ns) / 1e6
    seconds = float(lat_ms.sum()) / 1000
    return {
        "calls": len(lat_ns),
        "calls_per_s": round(len(lat_ns) / seconds, 1),
        "records_per_s": round(len(lat_ns) * batch / seconds, 1),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 5),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 5),
        "mean_ms": round(float(lat_ms.mean()), 5),
    }
