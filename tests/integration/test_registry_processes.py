"""The registry across processes for real: a writer process owning the primary, serving
processes with a `RemoteRegistry` each on their own secondary. A group created through one is
found at once by another (a miss forces one catch-up, rate-limited), a deleted group's records
are dropped and its history retired by the writer process, and the writer's flusher writes
every acknowledged put to Parquet exactly once across a kill -9."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import duckdb
import pytest

from tessera.core.errors import FeatureGroupNotFoundError, StorageError
from tessera.core.keys import record_key
from tessera.core.schema import CompiledSchema, FeatureDefinition, FeatureGroupUpdate
from tessera.server.offline_writer import RETIRED_DIR
from tessera.server.process_store import ProcessOnlineStore
from tessera.server.registry_client import RemoteRegistry
from tessera.server.store import Committed, now_us
from tests.registry_harness import definition, put, small_settings, writer_and_store
from tests.writerproc import WriterProcess

ROOT = Path(__file__).resolve().parents[2]


class Peer:
    """tests/registry_peer.py in a process of its own."""

    def __init__(self, data_dir: Path, scratch: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.registry_peer", str(data_dir), str(scratch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.ask(None) == "ready"

    def ask(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def peer_factory() -> Iterator[list[Peer]]:
    peers: list[Peer] = []
    yield peers
    for p in peers:
        p.close()


def test_a_group_created_through_one_process_is_found_at_once_by_another(
    tmp_path: Path, peer_factory: list[Peer]
) -> None:
    data = tmp_path / "data"
    # This process's timer never catches up either: only the mutation's own sync and misses.
    with writer_and_store(data, tmp_path / "sec-a", catch_up_interval_s=60.0) as (_, _, mine):
        peer = Peer(data, tmp_path / "sec-b")
        peer_factory.append(peer)
        assert peer.ask("schema users") == "missing"
        time.sleep(0.02)  # past the peer's miss rate limit

        group = mine.create(definition())
        assert mine.describe("users") == group  # visible here before create returned
        assert peer.ask("schema users") == "found 1 id,ts,clicks"  # a miss refreshed it

        mine.update("users", FeatureGroupUpdate(
            feature_additions=[FeatureDefinition.of("score", "Fractional")]))
        assert "score" in mine.schema("users").features
        # The peer still holds version 1 (no miss: no reload); a write naming `score` asks
        # for a newer schema, which one forced refresh finds.
        assert peer.ask("schema users") == "found 1 id,ts,clicks"
        assert peer.ask("newer users") == "newer id,ts,clicks,score"
        forced, reloads = peer.ask("stats").split()[1:]
        assert (int(forced), int(reloads)) == (3, 2)


def test_a_group_created_elsewhere_is_found_even_right_after_another_miss(
    tmp_path: Path,
) -> None:
    # Misses come in a flood and a group is created through another process in the middle of
    # it: the first lookup after the creation was acknowledged finds it (no miss is answered
    # from a view older than the miss), and misses never cost more catch-ups than lookups.
    data = tmp_path / "data"
    with writer_and_store(data, tmp_path / "sec-a", catch_up_interval_s=60.0) as (
            _, store, registry), \
            contextlib.closing(ProcessOnlineStore(data, tmp_path / "sec-b",
                                                  block_cache_mb=8)) as other_store:
        other = RemoteRegistry(other_store.reader, other_store.writer)
        before = store.reader.catch_ups
        misses = 0
        for i in range(50):
            with pytest.raises(FeatureGroupNotFoundError):
                registry.schema(f"unknown-{i}")
            misses += 1
            if i == 25:
                other.create(definition())
                assert registry.schema("users").group_name == "users"  # at once, no wait
        assert store.reader.catch_ups - before <= misses + 1


def test_the_timer_reloads_a_changed_registry_without_a_miss(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with writer_and_store(data, tmp_path / "sec-a") as (_, _, mine), \
            contextlib.closing(ProcessOnlineStore(data, tmp_path / "sec-b",
                                                  block_cache_mb=8)) as other_store:
        other = RemoteRegistry(other_store.reader, other_store.writer)
        mine.create(definition())
        deadline = time.monotonic() + 5
        while other.find_schema("users") is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert other.find_schema("users") is not None  # find_schema never forces a refresh
        mine.delete("users")
        while other.find_schema("users") is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert other.find_schema("users") is None


def _history(offline_folder: Path) -> list[tuple[str, int]]:
    files = list(offline_folder.glob("event_date=*/*.parquet"))
    if not files:
        return []
    rel = duckdb.sql(
        f"SELECT id, clicks FROM read_parquet('{offline_folder}/event_date=*/*.parquet', "
        "hive_partitioning=true, union_by_name=true)")
    return [(str(r[0]), int(r[1])) for r in rel.fetchall()]


def test_deleting_a_group_drops_its_records_and_retires_its_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with writer_and_store(data, tmp_path / "sec") as (_, store, registry):
        registry.create(definition())
        schema = registry.schema("users")
        assert store.submit([put(schema, f"u{i}", i) for i in range(5)]).result(10).results \
            == [True] * 5
        assert store.get(record_key(1, "u3"), now_us()) is not None

        registry.delete("users")
        assert store.get(record_key(1, "u3"), now_us()) is None  # dropped, seen at once
        offline = data / "offline"
        assert not (offline / "users").exists()
        retired = offline / RETIRED_DIR / "users.1"
        assert sorted(_history(retired)) == [(f"u{i}", i) for i in range(5)]

        again = registry.create(definition())
        assert again.feature_group_id == 2
        assert store.get(record_key(2, "u3"), now_us()) is None
        assert _history(offline / "users") == []


def _stream(store: ProcessOnlineStore, schema: CompiledSchema, name: str, acked: list[str],
            stop: threading.Event) -> None:
    """Put 20-record batches (8 in flight) until one fails or `stop`; record acknowledged."""
    n = 0
    window: list[tuple[list[str], Future[Committed]]] = []
    while True:
        if not stop.is_set():
            rids = [f"{name}-{n + i:06d}" for i in range(20)]
            n += 20
            window.append((rids, store.submit([put(schema, r) for r in rids])))
        elif not window:
            return
        if len(window) >= 8 or stop.is_set():
            rids, fut = window.pop(0)
            try:
                committed = fut.result(timeout=30)
            except StorageError:
                stop.set()
                continue
            assert committed.results == [True] * len(rids)
            acked.extend(rids)


def test_the_writers_flusher_writes_every_acknowledged_put_once_across_kill_9(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # Small, frequent flushes: the kill lands between (or in) flushes.
    settings = small_settings(data, flush_interval_s=0.05, flush_max_rows=100)
    acked: dict[str, list[str]] = {"a": [], "b": []}
    with writer_and_store(data, tmp_path / "sec", settings=settings) as (writer, store, registry):
        registry.create(definition())
        schema = registry.schema("users")
        stop = threading.Event()
        threads = [threading.Thread(target=_stream, args=(store, schema, k, v, stop))
                   for k, v in acked.items()]
        for t in threads:
            t.start()
        folder = data / "offline" / "users"
        deadline = time.monotonic() + 30
        # Killed once flushes are under way (the first one loads the history kernels).
        while (min(len(v) for v in acked.values()) < 400
               or not list(folder.glob("event_date=*/*.parquet"))):
            assert time.monotonic() < deadline, "no flush while writing"
            time.sleep(0.01)
        writer.kill()  # SIGKILL with writes in flight and flushes under way
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a client hung on a dead writer"
    # Restarted, then stopped: the start-up replays an interrupted flush, the stop flushes all.
    restarted = WriterProcess(data, settings=settings)
    try:
        restarted.start()
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    counts = Counter(rid for rid, _ in _history(data / "offline" / "users"))
    everything = [r for v in acked.values() for r in v]
    assert len(everything) >= 800
    assert [r for r in everything if counts[r] != 1] == []  # every acknowledged put, once
    assert max(counts.values()) == 1  # and nothing twice (in-flight ones: at most once)
