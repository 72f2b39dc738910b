"""`ProcessOnlineStore`: the `OnlineStore` of a serving process in the multi-process layout:
writes go to the writer process (`WriterClient`, server/writer_client.py), reads come from a
RocksDB secondary of its primary (`SecondaryReader`, server/secondary.py).

Read-your-writes within a process: a read first makes sure the secondary reflects every commit
acknowledged to this process (`WriterClient.acked_seq`): when it does (the common case, one
integer comparison) nothing waits; right after a write, the read catches up once. Across
processes, a client passes the seq of its write's acknowledgement to `wait_visible`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path

from tessera.core.errors import PreconditionFailedError, StorageError
from tessera.server.secondary import CATCH_UP_INTERVAL_S, SecondaryReader
from tessera.server.store import Committed, Hit, Op, ScanPage
from tessera.server.writer_client import WriterClient
from tessera.server.writer_ipc import socket_path


class ProcessOnlineStore:
    """An OnlineStore over the writer process of `data_dir` (see the module docstring)."""

    def __init__(self, data_dir: Path, secondary_dir: Path,
                 catch_up_interval_s: float = CATCH_UP_INTERVAL_S, block_cache_mb: int = 512,
                 max_in_flight: int = 1024, own_writes_timeout_s: float = 5.0,
                 registry_only: bool = False) -> None:
        self.writer = WriterClient(socket_path(data_dir), max_in_flight=max_in_flight)
        self.reader = SecondaryReader(data_dir / "online", secondary_dir, catch_up_interval_s,
                                      block_cache_mb, registry_only)
        self._own_writes_timeout_s = own_writes_timeout_s

    def _own_writes(self) -> None:
        acked = self.writer.acked_seq
        if acked > self.reader.visible_seq() and not self.reader.wait_visible(
                acked, self._own_writes_timeout_s):
            raise StorageError(
                f"reads do not reflect this process's writes yet (commit {acked}); retry later")

    def get(self, key: bytes, at_us: int) -> Hit | None:
        self._own_writes()
        return self.reader.get(key, at_us)

    def multi_get(self, keys: list[bytes], at_us: int) -> list[Hit | None]:
        self._own_writes()
        return self.reader.multi_get(keys, at_us)

    def get_aggregates(self, keys: list[bytes]) -> list[bytes | None]:
        self._own_writes()
        return self.reader.get_aggregates(keys)

    def scan(
        self, group_id: int, start_after: str | None, limit: int, at_us: int,
        include_deleted: bool = False,
    ) -> ScanPage:
        self._own_writes()
        return self.reader.scan(group_id, start_after, limit, at_us, include_deleted)

    def submit(self, ops: list[Op]) -> Future[Committed]:
        return self.writer.submit(ops)

    def drop_group(self, group_id: int) -> Future[Committed]:
        return self.writer.drop_group(group_id)

    def purge_expired(self, at_us: int, limit: int) -> int:
        return self.writer.purge_expired(at_us, limit)

    def visible_seq(self) -> int:
        """What a read issued now reflects: the secondary's catch-up, and at least every commit
        acknowledged to this process (a read waits for those first)."""
        return max(self.reader.visible_seq(), self.writer.acked_seq)

    def wait_visible(self, seq: int, timeout_s: float) -> bool:
        """Wait for the secondary to reflect `seq` (an immediate catch-up, then the timer's).
        When the immediate catch-up is not enough, the writer says whether `seq` was ever
        issued: one ahead of the primary's latest is PreconditionFailedError (another data
        directory's token)."""
        deadline = time.monotonic() + timeout_s
        # The writer is asked early (a token never issued answers at once, not at the
        # deadline), yet only when an immediate catch-up was not enough (rare).
        if self.reader.wait_visible(seq, min(timeout_s, 0.05)):
            return True
        try:
            primary = self.writer.stats(timeout_s=min(1.0, max(timeout_s, 0.01)))["seq"]
        except (StorageError, TimeoutError):
            primary = seq  # the writer is down or busy: cannot tell; wait as asked
        if seq > primary:
            raise PreconditionFailedError(
                f"consistent_after names commit {seq}, ahead of this store's latest commit "
                f"{primary}: it was not issued by this Tessera (another server or data "
                "directory), or this store lost the data it was issued for")
        return self.reader.wait_visible(seq, max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.writer.close()
        self.reader.close()
