"""`WriterClient`: a serving process's connection to the writer process (server/writer_process.py).

Thread-safe: any thread submits ops and gets a future; one receiver thread per connection
resolves them as replies arrive, so many requests are in flight on one connection (pipelined).
At most `max_in_flight` requests are outstanding: a submit beyond that waits for a slot (up to
`slot_timeout_s`, then StorageError).

Failures never hang a caller: when the connection drops (the writer was killed or restarted),
every request in flight fails with StorageError (UNAVAILABLE; it may or may not have been
committed, and a retry is safe under the ordering rules), and while the writer is down each
submit fails at once with StorageError. The next submit after the writer is back reconnects.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from tessera.core.errors import StorageError
from tessera.core.schema import FeatureGroup, FeatureGroupDefinition, FeatureGroupUpdate
from tessera.server import writer_ipc as ipc
from tessera.server.compaction import CompactionResult
from tessera.server.store import Committed, Op

log = logging.getLogger(__name__)

# what a reply resolves its future with
_COMMIT, _COUNT, _STATS, _GROUP, _SEQ, _MARKS, _COMPACTION = (
    "commit", "count", "stats", "group", "seq", "marks", "compaction")


def _settle(fut: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass  # the caller cancelled it


class _Link:
    """One connection to the writer: its socket, the requests in flight on it, the plans sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: dict[int, tuple[Future[Any], str]] = {}
        self.sent_plans: set[int] = set()
        self.broken = False


class WriterClient:
    """Submits writes to the writer process at `path` (see the module docstring)."""

    def __init__(self, path: Path, max_in_flight: int = 1024, slot_timeout_s: float = 10.0,
                 connect_timeout_s: float = 2.0) -> None:
        self.path = path
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._slot_timeout_s = slot_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()  # the link, request ids, sends
        self._link: _Link | None = None
        self._ids = itertools.count(1)
        self._numbers = ipc.PlanNumbers()
        self._closed = False
        #: The highest commit seq acknowledged to this client (set before its future resolves).
        self.acked_seq = 0
        self.reconnects = 0

    # --- requests ------------------------------------------------------------------------------

    def submit(self, ops: list[Op]) -> Future[Committed]:
        """Send ops (PutOp / DeleteOp); the future resolves with Committed once they are durable,
        or with the StorageError that failed them."""
        return self._request(_COMMIT, lambda rid, link: ipc.encode_submit(
            rid, ops, self._numbers, link.sent_plans))

    def drop_group(self, group_id: int) -> Future[Committed]:
        return self._request(
            _COMMIT, lambda rid, _: ipc.frame(ipc.encoder.encode(ipc.DropGroup(rid, group_id))))

    def purge_expired(self, at_us: int, limit: int, timeout_s: float = 60.0) -> int:
        fut: Future[int] = self._request(_COUNT, lambda rid, _: ipc.frame(
            ipc.encoder.encode(ipc.PurgeExpired(rid, at_us, limit))))
        return fut.result(timeout=timeout_s)

    def stats(self, timeout_s: float = 10.0) -> dict[str, int]:
        """The writer's counters: commits, committed_ops, requests, seq."""
        fut: Future[dict[str, int]] = self._request(
            _STATS, lambda rid, _: ipc.frame(ipc.encoder.encode(ipc.Stats(rid))))
        return fut.result(timeout=timeout_s)

    # --- the registry (run by the writer process: server/registry_client.py uses these) --------

    def create_feature_group(
        self, definition: FeatureGroupDefinition
    ) -> Future[tuple[FeatureGroup, int]]:
        """Resolves with (the created group, the seq reads must reach to see it)."""
        return self._request(_GROUP, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.CreateFeatureGroup(rid, ipc.model_to_wire(definition)))))

    def update_feature_group(
        self, name: str, update: FeatureGroupUpdate
    ) -> Future[tuple[FeatureGroup, int]]:
        """Resolves with (the new version, its seq)."""
        return self._request(_GROUP, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.UpdateFeatureGroup(rid, ipc.name_to_wire(name), ipc.model_to_wire(update)))))

    def delete_feature_group(self, name: str) -> Future[int]:
        """Resolves with the seq after the delete (its records dropped, its history retired)."""
        return self._request(_SEQ, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.DeleteFeatureGroup(rid, ipc.name_to_wire(name)))))

    def quarantined_groups(self) -> Future[dict[str, str]]:
        return self._request(_MARKS, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.QuarantinedGroups(rid))))

    def compact_group(self, name: str, min_files: int) -> Future[CompactionResult]:
        """Compact the group's offline partitions in the writer process (its errors as the
        single process raises them: FeatureGroupNotFoundError, StorageError, ...)."""
        return self._request(_COMPACTION, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.CompactGroup(rid, ipc.name_to_wire(name), min_files))))

    # --- the outbox (the history process's flushes: server/history_process.py) ---------------

    def record_outbox_intent(self, first: int, last: int) -> Future[int]:
        """Resolves with the seq after the intent [first, last] is durable (ConflictError or
        InvalidRequestError when the marks say otherwise)."""
        return self._request(_SEQ, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.OutboxIntent(rid, first, last))))

    def trim_outbox(self, first: int, last: int) -> Future[int]:
        """Resolves with the seq after the range [first, last] is trimmed (or was already)."""
        return self._request(_SEQ, lambda rid, _: ipc.frame(ipc.encoder.encode(
            ipc.TrimOutbox(rid, first, last))))

    def _request(self, kind: str, encode: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        if not self._slots.acquire(timeout=self._slot_timeout_s):
            fut.set_exception(StorageError(
                "too many writes in flight to the writer process; retry later"))
            return fut
        fut.add_done_callback(lambda _: self._slots.release())
        try:
            with self._lock:
                link = self._connected()
                rid = next(self._ids)
                data = encode(rid, link)
                link.pending[rid] = (fut, kind)
                try:
                    link.sock.sendall(data)
                except OSError as exc:
                    self._break(link, exc)  # fails `fut` with the rest
        except StorageError as exc:
            _settle(fut, exc=exc)
        except Exception as exc:  # an op the writer does not take: the caller's bug
            _settle(fut, exc=exc)
        return fut

    # --- the connection ------------------------------------------------------------------------

    def _connected(self) -> _Link:
        """The live link, connecting when there is none (lock held)."""
        if self._closed:
            raise StorageError("the writer client is closed")
        link = self._link
        if link is not None and not link.broken:
            return link
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._connect_timeout_s)
        try:
            with ipc.reachable(self.path) as name:
                sock.connect(name)
        except OSError as exc:
            sock.close()
            raise StorageError(
                f"the writer process is not reachable at {self.path} ({exc.strerror or exc}); "
                "retry later") from exc
        sock.settimeout(None)
        link = _Link(sock)
        if self._link is not None:
            self.reconnects += 1
        self._link = link
        threading.Thread(target=self._receive, args=(link,), name="tessera-writer-client",
                         daemon=True).start()
        return link

    def _break(self, link: _Link, cause: BaseException | str) -> None:
        """Fail everything in flight on `link` (lock held)."""
        if link.broken:
            return
        link.broken = True
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_RDWR)
        err = StorageError(f"the connection to the writer process was lost ({cause}); the "
                           "write may or may not have been committed: retry it")
        pending, link.pending = link.pending, {}
        for fut, _ in pending.values():
            _settle(fut, exc=err)

    def _receive(self, link: _Link) -> None:
        cause: BaseException | str = "closed by the writer"
        try:
            for body in ipc.FrameReader(link.sock).frames():
                reply = ipc.reply_decoder.decode(body)
                with self._lock:
                    entry = link.pending.pop(reply.id, None)
                if entry is not None:
                    self._resolve(*entry, reply)
        except (OSError, msgspec.DecodeError) as exc:
            cause = exc
        finally:
            with self._lock:
                self._break(link, cause)
            link.sock.close()

    def _resolve(self, fut: Future[Any], kind: str, reply: ipc.Reply) -> None:
        if reply.error is not None:
            _settle(fut, exc=ipc.error_from_wire(reply.error))
            return
        if reply.seq > self.acked_seq:  # before the future resolves: read-your-writes
            self.acked_seq = reply.seq
        if kind is _COMMIT:
            _settle(fut, Committed(ipc.results_from_wire(reply.results), reply.seq))
        elif kind is _STATS:
            _settle(fut, reply.stats)
        elif kind is _COMPACTION:
            try:
                _settle(fut, CompactionResult(**reply.stats))
            except TypeError as exc:  # a writer of another version
                _settle(fut, exc=StorageError(
                    f"the writer process answered an unreadable compaction result: {exc}"))
        elif kind is _GROUP:
            try:
                group = ipc.model_from_wire(FeatureGroup, reply.group)
            except (ValueError, ValidationError) as exc:  # a writer of another version
                _settle(fut, exc=StorageError(
                    f"the writer process answered an unreadable group: {exc}"))
                return
            _settle(fut, (group, reply.seq))
        elif kind is _SEQ:
            _settle(fut, reply.seq)
        elif kind is _MARKS:
            _settle(fut, {ipc.name_from_wire(n): ipc.name_from_wire(r)
                          for n, r in reply.marks.items()})
        else:
            _settle(fut, reply.count)

    def close(self) -> None:
        """Fail what is in flight and close the connection (again: a no-op)."""
        with self._lock:
            self._closed = True
            if self._link is not None:
                self._break(self._link, "the client closed")

