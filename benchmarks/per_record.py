"""Per-record costs of the write paths, in-process, old code next to new in the same run.

    .venv/bin/python -m benchmarks.per_record [--before /tmp/tessera-before] [--rounds 5]
        [--e2e] [--out benchmarks/results/per_record_costs.json]

Stages (microseconds of one core per record, each the median of `--rounds` runs, each run in a
fresh subprocess, the trees interleaved run by run so that the machine's drifts fall on both):

- `put_records`: the servicer's PutRecords handler on a 1,000-record body of the online
  benchmark's records (parse, validate, build the store operations with their history rows);
  the store is a stub that acknowledges at once.
- `writer_ipc`: those operations crossing the writer socket of the multi-process server: each
  call's Submit encoded (serving process) and decoded (writer process).
- `writer`: the online store's group commit of those operations into a temporary RocksDB.
- `flush`: the outbox flusher moving the committed rows to Parquet (read the outbox range, decode,
  build Arrow, write zstd Parquet and fsync), and `flush_parquet_floor`: pyarrow writing the same
  table alone (what the flush cannot go below).
- `ingest_prepare`: the Kafka consumer's decode + map + validate of the ingest benchmark's JSON
  events (`Preparer.prepare` over fake messages).

`--before PATH` names a checkout of the old code (`git worktree add /tmp/tessera-before REV`), and
`--after PATH` one of the new (default: this working tree); each runs with this venv through
PYTHONPATH. `--e2e` also runs `benchmarks.run --quick` (bulk durable
PutRecords) and `benchmarks.ingest_bench --quick` (Kafka ingest) once per tree, interleaved.
Every stage checks its result (records written, rows in Parquet, records prepared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sized
from concurrent.futures import Future
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORDS_PER_CALL = 1000


# --- the worker: one tree, one process -----------------------------------------------------------


def _bench_schema(group_id: int = 1) -> Any:
    from benchmarks.data import GROUP, group_definition
    from tessera.core.schema import CompiledSchema, FeatureGroup, FeatureGroupDefinition

    definition = FeatureGroupDefinition.model_validate(
        {k: v for k, v in group_definition(GROUP).items()}
    )
    group = FeatureGroup(definition=definition, feature_group_id=group_id, creation_time=0.0,
                         last_modified_time=0.0)
    return group, CompiledSchema.of(group)


class _StubRegistry:
    def __init__(self, schema: Any) -> None:
        self._schema = schema

    def schema(self, name: str) -> Any:
        return self._schema


class _Acks(list[Any]):
    """A commit's acknowledgement, for servicers that take a list of results and for those
    that take a `Committed` (results and the commit sequence)."""

    seq = 0

    @property
    def results(self) -> list[Any]:
        return self


def _records_in(op: Any) -> int:
    """Records in a store operation: a PutBatch holds many (len), a PutOp one."""
    return len(op) if isinstance(op, Sized) else 1


class _CollectingStore:
    """Acknowledges every write at once, keeping each call's operations for the writer stage."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    @property
    def records(self) -> int:
        return sum(_records_in(op) for ops in self.calls for op in ops)

    def submit(self, ops: list[Any]) -> Future[list[Any]]:
        self.calls.append(list(ops))
        f: Future[list[Any]] = Future()
        f.set_result(_Acks([True] * sum(_records_in(op) for op in ops)))
        return f


def _stage_write_path(records: int, work: Path) -> dict[str, float]:
    from benchmarks.data import put_records_request
    from tessera.proto.v1 import feature_store_pb2 as pb
    from tessera.server.grpc_service import FeatureStoreService
    from tessera.server.offline_writer import ParquetOfflineWriter
    from tessera.server.online_store import RocksDBOnlineStore
    from tessera.server.outbox import OutboxFlusher
    from tessera.server.rocksdb import open_rocksdb

    group, schema = _bench_schema()
    store = _CollectingStore()
    service = FeatureStoreService(_StubRegistry(schema), store)  # type: ignore[arg-type]
    bodies = [
        put_records_request(range(i, min(i + RECORDS_PER_CALL, records)))
        for i in range(0, records, RECORDS_PER_CALL)
    ]

    async def put_all() -> int:
        written = 0
        for body in bodies:
            written += pb.PutRecordsResponse.FromString(await service.put_records(body)).written
        return written

    t0 = time.process_time()
    written = asyncio.run(put_all())
    put_s = time.process_time() - t0
    if written != records or store.records != records:
        raise RuntimeError(f"put_records wrote {written} of {records}")

    # What crosses the writer socket in the multi-process server: each call's Submit encoded
    # (serving process) and decoded back into operations (writer process).
    from tessera.server import writer_ipc as ipc

    numbers, sent, plans = ipc.PlanNumbers(), set[int](), dict[int, Any]()
    t0 = time.process_time()
    crossed = []
    for n, ops in enumerate(store.calls):
        frame = ipc.encode_submit(n, ops, numbers, sent)
        crossed.append(ipc.decode_ops(ipc.request_decoder.decode(frame[4:]), plans))
    ipc_s = time.process_time() - t0
    if sum(_records_in(op) for ops in crossed for op in ops) != records:
        raise RuntimeError("records lost crossing the writer socket")

    rocks = open_rocksdb(work / "db", block_cache_mb=64, write_buffer_mb=64)
    online = RocksDBOnlineStore(rocks)
    t0 = time.process_time()
    for ops in crossed:
        online.write(ops)
    writer_s = time.process_time() - t0

    writer = ParquetOfflineWriter(work / "offline")
    flusher = OutboxFlusher(rocks, online, writer, {1: (group, False)}.get, 3600, records)
    t0 = time.process_time()
    flushed = flusher.flush_all()
    flush_s = time.process_time() - t0
    if flushed != records or writer.rows_written != records:
        raise RuntimeError(f"the flush wrote {writer.rows_written} rows of {records}")

    import pyarrow.parquet as pq

    files = sorted((work / "offline").rglob("*.parquet"))
    table = pq.read_table(files[0])
    if sum(pq.ParquetFile(f).metadata.num_rows for f in files) != records:
        raise RuntimeError("rows missing from Parquet")
    t0 = time.process_time()
    with open(work / "floor.parquet", "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=128 * 1024)
        f.flush()
        os.fsync(f.fileno())
    floor_s = time.process_time() - t0
    online.close()
    rocks.close()
    return {
        "put_records": put_s / records * 1e6,
        "writer_ipc": ipc_s / records * 1e6,
        "writer": writer_s / records * 1e6,
        "flush": flush_s / records * 1e6,
        "flush_parquet_floor": floor_s / table.num_rows * 1e6,
    }


def _stage_ingest(records: int) -> dict[str, float]:
    from benchmarks.ingest_bench import FEATURES, GROUP, event
    from tessera.core.schema import (
        CompiledSchema,
        FeatureDefinition,
        FeatureGroup,
        FeatureGroupDefinition,
    )
    from tessera.ingest.batch import Preparer
    from tessera.ingest.config import TopicConfig
    from tests.unit.ingest.fakes import FakeMessage

    definition = FeatureGroupDefinition(
        feature_group_name=GROUP, record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in FEATURES.items()],
    )
    schema = CompiledSchema.of(FeatureGroup(definition=definition, feature_group_id=1,
                                            creation_time=0.0, last_modified_time=0.0))
    topic = TopicConfig(topic="events", feature_group=GROUP)
    preparer = Preparer(topic, 1 << 20)
    messages = [
        FakeMessage(json.dumps(event(i)).encode(), offset=i, key=f"u{i}".encode())
        for i in range(records)
    ]
    t0 = time.process_time()
    prepared = 0
    for i in range(0, records, 1000):
        batch = preparer.prepare(messages[i : i + 1000], schema)  # type: ignore[arg-type]
        if batch.dead:
            raise RuntimeError(f"dead letters: {batch.dead[0].reason}")
        prepared += len(batch.records)
    seconds = time.process_time() - t0
    if prepared != records:
        raise RuntimeError(f"prepared {prepared} of {records}")
    return {"ingest_prepare": seconds / records * 1e6}


def worker(records: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tessera-per-record-") as tmp:
        _stage_write_path(RECORDS_PER_CALL, Path(tmp) / "warm-up")  # lazy imports, first calls
        out = _stage_write_path(records, Path(tmp) / "measured")
    _stage_ingest(RECORDS_PER_CALL)
    out.update(_stage_ingest(records))
    return out


# --- the driver ----------------------------------------------------------------------------------


def _pythonpath_for(tree: Path, tmp: Path) -> str:
    """A directory whose `tessera` package is `tree`'s code (the venv maps tessera.* to this
    checkout; PYTHONPATH comes first)."""
    pkg = tmp / tree.name / "tessera"
    pkg.mkdir(parents=True, exist_ok=True)
    for name, src in (("core", "core"), ("server", "server"), ("client", "client"),
                      ("ingest", "ingest"), ("proto", "proto/tessera")):
        link = pkg / name
        if not link.exists():
            link.symlink_to(tree / src)
    return str(pkg.parent)


def _env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def _run_worker(pythonpath: str | None, records: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.per_record", "--worker", "--records", str(records)],
        cwd=ROOT, env=_env(pythonpath), capture_output=True, text=True, timeout=900, check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


_WARM_UP = """
import importlib
from tessera.core.aggregation.warmup import warm_up
warm_up()
for name in ("tessera.server.history_kernels", "tessera.core.record_scan"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # a checkout without it
from tessera.core import records
getattr(records, "load_compiled_validation", lambda: None)()
"""


def _warm_up(pythonpath: str | None) -> None:
    """Compile the checkout's Numba kernels into its on-disk cache (a new checkout path misses
    the cache: the server would compile them at start-up, past the suites' start timeout)."""
    subprocess.run([sys.executable, "-c", _WARM_UP], cwd=ROOT, env=_env(pythonpath),
                   check=True, timeout=900)


def _run_e2e(tree: Path, pythonpath: str | None, tmp: Path, label: str) -> dict[str, Any]:
    """The quick online and ingest suites of `tree` (its own benchmarks/ and tests/)."""
    online_out, ingest_out = tmp / f"online-{label}.json", tmp / f"ingest-{label}.json"
    subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(online_out)],
                   cwd=tree, env=_env(pythonpath), check=True, timeout=1800,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "benchmarks.ingest_bench", "--quick", "--out",
                    str(ingest_out)], cwd=tree, env=_env(pythonpath), check=True, timeout=1800,
                   stdout=subprocess.DEVNULL)
    online = json.loads(online_out.read_text())
    ingest = json.loads(ingest_out.read_text())
    return {"bulk_load": online.get("bulk_load"),
            "bulk_load_online_only": online.get("bulk_load_online_only"),
            "ingest": {k: v for k, v in ingest.items() if k not in ("machine", "config")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of the old code to compare")
    parser.add_argument("--after", type=Path,
                        help="a checkout of the new code (default: this one, as it is)")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--e2e", action="store_true", help="also the quick end-to-end suites")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/per_record_costs.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.records)))
        return 0

    with tempfile.TemporaryDirectory(prefix="tessera-per-record-") as tmp_name:
        tmp = Path(tmp_name)
        checkouts: dict[str, Path] = {"after": (args.after or ROOT).resolve()}
        if args.before is not None:
            checkouts = {"before": args.before.resolve(), **checkouts}
        trees: dict[str, str | None] = {
            label: None if path == ROOT else _pythonpath_for(path, tmp / label)
            for label, path in checkouts.items()
        }
        for path in trees.values():
            _warm_up(path)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
        for n in range(args.rounds):
            for label, path in trees.items():
                runs[label].append(_run_worker(path, args.records))
                print(f"round {n + 1} {label}: {runs[label][-1]}", file=sys.stderr)
        medians = {
            label: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]}
            for label, rs in runs.items()
        }
        report: dict[str, Any] = {
            "machine": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                        "load_average": os.getloadavg(),
                        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                                                 capture_output=True, text=True).stdout.strip()},
            "config": {"records": args.records, "rounds": args.rounds,
                       "records_per_call": RECORDS_PER_CALL,
                       "checkouts": {k: str(v) for k, v in checkouts.items()}},
            "us_per_record_median": medians,
            "runs": runs,
        }
        if "before" in medians:
            report["ratio_before_over_after"] = {
                k: round(medians["before"][k] / medians["after"][k], 2)
                for k in medians["after"] if medians["after"][k] > 0
            }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        if args.e2e:
            report["e2e"] = {}
            for label, path in trees.items():
                try:
                    report["e2e"][label] = _run_e2e(checkouts[label], path, tmp, label)
                except subprocess.SubprocessError as exc:
                    report["e2e"][label] = {"failed": str(exc)}
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in report if k in (
        "us_per_record_median", "ratio_before_over_after")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
