"""PutRecords in bulk: a whole request validated and encoded from its bytes, in compiled passes.

`scan` reads the request's top level (core/record_scan.py `scan_request`: the group name, the
ttl, where each record and source lies); `encode` validates every record against the group's
schema (`scan_records`: the checks `validate_record` makes, strictly, since protobuf never
parsed these bytes) and builds the `PutBatch` the store commits (server/batch_kernels.py
`encode_puts`: keys, payloads as sent, history rows).

A group with aggregations (and an online store) also gets the records' aggregation inputs in
columns (`batch_aggregates`: core/aggregation/record_inputs.py's compiled scan of the payloads),
which the store's commit folds as it folds a `PutOp`'s event; the writer process rebuilds them
from the payloads it receives (server/writer_ipc.py), so they never cross its socket.

Only the common case takes this path: every record valid, every value already in its schema's
form. Anything else (`None` from `scan` or `encode`: malformed bytes, a value to normalize, any
error, a ttl out of range, sources that do not match the records, an aggregation input the scan
cannot read) goes the per-record way (`validate_record`, `put_op`), which decides with its exact
messages; so both paths accept the same requests and write the same rows, and an error reads the
same whichever path met it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tessera.core import eventtime
from tessera.core import records as core_records
from tessera.core.aggregation.inputs import AggregateColumns
from tessera.core.aggregation.plan import AggregationPlan
from tessera.core.aggregation.record_inputs import RecordInputsError, aggregate_columns
from tessera.core.errors import InvalidRequestError
from tessera.core.keys import MAX_RECORD_ID_BYTES, group_prefix
from tessera.core.records import MAX_RECORD_BYTES
from tessera.core.schema import MAX_TTL_S, CompiledSchema
from tessera.server import batch_kernels as bk
from tessera.server.store import PutBatch


@dataclass(frozen=True, slots=True)
class RequestScan:
    """The top level of a PutRecordsRequest (`scan`)."""

    group_name: str
    ttl_s: float | None
    record_starts: np.ndarray
    record_ends: np.ndarray
    source_starts: np.ndarray
    source_ends: np.ndarray

    def __len__(self) -> int:
        return int(self.record_starts.shape[0])


def scan(data: bytes) -> RequestScan | None:
    """The request's top level, or None (the per-record path decides: no compiled validation
    here, or bytes protobuf's parser might read otherwise)."""
    if not core_records.load_compiled_validation():
        return None
    from tessera.core import record_scan

    status, name_s, name_l, has_ttl, ttl, rs, re_, ss, se = record_scan.scan_request(data)
    if status != record_scan.OK:
        return None
    name = data[name_s : name_s + name_l].decode() if name_s >= 0 else ""
    return RequestScan(name, ttl if has_ttl else None, rs, re_, ss, se)


def encode(
    schema: CompiledSchema, data: bytes, request: RequestScan, api_invocation_time_us: int
) -> PutBatch | None:
    """The request's puts as one PutBatch when every record is the common case (the module
    docstring); None otherwise."""
    from tessera.core import record_scan

    n = len(request)
    if n == 0:
        return None
    if request.source_starts.shape[0] not in (0, n):
        return None  # the per-record path names the mismatch
    ttl_s = request.ttl_s if request.ttl_s is not None else schema.default_ttl_s
    if ttl_s is not None and not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_TTL_S):
        return None
    table = core_records._table(schema)
    status, _, id_a, id_b, et_us, et_a, et_b = record_scan.scan_records(
        data, request.record_starts, request.record_ends, table.names, table.name_offsets,
        table.fields, table.checks, table.vector_bytes, table.id_col, table.et_col,
        table.et_is_float, MAX_RECORD_BYTES, MAX_RECORD_ID_BYTES, eventtime.MAX_EVENT_TIME_S,
    )
    if status != record_scan.OK:
        return None
    if not table.et_is_float:  # ISO-8601 strings: Python's parser, as the per-record path
        try:
            et_us = np.array([
                eventtime.from_iso(data[a : a + b].decode(), "")
                for a, b in zip(et_a.tolist(), et_b.tolist(), strict=True)
            ], np.int64)
        except InvalidRequestError:
            return None
    expires = None
    if ttl_s is not None:
        expires = bk.readonly(et_us + round(ttl_s * eventtime.US_PER_S))
    buf = np.frombuffer(data, np.uint8)
    keys, key_off, payloads, pay_off, rows, row_off = bk.encode_puts(
        buf, bk.readonly(request.record_starts), bk.readonly(request.record_ends),
        bk.readonly(id_a), bk.readonly(id_b), table.id_is_int, schema.group_id,
        bk.readonly(et_us), expires if expires is not None else _NONE, expires is not None,
        api_invocation_time_us, bk.readonly(request.source_starts),
        bk.readonly(request.source_ends), schema.offline,
    )
    return assemble(schema, keys, key_off, payloads, pay_off, bk.readonly(et_us), expires, rows,
                    row_off)


def assemble(
    schema: CompiledSchema, keys: np.ndarray, key_off: np.ndarray, payloads: np.ndarray,
    pay_off: np.ndarray, event_time_us: np.ndarray, expires: np.ndarray | None,
    rows: np.ndarray, row_off: np.ndarray,
) -> PutBatch | None:
    """The PutBatch of `batch_kernels.encode_puts`' columns (keys, payloads, history rows) for
    `schema`'s group, with its aggregation inputs; None when the compiled scan cannot read an
    aggregation input (the records then go the per-record way)."""
    keys_blob, payloads_blob = keys.tobytes(), payloads.tobytes()
    key_off, pay_off = bk.readonly(key_off), bk.readonly(pay_off)
    aggregates = None
    if schema.aggregations is not None and schema.online:
        try:
            aggregates = batch_aggregates(schema.group_name, schema.aggregations, keys_blob,
                                          key_off, payloads_blob, pay_off)
        except RecordInputsError:
            return None
    return PutBatch(
        schema.group_id, schema.online, keys_blob, key_off, payloads_blob, pay_off,
        event_time_us, expires, rows.tobytes() if schema.offline else None,
        bk.readonly(row_off) if schema.offline else None, aggregates,
    )


def batch_aggregates(
    group_name: str, plan: AggregationPlan, keys: bytes, key_offsets: np.ndarray,
    payloads: bytes, payload_offsets: np.ndarray,
) -> AggregateColumns:
    """A batch's aggregation inputs (a `PutBatch`'s `aggregates`) from its keys and payloads:
    what `validate_record` gives each record (its `aggregation`), in columns. Raises
    RecordInputsError for a payload the compiled scan cannot read or an input not in its
    schema's form (the per-record path decides those)."""
    bounds = key_offsets.tolist()
    starts = [a + _GROUP_PREFIX_BYTES for a in bounds[:-1]]
    try:
        record_ids = [keys[a:b].decode() for a, b in zip(starts, bounds[1:], strict=True)]
    except UnicodeDecodeError as exc:
        raise RecordInputsError(f"a record key is not UTF-8: {exc}") from exc
    return aggregate_columns(group_name, plan, record_ids, payloads, payload_offsets)


_GROUP_PREFIX_BYTES = len(group_prefix(0))


_NONE = bk.readonly(np.zeros(0, np.int64))

