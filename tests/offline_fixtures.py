"""Offline store files laid out as the server's Parquet writer lays them out
(`tessera.core.offline_layout`), so the readers' tests need no server."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tessera.core import eventtime
from tessera.core import offline_layout as layout
from tessera.core.aggregation.spec import AggregationConfig, AggregationDefinition
from tessera.core.schema import (
    FeatureDefinition,
    FeatureGroup,
    FeatureGroupDefinition,
    OnlineStoreConfig,
    ScalarType,
    TtlDuration,
)

#: Default write times: BASE_WRITE_US + seq milliseconds, so write order follows seq.
BASE_WRITE_US = 1_800_000_000_000_000
_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
_US_PER_DAY = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_group(
    name: str,
    features: Mapping[str, str],
    *,
    record_id: str = "id",
    event_time: str = "ts",
    ttl_s: int | None = None,
    group_id: int = 1,
    version: int = 1,
    aggregations: Sequence[AggregationDefinition] = (),
    aggregation_config: AggregationConfig | None = None,
) -> FeatureGroup:
    """A feature group; `features` maps names to type text ('Integral', 'List[String]', ...) and
    must include the record identifier and the event time feature."""
    definition = FeatureGroupDefinition(
        feature_group_name=name,
        record_identifier_feature_name=record_id,
        event_time_feature_name=event_time,
        feature_definitions=[FeatureDefinition.of(n, t) for n, t in features.items()],
        online_store_config=OnlineStoreConfig(
            ttl_duration=TtlDuration.of_seconds(ttl_s) if ttl_s else None
        ),
        aggregations=list(aggregations),
        aggregation_config=aggregation_config,
    )
    definition.check()
    return FeatureGroup(
        definition=definition,
        feature_group_id=group_id,
        version=version,
        creation_time=1.0,
        last_modified_time=1.0,
    )


def to_us(value: int | datetime | None) -> int | None:
    """A time given as epoch microseconds or a datetime (naive = UTC), as microseconds."""
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1)


def write_history(
    root: Path,
    group: FeatureGroup,
    rows: Sequence[Mapping[str, Any]],
    *,
    rows_per_file: int | None = None,
    seq_order: bool = True,
) -> list[dict[str, Any]]:
    """Append `rows` to the group's offline history under `root`; the rows as written (every
    column filled in, times in microseconds), for `reference_point_in_time`.

    A row maps feature names to values (missing features are null) and may set the system
    columns: `tessera_event_time` (microseconds or datetime; default: parsed from the event time
    feature, which is filled from it when missing), `tessera_seq` (default: after the highest seq
    already on disk, in row order), `write_time` (default BASE_WRITE_US + seq ms),
    `api_invocation_time`, `is_deleted` (a delete keeps only the id and event time),
    `tessera_expires_at` (default: event time + the group's TTL, or null), `tessera_source`.
    Files are split by event date, then into runs of `rows_per_file` in seq order (or, without
    `seq_order`, in the order given, as a reader must not rely on), and named
    part-<first seq>-<last seq>.parquet. `_group.json` is (re)written from `group`.
    """
    d = group.definition
    folder = layout.group_dir(root, d.feature_group_name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layout.GROUP_FILE).write_text(group.model_dump_json(indent=2))
    types = {fd.feature_name: fd.type() for fd in d.feature_definitions}
    ttl = d.online_store_config.ttl_duration
    next_seq = _max_seq(folder) + 1
    full: list[dict[str, Any]] = []
    for row in rows:
        r = dict(row)
        seq = r.setdefault(layout.SEQ, next_seq)
        next_seq = max(next_seq, seq + 1)
        event_us = to_us(r.get(layout.EVENT_TIME))
        if event_us is None:
            event_us = _parse_event_time(
                r[d.event_time_feature_name], types[d.event_time_feature_name].scalar
            )
        if r.get(d.event_time_feature_name) is None:
            et_scalar = types[d.event_time_feature_name].scalar
            r[d.event_time_feature_name] = (
                event_us / 1e6 if et_scalar is ScalarType.FRACTIONAL else eventtime.to_iso(event_us)
            )
        r[layout.EVENT_TIME] = event_us
        write_us = to_us(r.get(layout.WRITE_TIME))
        if write_us is None:
            write_us = BASE_WRITE_US + seq * 1000
        r[layout.WRITE_TIME] = write_us
        api_us = to_us(r.get(layout.API_INVOCATION_TIME))
        r[layout.API_INVOCATION_TIME] = write_us if api_us is None else api_us
        r[layout.IS_DELETED] = bool(r.get(layout.IS_DELETED, False))
        if layout.EXPIRES_AT in r:
            r[layout.EXPIRES_AT] = to_us(r[layout.EXPIRES_AT])
        else:
            r[layout.EXPIRES_AT] = event_us + ttl.seconds * 1_000_000 if ttl else None
        if r[layout.IS_DELETED]:
            keep = {d.record_identifier_feature_name, d.event_time_feature_name}
            for name in types:
                if name not in keep:
                    r[name] = None
        full.append(r)

    by_date: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in full:
        day = r[layout.EVENT_TIME] // _US_PER_DAY
        by_date[(_EPOCH + timedelta(days=day)).date().isoformat()].append(r)
    schema = layout.arrow_schema(group)
    for date, part in sorted(by_date.items()):
        if seq_order:
            part.sort(key=lambda r: r[layout.SEQ])
        size = rows_per_file or len(part)
        for start in range(0, len(part), size):
            chunk = part[start : start + size]
            table = _table(schema, chunk)
            target = layout.partition_dir(root, d.feature_group_name, date)
            target.mkdir(parents=True, exist_ok=True)
            seqs = [r[layout.SEQ] for r in chunk]
            path = target / layout.part_file_name(min(seqs), max(seqs))
            pq.write_table(table, path)
    return full


def reference_point_in_time(
    history: Sequence[Mapping[str, Any]],
    group: FeatureGroup,
    features: Sequence[str],
    spine: Sequence[tuple[Any, int | None]],
    *,
    as_of_us: int | None = None,
) -> list[dict[str, Any]]:
    """The point-in-time join by brute force, for checking the builder: for each spine
    (record id, time in microseconds), the group's features as of that time.

    The row used is the latest by (event time, seq) with event time <= t (and write time <=
    as_of); it reads as all nulls when it is a delete or has expired at t (expires at
    tessera_expires_at, null: never; valid while t < expiry). The group's current TTL plays no
    part: a row's expiry was fixed when it was written, as the online record's was.
    """
    d = group.definition
    out = []
    for record_id, t in spine:
        best: Mapping[str, Any] | None = None
        for r in history if record_id is not None and t is not None else ():
            if r[d.record_identifier_feature_name] != record_id or r[layout.EVENT_TIME] > t:
                continue
            if as_of_us is not None and r[layout.WRITE_TIME] > as_of_us:
                continue
            if best is None or (r[layout.EVENT_TIME], r[layout.SEQ]) > (
                best[layout.EVENT_TIME],
                best[layout.SEQ],
            ):
                best = r
        live = best is not None and not best[layout.IS_DELETED]
        if best is not None and live:
            expires = best[layout.EXPIRES_AT]
            live = expires is None or t < expires
        out.append({f: best.get(f) if best is not None and live else None for f in features})
    return out


def _table(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Table:
    ts = pa.timestamp("us", tz="UTC")
    arrays = []
    for field in schema:
        values = [r.get(field.name) for r in rows]
        if field.type == ts:
            arrays.append(pa.array(values, pa.int64()).cast(ts))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _parse_event_time(value: Any, scalar: ScalarType) -> int:  # noqa: ANN401
    if scalar is ScalarType.STRING:
        return eventtime.parse(str(value), "event_time")
    return eventtime.from_epoch_s(float(value), "event_time")


def _max_seq(folder: Path) -> int:
    seqs = [
        int(m.group(2))
        for p in folder.glob(f"{layout.EVENT_DATE}=*/*.parquet")
        if (m := _PART.match(p.name))
    ]
    return max(seqs, default=0)
