"""The offline store's layout: the contract between the server's Parquet writer and its readers
(the DuckDB catalog, the point-in-time dataset builder, compaction).

    <root>/<group name>/_group.json                     the feature group (FeatureGroup JSON)
    <root>/<group name>/event_date=YYYY-MM-DD/part-<first seq>-<last seq>[-c<n>].parquet

One row per write (put or delete), append-only. Columns: every feature of the group (nullable;
a delete row carries only the record identifier and event time), plus

    write_time            timestamp[us, UTC]  when the write became durable (the commit)
    api_invocation_time   timestamp[us, UTC]  when the server received the call
    is_deleted            bool                a delete marker (soft or hard delete)
    tessera_event_time    timestamp[us, UTC]  the event time feature, parsed
    tessera_seq           int64               commit sequence number: total write order
    tessera_expires_at    timestamp[us, UTC]  ExpiresAt (event time + TTL) or null
    tessera_source        string              origin of the write ("kafka:t/0/42") or null

`event_date` (the UTC date of the event time) is the Hive partition. File names carry the commit
sequence range, so rewriting a range after a crash replaces a file instead of duplicating rows.
Files appear by rename only: readers glob `*.parquet`, temporaries start with a dot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tessera.core.schema import CollectionType, FeatureGroup, FeatureType, ScalarType

if TYPE_CHECKING:
    import pyarrow as pa

WRITE_TIME = "write_time"
API_INVOCATION_TIME = "api_invocation_time"
IS_DELETED = "is_deleted"
EVENT_TIME = "tessera_event_time"
SEQ = "tessera_seq"
EXPIRES_AT = "tessera_expires_at"
SOURCE = "tessera_source"
EVENT_DATE = "event_date"
GROUP_FILE = "_group.json"

SYSTEM_COLUMNS = (WRITE_TIME, API_INVOCATION_TIME, IS_DELETED, EVENT_TIME, SEQ, EXPIRES_AT, SOURCE)
#: Feature names a group may not use: the system columns, the partition, and the prefix.
RESERVED_NAMES = frozenset((*SYSTEM_COLUMNS, EVENT_DATE))
RESERVED_PREFIX = "tessera_"


def group_dir(root: Path, group_name: str) -> Path:
    return root / group_name


def partition_dir(root: Path, group_name: str, event_date: str) -> Path:
    return root / group_name / f"{EVENT_DATE}={event_date}"


def part_file_name(first_seq: int, last_seq: int) -> str:
    return f"part-{first_seq:020d}-{last_seq:020d}.parquet"


def parquet_glob(root: Path | str, group_name: str) -> str:
    return f"{str(root).rstrip('/')}/{group_name}/{EVENT_DATE}=*/*.parquet"


def arrow_type(ftype: FeatureType) -> pa.DataType:
    import pyarrow as pa

    scalar = {
        ScalarType.INTEGRAL: pa.int64(),
        ScalarType.FRACTIONAL: pa.float64(),
        ScalarType.STRING: pa.string(),
    }[ftype.scalar]
    if ftype.collection is None:
        return scalar
    if ftype.collection is CollectionType.VECTOR:
        return pa.list_(pa.float32(), ftype.dimension or 0)
    return pa.list_(scalar)


def arrow_schema(group: FeatureGroup) -> pa.Schema:
    """The columns of a group's offline files (without the partition column)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    fields = [
        pa.field(fd.feature_name, arrow_type(fd.type()))
        for fd in group.definition.feature_definitions
    ]
    fields += [
        pa.field(WRITE_TIME, ts, nullable=False),
        pa.field(API_INVOCATION_TIME, ts, nullable=False),
        pa.field(IS_DELETED, pa.bool_(), nullable=False),
        pa.field(EVENT_TIME, ts, nullable=False),
        pa.field(SEQ, pa.int64(), nullable=False),
        pa.field(EXPIRES_AT, ts),
        pa.field(SOURCE, pa.string()),
    ]
    return pa.schema(fields)
