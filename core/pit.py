"""Point-in-time joins over the offline store, written as one DuckDB query.

For each spine row (record id, timestamp t, labels...) and each feature group, the row chosen is
the group's latest row for that id with event time <= t, "latest" ordered by (event time, commit
sequence): DuckDB's ASOF JOIN takes one inequality, so both go into one HUGEINT key,

    feature row:  epoch_us(event_time) * 2^63 + seq              (0 <= seq < 2^63)
    spine row:    epoch_us(t)          * 2^63 + (2^63 - 1)

and `spine key >= feature key` holds exactly when event_time <= t (any seq). The chosen row then
reads as missing (every feature of the group null) when it is a delete marker or has expired at
t: it expires at `tessera_expires_at`, or event time + the group's TTL where that is null, and is
valid while t < expiry. An older row is never used instead: the record was deleted or expired.
`as_of` keeps only rows with write_time <= as_of, before the join. The spine keeps its rows and
their order: a LEFT join per group, and ORDER BY the spine's row-number column at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera.core import offline_layout as layout
from tessera.core.catalog import quote_ident, quote_literal, sql_type
from tessera.core.errors import InvalidRequestError
from tessera.core.eventtime import to_iso
from tessera.core.schema import CompiledSchema, FeatureGroup, FeatureType, ScalarType

#: The prefix of the query's own column names, which a spine's columns may not use.
INTERNAL_PREFIX = "__tessera_"
#: The column the caller adds to the spine: its rows' order (any sortable type).
ROW_COLUMN = INTERNAL_PREFIX + "row"
_P = INTERNAL_PREFIX
_SHIFT = 2**63  # seq < 2^63, so the event time takes the bits above it
# The range a timestamp literal can spell (years 1-9999); as_of beyond it cuts nothing more.
_MIN_US = -62_135_596_800_000_000
_MAX_US = 253_402_300_799_999_999
_TS_US = {  # DuckDB type id -> SQL for epoch microseconds; `{c}` is the column
    "timestamp": "epoch_us({c})",
    "timestamp with time zone": "epoch_us({c})",
    "timestamp_ms": "epoch_us({c})",
    "timestamp_s": "epoch_us({c})",
    "date": "epoch_us(CAST({c} AS TIMESTAMP))",
    # epoch_us rounds nanoseconds; floor instead: e_us <= t_ns/1000 iff e_us <= floor(t_ns/1000).
    "timestamp_ns": "((epoch_ns({c}) - (epoch_ns({c}) % 1000 + 1000) % 1000) // 1000)",
    "timestamptz_ns": "((epoch_ns({c}) - (epoch_ns({c}) % 1000 + 1000) % 1000) // 1000)",
}
_INTEGERS = frozenset(
    ("tinyint", "smallint", "integer", "bigint", "hugeint")
    + ("utinyint", "usmallint", "uinteger", "ubigint", "uhugeint")
)
_FLOATS = frozenset(("float", "double", "decimal"))


def timestamp_us_sql(column: str, type_id: str) -> str:
    """SQL for a spine timestamp column as epoch microseconds (BIGINT; null stays null).

    Timestamps without a zone are UTC. Numbers are epoch seconds, rounded to microseconds as the
    server rounds an event time given in seconds (`eventtime.from_epoch_s`: half to even).
    """
    c = quote_ident(column)
    if type_id in _TS_US:
        return _TS_US[type_id].format(c=c)
    if type_id in _INTEGERS:
        return f"(CAST({c} AS BIGINT) * 1000000)"
    if type_id in _FLOATS:
        d = f"CAST({c} AS DOUBLE)"
        return f"(CASE WHEN isfinite({d}) THEN CAST(round_even({d} * 1000000, 0) AS BIGINT) END)"
    raise InvalidRequestError(
        f"spine timestamp column '{column}' has type {type_id.upper()}; allowed: a timestamp "
        "(with a time zone, or naive = UTC), a date, or epoch seconds (a number)"
    )


@dataclass(frozen=True)
class GroupSelection:
    """The features wanted from one group, and the spine column holding its record ids."""

    group: FeatureGroup
    features: tuple[str, ...]
    spine_key: str
    has_files: bool

    @property
    def name(self) -> str:
        return self.group.name


@dataclass(frozen=True)
class PointInTimeQuery:
    """A validated point-in-time join; `sql()` renders it.

    `spine_relation` is SQL for a relation with the spine's columns (`spine_columns`: name and
    DuckDB type id, in output order) plus ROW_COLUMN. A group's offline rows are read through
    the catalog's view of the same name (`tessera.core.catalog`).
    """

    spine_relation: str
    spine_columns: tuple[tuple[str, str], ...]
    timestamp: str
    groups: tuple[GroupSelection, ...]
    as_of_us: int | None = None
    prefix_group: bool = False

    def output_names(self) -> list[str]:
        """The result's columns: the spine's, then each group's features in the order asked."""
        names = [n for n, _ in self.spine_columns]
        for g in self.groups:
            names += [self._out_name(g, f) for f in g.features]
        return names

    def _out_name(self, g: GroupSelection, feature: str) -> str:
        return f"{g.name}__{feature}" if self.prefix_group else feature

    def sql(self) -> str:
        """The DuckDB query (see the module docstring for what it computes)."""
        return self._render(ordered=True)

    def unordered_sql(self) -> str:
        """The same rows with ROW_COLUMN first, in no particular order.

        The builder stores these in a temporary table and reads them back sorted: DuckDB spills
        both steps, while one query that sorts the ASOF join's output as it comes needs memory
        in proportion to the spine (a 20M-row spine: ~1 GB in one query, <300 MB in two).
        """
        return self._render(ordered=False)

    def _render(self, *, ordered: bool) -> str:
        types = dict(self.spine_columns)
        t_us = timestamp_us_sql(self.timestamp, types[self.timestamp])
        keyed = [f"CAST({_P}t_us AS HUGEINT) * {_SHIFT} + {_SHIFT - 1} AS {_P}key"]
        keyed += [
            f"{_spine_id_sql(g, types[g.spine_key])} AS {_P}id_{i}"
            for i, g in enumerate(self.groups)
            if g.has_files
        ]
        ctes = [
            f"{_P}spine AS (\n  SELECT *, {t_us} AS {_P}t_us\n  FROM {self.spine_relation}\n)",
            f"{_P}keyed AS (\n  SELECT *,\n    " + ",\n    ".join(keyed) + f"\n  FROM {_P}spine\n)",
        ]
        inner = ["s.*"]
        joins = []
        outer = [] if ordered else [ROW_COLUMN]
        outer += [quote_ident(n) for n, _ in self.spine_columns]
        for i, g in enumerate(self.groups):
            declared = _declared_types(g.group)
            if g.has_files:
                ctes.append(f"{_P}g{i} AS (\n{self._group_cte(i, g)}\n)")
                f = f"{_P}g{i}"
                inner.append(
                    f"(NOT {f}.{_P}deleted AND ({f}.{_P}expires_us IS NULL "
                    f"OR s.{_P}t_us < {f}.{_P}expires_us)) AS {_P}live_{i}"
                )
                inner += [f"{f}.{_P}f_{i}_{j}" for j in range(len(g.features))]
                joins.append(
                    f"ASOF LEFT JOIN {f} ON s.{_P}id_{i} = {f}.{_P}id AND s.{_P}key >= {f}.{_P}key"
                )
            for j, feature in enumerate(g.features):
                ftype = declared[feature]
                out = quote_ident(self._out_name(g, feature))
                if not g.has_files:
                    outer.append(f"CAST(NULL AS {sql_type(ftype)}) AS {out}")
                    continue
                value = f"{_P}f_{i}_{j}"
                if sql_type(ftype) != sql_type(ftype, stored=True):
                    value = f"CAST({value} AS {sql_type(ftype)})"
                outer.append(f"CASE WHEN {_P}live_{i} THEN {value} END AS {out}")
        ctes.append(
            f"{_P}joined AS (\n  SELECT "
            + ",\n    ".join(inner)
            + f"\n  FROM {_P}keyed AS s"
            + "".join(f"\n  {j}" for j in joins)
            + "\n)"
        )
        return (
            "WITH "
            + ",\n".join(ctes)
            + "\nSELECT "
            + ",\n  ".join(outer)
            + f"\nFROM {_P}joined"
            + (f"\nORDER BY {ROW_COLUMN}" if ordered else "")
        )

    def _group_cte(self, i: int, g: GroupSelection) -> str:
        d = g.group.definition
        event_us = f"epoch_us({layout.EVENT_TIME})"
        expires = f"epoch_us({layout.EXPIRES_AT})"
        ttl = d.online_store_config.ttl_duration
        if ttl is not None:
            expires = f"coalesce({expires}, {event_us} + {ttl.seconds * 1_000_000})"
        cols = [
            f"{quote_ident(d.record_identifier_feature_name)} AS {_P}id",
            f"CAST({event_us} AS HUGEINT) * {_SHIFT} + {layout.SEQ} AS {_P}key",
            f"{layout.IS_DELETED} AS {_P}deleted",
            f"{expires} AS {_P}expires_us",
        ]
        cols += [f"{quote_ident(f)} AS {_P}f_{i}_{j}" for j, f in enumerate(g.features)]
        where = ""
        if self.as_of_us is not None:
            # A literal, not epoch_us(write_time) <= n, so the Parquet reader can skip row groups.
            as_of = quote_literal(to_iso(min(max(self.as_of_us, _MIN_US), _MAX_US)))
            where = f"\n  WHERE {layout.WRITE_TIME} <= TIMESTAMPTZ {as_of}"
        return "  SELECT " + ",\n    ".join(cols) + f"\n  FROM {quote_ident(g.name)}" + where


def _declared_types(group: FeatureGroup) -> dict[str, FeatureType]:
    return {fd.feature_name: fd.type() for fd in group.definition.feature_definitions}


def _spine_id_sql(g: GroupSelection, spine_type: str) -> str:
    """The spine's record id column, cast to the group's id type where they differ (a spine of
    integer ids against a String identifier matches on the ids' text)."""
    d = g.group.definition
    id_type = _declared_types(g.group)[d.record_identifier_feature_name]
    want = "BIGINT" if id_type.scalar is ScalarType.INTEGRAL else "VARCHAR"
    c = quote_ident(g.spine_key)
    return c if spine_type == want.lower() else f"TRY_CAST({c} AS {want})"


def select_groups(
    groups: Mapping[str, FeatureGroup],
    has_files: Mapping[str, bool],
    features: Mapping[str, Sequence[str] | None],
    on: Mapping[str, str] | str | None,
    spine_columns: Sequence[str],
    timestamp: str,
) -> tuple[GroupSelection, ...]:
    """Check a dataset request against the groups and the spine; the selections, in order.

    `features` maps a group to feature names (None: every feature but the record identifier and
    the event time feature);
    `on` names the spine column holding each group's record ids (one name for all groups, or per
    group; default: the group's record identifier name).
    """
    if not features:
        raise InvalidRequestError("features: name at least one feature group")
    if timestamp not in spine_columns:
        raise InvalidRequestError(
            f"spine has no timestamp column '{timestamp}'; columns: {', '.join(spine_columns)}"
        )
    if isinstance(on, Mapping):
        unknown = sorted(set(on) - set(features))
        if unknown:
            raise InvalidRequestError(
                f"on: group '{unknown[0]}' is not among the features' groups; "
                f"known: {', '.join(features)}"
            )
    selections = []
    for name, wanted in features.items():
        group = groups[name]
        schema = CompiledSchema.of(group)
        id_name = schema.record_identifier.name
        if wanted is None:
            keys = (id_name, schema.event_time.name)
            names = tuple(f for f in schema.features if f not in keys)
        elif isinstance(wanted, str):
            raise InvalidRequestError(
                f"features['{name}'] must be a list of feature names, not the string '{wanted}'"
            )
        else:
            names = tuple(wanted)
        if not names:
            raise InvalidRequestError(f"features['{name}'] is empty; name at least one feature")
        for f in names:
            if f not in schema.features:
                raise schema.unknown_feature(f)
        key = on if isinstance(on, str) else (on or {}).get(name, id_name)
        if key not in spine_columns:
            raise InvalidRequestError(
                f"spine has no column '{key}' holding the record ids of group '{name}'; "
                f"columns: {', '.join(spine_columns)}; pass on={{'{name}': <column>}}"
            )
        selections.append(GroupSelection(group, names, key, has_files[name]))
    return tuple(selections)


def check_output_names(query: PointInTimeQuery) -> None:
    """Refuse a result with two columns of one name (a feature named like a spine column, or
    like another group's feature)."""
    seen: set[str] = set()
    for n in query.output_names():
        if n in seen:
            hint = "" if query.prefix_group else "; pass prefix_group=True"
            raise InvalidRequestError(
                f"the dataset would have two columns named '{n}' (spine columns and features "
                f"share one namespace){hint}, or rename the spine column"
            )
        seen.add(n)
