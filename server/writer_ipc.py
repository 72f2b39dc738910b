"""The wire protocol between serving processes and the writer process (server/writer_process.py).

Frames: a 4-byte little-endian length, then one msgpack message (msgspec). A client sends
requests, each with its own id, and may have many in flight on one connection; the writer
answers each with a `Reply` carrying the same id, in commit order (not necessarily request
order across commits).

Ops travel as the store's own dataclasses (server/store.py): msgspec decodes `PutOp` and
`DeleteOp` straight into them in C, so the writer does not build them again in Python (a frozen
dataclass costs ~1.5-2 us to construct from Python on this machine, more than the wire itself).
Puts and deletes ride in two lists, with `order` saying how they interleave when a request mixes
them. A `PutBatch` (a PutRecords request's puts in columns) crosses as one `WireBatch`: its
buffers and its arrays' bytes, no object per record (a third list, a third kind in `order`).
A put's aggregation event is sent apart: its group's `AggregationPlan` once per connection
(`WirePlan`, numbered by the client), then per put only the plan number and the inputs. A
batch's aggregation inputs do not cross at all: the `WireBatch` names its plan, and the writer
rebuilds the columns from the keys and payloads it receives anyway (server/put_batch.py
`batch_aggregates`, one compiled scan), instead of every input value and key text crossing a
second time.

`CompactGroup` runs an offline compaction (`POST /v1/feature-groups/{name}/compact` answered by
a serving process) where the flusher and its lock live; the reply carries the result's counts.

Registry mutations (CreateFeatureGroup, UpdateFeatureGroup, DeleteFeatureGroup) carry the
pydantic models as JSON, and their replies the group as JSON and the primary's seq after the
change: the caller waits for its secondary to reach it, then reloads its registry view.

`OutboxIntent` and `TrimOutbox` come from the history process: the two writes of a flush that
touch RocksDB (server/outbox.py), made by the writer, the only process writing it.

Errors cross as (class name, message) and are raised again on the client side with the same
class (`error_from_wire`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
from pydantic import BaseModel

from tessera.core.aggregation.inputs import AggregationInput
from tessera.core.aggregation.plan import (
    AggregationPlan,
    CompiledAggregation,
    I64Array,
    StreamPlan,
)
from tessera.core.errors import TesseraError
from tessera.server.aggregates import AggregateEvent
from tessera.server.put_batch import batch_aggregates
from tessera.server.store import DeleteOp, Op, OpResult, PutBatch, PutOp

M = TypeVar("M", bound=BaseModel)

SOCKET_NAME = "writer.sock"
_LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 30
_PUT, _DELETE, _BATCH = 0, 1, 2


def socket_path(data_dir: Path) -> Path:
    """Where the writer process of a data directory listens."""
    return data_dir / SOCKET_NAME


# --- messages ------------------------------------------------------------------------------------


class WireStream(msgspec.Struct, array_like=True):
    stream_id: int
    key: str | None
    sources: list[str]
    aggregations: list[CompiledAggregation]
    tile_us: int
    lateness_us: int
    window_tiles: list[int]
    agg_func: list[int]
    agg_source: list[int]
    agg_window: list[int]
    agg_n: list[int]
    list_offsets: list[int]
    recent_caps: list[int]


class WirePlan(msgspec.Struct, array_like=True):
    """A group's aggregation plan, sent once per connection before the first put using it."""

    plan_no: int
    group_name: str
    tile_us: int
    lateness_us: int
    streams: list[WireStream]
    names: list[str]  # the aggregations in declaration order


class WireAggregate(msgspec.Struct, array_like=True):
    """The aggregation event of the put at `index` of the request's puts."""

    index: int
    plan_no: int
    keys: list[str | None]
    values: list[list[float]]


class WireBatch(msgspec.Struct, array_like=True):
    """A `PutBatch`: its buffers as they are, its arrays as their int64 bytes (native order:
    both ends run on one host), so that a batch of any size crosses as one object."""

    group_id: int
    online: bool
    keys: bytes
    key_offsets: bytes
    payloads: bytes
    payload_offsets: bytes
    event_time_us: bytes
    expires_at_us: bytes | None
    history: bytes | None
    history_offsets: bytes | None
    #: The plan (a `WirePlan`'s number) the writer rebuilds the batch's aggregation inputs
    #: with; 0: the batch has none.
    plan_no: int = 0


class Submit(msgspec.Struct, array_like=True, tag=1):
    id: int
    puts: list[PutOp]
    deletes: list[DeleteOp]
    #: One byte per op (0 put, 1 delete, 2 batch) when the request mixes them; None: puts, then
    #: deletes, then batches.
    order: bytes | None
    aggregates: list[WireAggregate]
    plans: list[WirePlan]
    batches: list[WireBatch] = []


class DropGroup(msgspec.Struct, array_like=True, tag=2):
    id: int
    group_id: int


class PurgeExpired(msgspec.Struct, array_like=True, tag=3):
    id: int
    at_us: int
    limit: int


class Stats(msgspec.Struct, array_like=True, tag=4):
    id: int


class CreateFeatureGroup(msgspec.Struct, array_like=True, tag=5):
    """Reply: `group` (the created FeatureGroup, `model_to_wire`) and `seq` (reads at it see
    it)."""

    id: int
    definition: bytes  # FeatureGroupDefinition, `model_to_wire`


class UpdateFeatureGroup(msgspec.Struct, array_like=True, tag=6):
    """Reply: `group` (the new version) and `seq`."""

    id: int
    name: bytes  # `name_to_wire`
    update: bytes  # FeatureGroupUpdate, `model_to_wire`


class DeleteFeatureGroup(msgspec.Struct, array_like=True, tag=7):
    """Reply: `seq`; reads at it see the group gone and its records dropped."""

    id: int
    name: bytes  # `name_to_wire`


class QuarantinedGroups(msgspec.Struct, array_like=True, tag=8):
    """Reply: `marks`, the writer registry's quarantined groups with their reasons (it also
    holds those it found at start-up, e.g. an offline folder it could not publish)."""

    id: int


class CompactGroup(msgspec.Struct, array_like=True, tag=9):
    """Compact the group's offline partitions holding at least `min_files` files (validated by
    the sender: 2..10000), in the writer process, where the flusher's lock is. Reply: `stats`,
    the `CompactionResult` fields."""

    id: int
    name: bytes  # `name_to_wire`
    min_files: int


class OutboxIntent(msgspec.Struct, array_like=True, tag=10):
    """The history process (server/history_process.py) is about to write the Parquet files of
    the outbox range [first, last]: record it as the flush's intent (synced), checked against
    the marks (server/outbox.py `OutboxMarks`). Reply: `seq`, the primary's after the write."""

    id: int
    first: int
    last: int


class TrimOutbox(msgspec.Struct, array_like=True, tag=11):
    """The files of the intent [first, last] are written: delete the range from the outbox,
    move the flushed mark, clear the intent (one synced batch). Reply: `seq`."""

    id: int
    first: int
    last: int


Request = (Submit | DropGroup | PurgeExpired | Stats | CreateFeatureGroup | UpdateFeatureGroup
           | DeleteFeatureGroup | QuarantinedGroups | CompactGroup | OutboxIntent | TrimOutbox)


class WireError(msgspec.Struct, array_like=True):
    cls: str
    message: str


class Reply(msgspec.Struct, array_like=True):
    id: int
    #: The primary's sequence number after the commit (reads reflecting it see the writes).
    seq: int = 0
    results: list[bool | WireError] = []
    #: The whole request failed (nothing of it was written).
    error: WireError | None = None
    #: PurgeExpired: the index entries done; Stats: the counters; CompactGroup: its result.
    count: int = 0
    stats: dict[str, int] = {}
    #: CreateFeatureGroup / UpdateFeatureGroup: the group as JSON.
    group: bytes = b""
    #: QuarantinedGroups: name -> reason (both `name_to_wire`).
    marks: dict[bytes, bytes] = {}


request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()


# --- frames --------------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Reads length-prefixed frames from a socket, buffering partial reads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def frames(self) -> Iterator[memoryview]:
        """Each complete frame's body, until the peer closes (or the socket fails: OSError)."""
        while True:
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                return
            self._buf += chunk
            start = 0
            buf = self._buf
            while len(buf) - start >= _LENGTH.size:
                (n,) = _LENGTH.unpack_from(buf, start)
                if n > MAX_FRAME_BYTES:
                    raise OSError(f"writer IPC frame of {n} bytes exceeds {MAX_FRAME_BYTES}")
                end = start + _LENGTH.size + n
                if end > len(buf):
                    break
                # bytes(): the view must not pin the buffer we are about to resize
                yield memoryview(bytes(buf[start + _LENGTH.size : end]))
                start = end
            if start:
                del self._buf[:start]


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for `path` short enough for a Unix socket address (108 bytes): the path itself,
    or the path through /proc/self/fd of its directory when it is longer."""
    text = str(path)
    if len(text.encode()) < 100:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# --- ops -----------------------------------------------------------------------------------------


def plan_to_wire(plan_no: int, group_name: str, plan: AggregationPlan) -> WirePlan:
    streams = [
        WireStream(
            s.stream_id, s.key, list(s.sources), list(s.aggregations), s.tile_us,
            s.lateness_us, s.window_tiles.tolist(), s.agg_func.tolist(), s.agg_source.tolist(),
            s.agg_window.tolist(), s.agg_n.tolist(), s.list_offsets.tolist(),
            s.recent_caps.tolist(),
        )
        for s in plan.streams
    ]
    return WirePlan(plan_no, group_name, plan.tile_us, plan.lateness_us, streams,
                    list(plan.aggregations))


def _array(values: list[int]) -> I64Array:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    arr.flags.writeable = False
    return arr


def plan_from_wire(wire: WirePlan) -> AggregationPlan:
    streams = tuple(
        StreamPlan(
            stream_id=s.stream_id, key=s.key, sources=tuple(s.sources),
            aggregations=tuple(s.aggregations), tile_us=s.tile_us, lateness_us=s.lateness_us,
            window_tiles=_array(s.window_tiles), agg_func=_array(s.agg_func),
            agg_source=_array(s.agg_source), agg_window=_array(s.agg_window),
            agg_n=_array(s.agg_n), list_offsets=_array(s.list_offsets),
            recent_caps=_array(s.recent_caps),
        )
        for s in wire.streams
    )
    by_name = {a.name: a for s in streams for a in s.aggregations}
    return AggregationPlan(wire.tile_us, wire.lateness_us, streams,
                           {name: by_name[name] for name in wire.names})


class PlanNumbers:
    """The client's numbering of the plans it has sent (plans are per schema version: few)."""

    def __init__(self) -> None:
        #: id(plan) -> (plan kept alive so its id is not reused, group name, number)
        self._numbers: dict[int, tuple[AggregationPlan, str, int]] = {}

    def number(self, event: AggregateEvent) -> tuple[int, AggregationPlan, str]:
        return self.number_plan(event.group_name, event.plan)

    def number_plan(
        self, group_name: str, plan: AggregationPlan
    ) -> tuple[int, AggregationPlan, str]:
        known = self._numbers.get(id(plan))
        if known is None or known[1] != group_name:
            known = (plan, group_name, len(self._numbers) + 1)
            self._numbers[id(plan)] = known
        return known[2], known[0], known[1]


def encode_submit(
    request_id: int, ops: list[Op], numbers: PlanNumbers, sent_plans: set[int]
) -> bytes:
    """The framed Submit of `ops` (PutOp and DeleteOp only); plans not yet in `sent_plans`
    (this connection's) are included and added to it."""
    puts: list[PutOp] = []
    deletes: list[DeleteOp] = []
    batches: list[WireBatch] = []
    aggregates: list[WireAggregate] = []
    plans: list[WirePlan] = []
    kinds = bytearray()

    def plan_number(group_name: str, plan: AggregationPlan) -> int:
        plan_no, plan, group_name = numbers.number_plan(group_name, plan)
        if plan_no not in sent_plans:
            plans.append(plan_to_wire(plan_no, group_name, plan))
            sent_plans.add(plan_no)
        return plan_no

    for op in ops:
        if isinstance(op, PutBatch):
            wire = batch_to_wire(op)
            if op.aggregates is not None:
                wire.plan_no = plan_number(op.aggregates.group_name, op.aggregates.plan)
            batches.append(wire)
            kinds.append(_BATCH)
        elif isinstance(op, PutOp):
            if op.aggregate is not None:
                plan_no = plan_number(op.aggregate.group_name, op.aggregate.plan)
                inputs = op.aggregate.inputs
                aggregates.append(WireAggregate(len(puts), plan_no, list(inputs.keys),
                                                [list(v) for v in inputs.values]))
                op = replace(op, aggregate=None)
            puts.append(op)
            kinds.append(_PUT)
        elif isinstance(op, DeleteOp):
            deletes.append(op)
            kinds.append(_DELETE)
        else:
            raise TypeError("only PutOp and DeleteOp (one by one, or puts as a PutBatch) are "
                            f"submitted to the writer; got {op!r}")
    in_order = kinds == bytearray(sorted(kinds))  # puts, then deletes, then batches
    msg = Submit(request_id, puts, deletes, None if in_order else bytes(kinds), aggregates,
                 plans, batches)
    return frame(encoder.encode(msg))


def batch_to_wire(batch: PutBatch) -> WireBatch:
    return WireBatch(
        batch.group_id, batch.online, batch.keys, batch.key_offsets.tobytes(), batch.payloads,
        batch.payload_offsets.tobytes(), batch.event_time_us.tobytes(),
        None if batch.expires_at_us is None else batch.expires_at_us.tobytes(), batch.history,
        None if batch.history_offsets is None else batch.history_offsets.tobytes())


def _i64(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, np.int64)  # read-only: the kernels' one signature


def batch_from_wire(
    wire: WireBatch, plans: dict[int, tuple[str, AggregationPlan]] | None = None
) -> PutBatch:
    """The PutBatch, with its aggregation inputs rebuilt when it names a plan (of `plans`, the
    connection's table); ValueError when its arrays disagree or its plan is unknown (a client
    bug), RecordInputsError when its payloads do not give the inputs (the client checked)."""
    key_offsets, payload_offsets = _i64(wire.key_offsets), _i64(wire.payload_offsets)
    event_time_us = _i64(wire.event_time_us)
    expires = None if wire.expires_at_us is None else _i64(wire.expires_at_us)
    history_offsets = None if wire.history_offsets is None else _i64(wire.history_offsets)
    n = event_time_us.shape[0]
    for offsets, blob in ((key_offsets, wire.keys), (payload_offsets, wire.payloads),
                          (history_offsets, wire.history)):
        if offsets is None:
            continue
        if (offsets.shape[0] != n + 1 or blob is None or offsets[0] != 0
                or offsets[-1] != len(blob) or (np.diff(offsets) < 0).any()):
            raise ValueError("a PutBatch whose offsets do not delimit its buffers")
    if (expires is not None and expires.shape[0] != n) or (
            (wire.history is None) != (history_offsets is None)):
        raise ValueError("a PutBatch whose columns disagree")
    aggregates = None
    if wire.plan_no:
        known = (plans or {}).get(wire.plan_no)
        if known is None:
            raise ValueError(f"a PutBatch naming plan {wire.plan_no}, never sent")
        aggregates = batch_aggregates(known[0], known[1], wire.keys, key_offsets, wire.payloads,
                                      payload_offsets)
    return PutBatch(wire.group_id, wire.online, wire.keys, key_offsets, wire.payloads,
                    payload_offsets, event_time_us, expires, wire.history, history_offsets,
                    aggregates)


def decode_ops(msg: Submit, plans: dict[int, tuple[str, AggregationPlan]]) -> list[Op]:
    """The ops of a Submit, in their order; `plans` is the connection's plan table (updated)."""
    for wire in msg.plans:
        plans[wire.plan_no] = (wire.group_name, plan_from_wire(wire))
    puts: list[PutOp] = msg.puts
    if msg.aggregates:
        puts = list(puts)
        for agg in msg.aggregates:
            group_name, plan = plans[agg.plan_no]
            inputs = AggregationInput(tuple(agg.keys), tuple(tuple(v) for v in agg.values))
            puts[agg.index] = replace(puts[agg.index], aggregate=AggregateEvent(
                group_name, plan, inputs))
    batches = [batch_from_wire(b, plans) for b in msg.batches]
    if not msg.deletes and not batches:
        return list(puts)
    if msg.order is None:
        return [*puts, *msg.deletes, *batches]
    kinds: tuple[Iterator[Op], ...] = (iter(puts), iter(msg.deletes), iter(batches))
    return [next(kinds[kind]) for kind in msg.order]


# --- registry payloads --------------------------------------------------------------------------
# Names and texts may hold lone surrogates (a JSON body can carry one; a group stored under an
# older rule can be named with one): msgpack strings and pydantic's JSON refuse them, so names
# cross as UTF-8 with surrogatepass, and models as JSON text with surrogates escaped (\ud800).


def name_to_wire(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


def name_from_wire(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def model_to_wire(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(mode="json")).encode()


def model_from_wire(cls: type[M], raw: bytes) -> M:
    """The model; pydantic's ValidationError when it does not validate."""
    return cls.model_validate(json.loads(raw))


# --- results and errors --------------------------------------------------------------------------


def error_to_wire(exc: BaseException) -> WireError:
    """A lone surrogate in the message (quoting a name sent in JSON) is escaped as the HTTP
    edge escapes it (`\\ud800`): msgpack strings cannot carry one."""
    if isinstance(exc, TesseraError):
        message = exc.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return WireError(type(exc).__name__, message)
    text = repr(exc).encode("utf-8", "backslashreplace").decode("utf-8")
    return WireError("StorageError", f"the writer process failed: {text}")


def results_to_wire(results: list[OpResult]) -> list[bool | WireError]:
    return [r if isinstance(r, bool) else error_to_wire(r) for r in results]


def _error_classes() -> dict[str, type[TesseraError]]:
    found: dict[str, type[TesseraError]] = {}
    todo: list[type[TesseraError]] = [TesseraError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def error_from_wire(wire: WireError) -> TesseraError:
    """The error of the same class and message (a subclass with its own constructor, such as
    FeatureGroupNotFoundError, is built without it: only the message crosses)."""
    cls = _error_classes().get(wire.cls, TesseraError)
    err = cls.__new__(cls)
    TesseraError.__init__(err, wire.message)
    return err


def results_from_wire(results: list[bool | WireError]) -> list[OpResult]:
    return [r if isinstance(r, bool) else error_from_wire(r) for r in results]
