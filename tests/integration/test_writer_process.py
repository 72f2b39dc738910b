"""The writer process and its clients for real: kill -9 mid-stream, restart, SIGTERM drain,
group commits shared across client processes, secondaries catching up (sequence numbers,
coalesced waits)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from tessera.core.errors import PreconditionFailedError, StorageError
from tessera.core.keys import record_key
from tessera.server import history
from tessera.server.process_store import ProcessOnlineStore
from tessera.server.rocksdb import OUTBOX, open_secondary
from tessera.server.secondary import SecondaryReader
from tessera.server.store import Committed, Op, PutOp
from tessera.server.writer_client import WriterClient
from tests.writerproc import WriterProcess

G = 1
NOW = 10**15


def _put(rid: str, et: int = 1) -> PutOp:
    """A put whose payload and history row carry a token unique to it."""
    token = f"<{rid}>".encode()
    return PutOp(G, record_key(G, rid), et, None, token,
                  history.encode(G, 0, et, None, False, "", token))


def _outbox_rows(data_dir: Path, scratch: Path) -> list[bytes]:
    db = open_secondary(data_dir / "online", scratch, block_cache_mb=8)
    try:
        db.try_catch_up_with_primary()
        outbox = db.get_column_family(OUTBOX)
        rows = [bytes(v) for k, v in outbox.items() if bytes(k).startswith(b"r")]
        outbox.close()
        return rows
    finally:
        db.close()


def _stream(client: WriterClient, name: str, acked: list[str], stop: threading.Event) -> None:
    """Submit 20-put batches (8 in flight) until a write fails or `stop`; record acknowledged."""
    n = 0
    window: list[tuple[list[str], Future[Committed]]] = []
    while True:
        if not stop.is_set():
            rids = [f"{name}-{n + i:06d}" for i in range(20)]
            n += 20
            window.append((rids, client.submit([_put(r) for r in rids])))
        if not window:
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


def test_kill_9_mid_stream_loses_no_acknowledged_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    writer = WriterProcess(data).start()
    client = WriterClient(data / "writer.sock")
    try:
        acked: dict[str, list[str]] = {"a": [], "b": []}
        stop = threading.Event()
        threads = [threading.Thread(target=_stream, args=(client, k, v, stop))
                   for k, v in acked.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while min(len(v) for v in acked.values()) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.kill()  # SIGKILL while both threads have writes in flight
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a client hung on a dead writer"
        assert min(len(v) for v in acked.values()) >= 500
        # Every acknowledged write's history row is in the outbox exactly once (read before
        # the restart: the restarted writer's flusher moves rows of unregistered groups away).
        everything = [r for v in acked.values() for r in v]
        tokens: dict[bytes, int] = {}
        for row in _outbox_rows(data, tmp_path / "sec-outbox"):
            payload = history.decode(0, row).payload
            tokens[payload] = tokens.get(payload, 0) + 1
        for r in everything:
            assert tokens.get(f"<{r}>".encode()) == 1, r

        # Down: fails fast, no hang.
        start = time.monotonic()
        with pytest.raises(StorageError, match="not reachable"):
            client.submit([_put("while-down")]).result(timeout=5)
        assert time.monotonic() - start < 1.0

        writer.start()
        # Back: the same client reconnects on its next submit.
        assert client.submit([_put("after")]).result(timeout=10).results == [True]
        assert client.reconnects == 1

        reader = SecondaryReader(data / "online", tmp_path / "sec", block_cache_mb=8)
        try:
            hits = reader.multi_get([record_key(G, r) for r in everything], NOW)
            missing = [r for r, h in zip(everything, hits, strict=True) if h is None]
            assert missing == []
            assert [bytes(h[0]) for h in hits if h is not None] == [
                f"<{r}>".encode() for r in everything]
        finally:
            reader.close()
    finally:
        client.close()
        writer.kill()


def test_sigterm_acknowledges_every_request_received_then_exits_cleanly(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    writer = WriterProcess(data).start()
    client = WriterClient(data / "writer.sock")
    try:
        futures = [(i, client.submit([_put(f"t{i}")])) for i in range(300)]
        assert writer.proc is not None
        writer.proc.terminate()
        acked, failed = [], 0
        for i, fut in futures:
            try:
                assert fut.result(timeout=30).results == [True]
                acked.append(i)
            except StorageError:
                failed += 1  # sent after the writer stopped reading
        assert writer.proc.wait(timeout=30) == 0
        assert not (data / "writer.sock").exists()
        assert len(acked) + failed == 300 and acked
        writer.start()
        reader = SecondaryReader(data / "online", tmp_path / "sec", block_cache_mb=8)
        try:
            hits = reader.multi_get([record_key(G, f"t{i}") for i in acked], NOW)
            assert all(h is not None for h in hits)
        finally:
            reader.close()
    finally:
        client.close()
        writer.kill()


_CLIENT = """
import sys
from pathlib import Path
from tessera.core.keys import record_key
from tessera.server.store import PutOp
from tessera.server.writer_client import WriterClient
sock, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
client = WriterClient(sock, max_in_flight=64)
futures = [client.submit([PutOp(1, record_key(1, f"{name}{i}"), 1, None, b"v")])
           for i in range(n)]
assert all(f.result(timeout=60).results == [True] for f in futures)
client.close()
"""


def test_two_client_processes_share_group_commits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with WriterProcess(data) as writer:
        procs = [subprocess.Popen([sys.executable, "-c", _CLIENT, str(writer.socket), name,
                                   "400"]) for name in ("p", "q")]
        try:
            assert [p.wait(timeout=60) for p in procs] == [0, 0]
        finally:
            for p in procs:
                p.kill()
                p.wait()
        client = WriterClient(writer.socket)
        try:
            stats = client.stats()
        finally:
            client.close()
    assert stats["requests"] == 800 and stats["committed_ops"] == 800
    assert stats["commits"] < stats["requests"] / 2, stats


def test_a_secondary_after_catch_up_has_the_primarys_sequence_number(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with WriterProcess(data) as writer:
        client = WriterClient(writer.socket)
        reader = SecondaryReader(data / "online", tmp_path / "sec", catch_up_interval_s=10.0,
                                 block_cache_mb=8)
        try:
            for i in range(5):
                committed = client.submit([_put(f"s{i}-{j}") for j in range(i + 1)]).result(10)
                assert reader.catch_up() == committed.seq == client.stats()["seq"]
            dropped = client.drop_group(G).result(timeout=10)
            assert reader.catch_up() == dropped.seq == client.stats()["seq"]
            assert reader.get(record_key(G, "s0-0"), NOW) is None
        finally:
            reader.close()
            client.close()


def test_concurrent_waiters_share_one_catch_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with WriterProcess(data) as writer:
        client = WriterClient(writer.socket)
        # No timer catch-up during the test: every catch-up is a waiter's.
        reader = SecondaryReader(data / "online", tmp_path / "sec", catch_up_interval_s=60.0,
                                 block_cache_mb=8)
        try:
            seq = client.submit([_put("w")]).result(timeout=10).seq
            assert reader.visible_seq() < seq
            before = reader.catch_ups
            gate = threading.Barrier(16)
            results: list[bool] = []

            def wait() -> None:
                gate.wait()
                results.append(reader.wait_visible(seq, timeout_s=10))

            threads = [threading.Thread(target=wait) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results == [True] * 16
            assert reader.catch_ups - before <= 2, "waiters did not share catch-ups"
            assert reader.get(record_key(G, "w"), NOW) is not None
            # A seq never issued: waits in vain and says so, without spinning catch-ups.
            before = reader.catch_ups
            assert not reader.wait_visible(seq + 1000, timeout_s=0.3)
            assert reader.catch_ups - before <= 1
        finally:
            reader.close()
            client.close()


def test_a_request_the_writer_refuses_fails_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with WriterProcess(data) as writer:
        client = WriterClient(writer.socket)
        try:
            ops: list[Op] = [_put("ok")]
            assert client.submit(ops).result(timeout=10).results == [True]
            with pytest.raises(TypeError):
                client.submit([object()]).result(timeout=10)  # type: ignore[list-item]
            assert client.submit([_put("ok", 2)]).result(timeout=10).results == [True]
        finally:
            client.close()


def test_a_write_is_readable_in_another_secondary_once_its_seq_is_visible(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with WriterProcess(data):
        writer_side = ProcessOnlineStore(data, tmp_path / "sec-a", block_cache_mb=8)
        # Another serving process: its timer would not catch up within the test.
        other = ProcessOnlineStore(data, tmp_path / "sec-b", catch_up_interval_s=60.0,
                                   block_cache_mb=8)
        try:
            seq = writer_side.submit([_put("ryw")]).result(timeout=10).seq
            assert other.get(record_key(G, "ryw"), NOW) is None, "not caught up yet"
            assert other.wait_visible(seq, timeout_s=5.0)
            hit = other.get(record_key(G, "ryw"), NOW)
            assert hit is not None and bytes(hit[0]) == b"<ryw>"
            assert writer_side.get(record_key(G, "ryw"), NOW) is not None, "its own write"
        finally:
            writer_side.close()
            other.close()


def test_in_flight_requests_are_bounded_and_a_stuck_writer_fails_them_not_hangs(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with WriterProcess(data) as writer:
        assert writer.proc is not None
        client = WriterClient(writer.socket, max_in_flight=2, slot_timeout_s=0.3)
        try:
            assert client.submit([_put("warm")]).result(timeout=10).results == [True]
            writer.proc.send_signal(signal.SIGSTOP)
            try:
                held = [client.submit([_put(f"h{i}")]) for i in range(2)]
                start = time.monotonic()
                with pytest.raises(StorageError, match="too many writes in flight"):
                    client.submit([_put("third")]).result(timeout=5)
                assert 0.25 < time.monotonic() - start < 2.0
                assert not any(f.done() for f in held)
            finally:
                writer.proc.send_signal(signal.SIGCONT)
            assert [f.result(timeout=10).results for f in held] == [[True], [True]]
            assert client.submit([_put("after")]).result(timeout=10).results == [True]
        finally:
            client.close()


def test_a_seq_never_issued_is_refused_once_the_wait_times_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with WriterProcess(data):
        store = ProcessOnlineStore(data, tmp_path / "sec", block_cache_mb=8)
        try:
            seq = store.submit([_put("a")]).result(timeout=10).seq
            assert store.wait_visible(seq, timeout_s=5.0)
            with pytest.raises(PreconditionFailedError, match="not issued by this Tessera"):
                store.wait_visible(seq + 1000, timeout_s=0.2)
        finally:
            store.close()


def test_a_writer_that_cannot_start_exits_1_and_leaves_the_running_one_serving(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with WriterProcess(data) as first:
        second = WriterProcess(data)
        second.log_path = tmp_path / "second.log"
        try:
            second.start()  # returns at once: the first one's socket accepts
            assert second.proc is not None
            assert second.proc.wait(30) == 1  # the primary's lock is held
        finally:
            second.kill()
        assert "the writer process failed" in second.log() and "lock" in second.log()
        assert first.socket.exists()  # the failed one did not take the socket away
        client = WriterClient(first.socket)
        try:
            assert client.submit([_put("still")]).result(timeout=10).results == [True]
        finally:
            client.close()
        assert first.stop() == 0
