"""Turning validated writes into store operations: shared by the gRPC servicer and the embedded
Kafka ingest sink, so both write the online record and its history row the same way."""

from __future__ import annotations

from tessera.core import eventtime
from tessera.core.errors import PreconditionFailedError
from tessera.core.keys import record_key
from tessera.core.records import ValidatedRecord
from tessera.core.schema import CompiledSchema
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server import history, metrics
from tessera.server.aggregates import AggregateEvent
from tessera.server.store import DeleteOp, OpResult, PutOp


def put_op(
    schema: CompiledSchema, rec: ValidatedRecord, api_invocation_time_us: int, source: str
) -> PutOp:
    """The store operation of a validated put, with its history row when the group keeps one."""
    gid = schema.group_id
    row = None
    if schema.offline:
        row = history.encode(gid, api_invocation_time_us, rec.event_time_us, rec.expires_at_us,
                             False, source, rec.payload)
    aggregate = None
    if rec.aggregation is not None and schema.aggregations is not None:
        aggregate = AggregateEvent(schema.group_name, schema.aggregations, rec.aggregation)
    return PutOp(gid, record_key(gid, rec.record_id), rec.event_time_us, rec.expires_at_us,
                 rec.payload, row, schema.online, aggregate)


def delete_op(
    schema: CompiledSchema, record_id: str, event_time_us: int, hard: bool,
    api_invocation_time_us: int, source: str = "",
) -> DeleteOp:
    """The store operation of a delete; its history row is a delete marker carrying the record
    identifier and the event time."""
    gid = schema.group_id
    row = None
    if schema.offline:
        marker = pb.Record()
        fv = marker.features.add(feature_name=schema.record_identifier.name)
        if schema.record_identifier.oneof == "int_value":
            fv.int_value = int(record_id)
        else:
            fv.string_value = record_id
        et = marker.features.add(feature_name=schema.event_time.name)
        if schema.event_time.oneof == "float_value":
            et.float_value = event_time_us / eventtime.US_PER_S
        else:
            et.string_value = eventtime.to_iso(event_time_us)
        row = history.encode(gid, api_invocation_time_us, event_time_us, None, True, source,
                             marker.SerializeToString())
    return DeleteOp(gid, record_key(gid, record_id), event_time_us, hard, row, schema.online)


def no_online_store(schema: CompiledSchema) -> PreconditionFailedError:
    return PreconditionFailedError(
        f"feature group '{schema.group_name}' has no online store "
        "(online_store_config.enable_online_store is false); read its history offline"
    )


def count_writes(schema: CompiledSchema, results: list[OpResult]) -> int:
    applied = sum(1 for r in results if r is True)
    stale = len(results) - applied
    if applied:
        metrics.RECORDS_WRITTEN.labels(schema.group_name, "applied").inc(applied)
    if stale:
        metrics.RECORDS_WRITTEN.labels(schema.group_name, "stale").inc(stale)
    return stale
