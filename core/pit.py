"""Point-in-time joins over the offline store, written as one DuckDB query.

For each spine row (record id, timestamp t, labels...) and each feature group, the row chosen is
the group's latest row for that id with event time <= t, "latest" ordered by (event time, commit
sequence): DuckDB's ASOF JOIN takes one inequality, so both go into one HUGEINT key,

    feature row:  epoch_us(event_time) * 2^63 + seq              (0 <= seq < 2^63)
    spine row:    epoch_us(t)          * 2^63 + (2^63 - 1)

and `spine key >= feature key` holds exactly when event_time <= t (any seq). The chosen row then
reads as missing (every feature of the group null) when it is a delete marker or has expired at
t: it expires at `tessera_expires_at` (null: never), and is valid while t < expiry. The expiry is
the row's own, fixed when it was written (its TTL, or the group's default TTL then), exactly as the
online record's: a TTL given to the group later does not reach back to older rows, online or here.
An older row is never used instead: the record was deleted or expired. `as_of` keeps only rows
with write_time <= as_of, before the join. The spine keeps its rows and their order: a LEFT join
per group, and ORDER BY the spine's row-number column at the end.

Aggregation features (`tessera.core.aggregation`) are not computed by the query: its unordered
form also keeps hidden columns (the spine time in microseconds, each group's spine id cast to the
group's id type, the key feature of the row picked for a keyed stream), from which
`tessera.core.aggregation.dataset` computes them; `read_sql` joins them back in spine order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from tessera.core import offline_layout as layout
from tessera.core.aggregation.plan import AggregationPlan, StreamPlan, compile_plan
from tessera.core.catalog import quote_ident, quote_literal, sql_type
from tessera.core.errors import InvalidRequestError
from tessera.core.eventtime import to_iso
from tessera.core.schema import CompiledSchema, FeatureGroup, FeatureType, ScalarType

#: The prefix of the query's own column names, which a spine's columns may not use.
INTERNAL_PREFIX = "__tessera_"
#: The column the caller adds to the spine: its rows' order (any sortable type).
ROW_COLUMN = INTERNAL_PREFIX + "row"
_P = INTERNAL_PREFIX
#: The hidden column of the spine time as epoch microseconds (with aggregations only).
T_US_COLUMN = _P + "t_us"
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
    """The features wanted from one group (plain features and aggregation features, in the
    order asked), and the spine column holding its record ids."""

    group: FeatureGroup
    features: tuple[str, ...]
    spine_key: str
    has_files: bool

    @property
    def name(self) -> str:
        return self.group.name

    @cached_property
    def aggregations(self) -> tuple[str, ...]:
        """The aggregation features asked for, in the order asked."""
        declared = {a.name for a in self.group.definition.aggregations}
        return tuple(f for f in self.features if f in declared)

    @cached_property
    def plain(self) -> tuple[str, ...]:
        """The plain features asked for (the ASOF join's), in the order asked."""
        declared = {a.name for a in self.group.definition.aggregations}
        return tuple(f for f in self.features if f not in declared)

    @cached_property
    def aggregation_plan(self) -> AggregationPlan:
        """The asked aggregations compiled with the group's tile size and lateness bound (a
        subset is recompiled so the kernels compute only what is asked)."""
        full = self.group.definition.aggregation_plan()
        if set(self.aggregations) == set(full.names):
            return full
        d = self.group.definition
        asked = [a for a in d.aggregations if a.name in self.aggregations]
        return compile_plan(
            asked,
            [full.aggregations[a.name].window_us for a in asked],
            _declared_types(self.group),
            record_identifier=d.record_identifier_feature_name,
            tile_us=full.tile_us,
            lateness_us=full.lateness_us,
        )

    @cached_property
    def keyed_streams(self) -> tuple[StreamPlan, ...]:
        """The streams of the asked aggregations keyed by a feature (not the record id)."""
        if not self.aggregations:
            return ()
        return tuple(s for s in self.aggregation_plan.streams if s.key is not None)

    @property
    def joins(self) -> bool:
        """Whether the query joins the group's rows: it has files, and plain features or a
        keyed stream's key to read from them."""
        return self.has_files and bool(self.plain or self.keyed_streams)


def id_column(group_index: int) -> str:
    """The hidden column of a group's spine record ids, cast to the group's id type."""
    return f"{_P}id_{group_index}"


def key_column(group_index: int, stream: StreamPlan) -> str:
    """The hidden column of a keyed stream's key: the key feature of the row the join picked."""
    return f"{_P}k_{group_index}_{stream.stream_id}"


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
            names += [self.out_name(g, f) for f in g.features]
        return names

    def out_name(self, g: GroupSelection, feature: str) -> str:
        """The result column of a group's feature (or aggregation feature)."""
        return f"{g.name}__{feature}" if self.prefix_group else feature

    @property
    def has_aggregations(self) -> bool:
        return any(g.aggregations for g in self.groups)

    def hidden_columns(self) -> list[str]:
        """The columns `unordered_sql` adds for the aggregations (none without any): the spine
        time, then per group with aggregations its cast spine ids and its keyed streams' keys."""
        if not self.has_aggregations:
            return []
        names = [T_US_COLUMN]
        for i, g in enumerate(self.groups):
            if g.aggregations:
                names.append(id_column(i))
                names += [key_column(i, s) for s in g.keyed_streams]
        return names

    def sql(self) -> str:
        """The DuckDB query (see the module docstring for what it computes); aggregation
        features are not in it (`read_sql`)."""
        return self._render(ordered=True)

    def unordered_sql(self) -> str:
        """The same rows with ROW_COLUMN first, in no particular order, and the hidden columns
        last.

        The builder stores these in a temporary table and reads them back sorted: DuckDB spills
        both steps, while one query that sorts the ASOF join's output as it comes needs memory
        in proportion to the spine (a 20M-row spine: ~1 GB in one query, <300 MB in two).
        """
        return self._render(ordered=False)

    def read_sql(
        self, table: str, aggregates: str | None, casts: Mapping[str, str] | None = None
    ) -> str:
        """`unordered_sql`'s rows, stored in `table`, in spine order without ROW_COLUMN and the
        hidden columns; with `aggregates` (a relation of ROW_COLUMN and one column per
        aggregation feature, named as in the result), its columns in their places. `casts`
        maps result columns to the SQL type they are cast to."""
        casts = casts or {}
        if aggregates is None or not self.has_aggregations:
            replace = ", ".join(
                f"CAST({quote_ident(c)} AS {t}) AS {quote_ident(c)}" for c, t in casts.items()
            )
            return (
                f"SELECT * EXCLUDE ({ROW_COLUMN})"
                + (f" REPLACE ({replace})" if replace else "")
                + f" FROM {table} ORDER BY {ROW_COLUMN}"
            )

        def col(side: str, name: str) -> str:
            ref = f"{side}.{quote_ident(name)}"
            return f"CAST({ref} AS {casts[name]}) AS {quote_ident(name)}" if name in casts else ref

        cols = [col("r", n) for n, _ in self.spine_columns]
        for g in self.groups:
            for f in g.features:
                cols.append(col("a" if f in g.aggregations else "r", self.out_name(g, f)))
        return (
            "SELECT " + ",\n  ".join(cols) + f"\nFROM {table} AS r"
            f"\nLEFT JOIN {aggregates} AS a ON r.{ROW_COLUMN} = a.{ROW_COLUMN}"
            f"\nORDER BY r.{ROW_COLUMN}"
        )

    def schema_sql(self) -> str:
        """A query with the result's columns and types (aggregation features as typed nulls),
        for reading the schema with LIMIT 0."""
        if not self.has_aggregations:
            return self.sql()
        cols = [f"r.{quote_ident(n)}" for n, _ in self.spine_columns]
        for g in self.groups:
            plan = g.aggregation_plan if g.aggregations else None
            for f in g.features:
                out = quote_ident(self.out_name(g, f))
                if plan is not None and f in plan.aggregations:
                    otype = sql_type(FeatureType.parse(plan.aggregations[f].output_type))
                    cols.append(f"CAST(NULL AS {otype}) AS {out}")
                else:
                    cols.append(f"r.{out}")
        return "SELECT " + ",\n  ".join(cols) + f"\nFROM (\n{self.sql()}\n) AS r"

    def events_sql(self, g: GroupSelection, stream: StreamPlan, keys: str) -> str:
        """A stream's events (the group's history rows with is_deleted false, write_time <=
        as_of) whose key is in `keys` (a relation of `{_P}k` and its dense `{_P}code`), in
        commit order: code, event time, write time (epoch microseconds), seq, the sources as
        DOUBLE (NaN for null)."""
        d = g.group.definition
        key = quote_ident(stream.key or d.record_identifier_feature_name)
        cols = [
            f"k.{_P}code AS code",
            f"epoch_us(e.{layout.EVENT_TIME}) AS event_us",
            f"epoch_us(e.{layout.WRITE_TIME}) AS write_us",
            f"e.{layout.SEQ} AS seq",
        ]
        cols += [
            f"coalesce(CAST(e.{quote_ident(s)} AS DOUBLE), CAST('NaN' AS DOUBLE)) AS v{j}"
            for j, s in enumerate(stream.sources)
        ]
        where = f"NOT e.{layout.IS_DELETED}"
        if self.as_of_us is not None:
            where += f" AND e.{self._as_of_condition()}"
        return (
            "SELECT " + ",\n  ".join(cols) + f"\nFROM {quote_ident(g.name)} AS e"
            f"\nJOIN {keys} AS k ON e.{key} = k.{_P}k"
            f"\nWHERE {where}"
            f"\nORDER BY write_us, seq"
        )

    def _render(self, *, ordered: bool) -> str:
        types = dict(self.spine_columns)
        t_us = timestamp_us_sql(self.timestamp, types[self.timestamp])
        hidden = [] if ordered else self.hidden_columns()
        keyed = [f"CAST({_P}t_us AS HUGEINT) * {_SHIFT} + {_SHIFT - 1} AS {_P}key"]
        keyed += [
            f"{_spine_id_sql(g, types[g.spine_key])} AS {id_column(i)}"
            for i, g in enumerate(self.groups)
            if g.joins or id_column(i) in hidden
        ]
        ctes = [
            f"{_P}spine AS (\n  SELECT *, {t_us} AS {_P}t_us\n  FROM {self.spine_relation}\n)",
            f"{_P}keyed AS (\n  SELECT *,\n    " + ",\n    ".join(keyed) + f"\n  FROM {_P}spine\n)",
        ]
        inner = ["s.*"]
        joins = []
        outer = [] if ordered else [ROW_COLUMN]
        outer += [quote_ident(n) for n, _ in self.spine_columns]
        hidden_keys = []
        for i, g in enumerate(self.groups):
            declared = _declared_types(g.group)
            if g.joins:
                ctes.append(f"{_P}g{i} AS (\n{self._group_cte(i, g)}\n)")
                f = f"{_P}g{i}"
                inner.append(
                    f"(NOT {f}.{_P}deleted AND ({f}.{_P}expires_us IS NULL "
                    f"OR s.{_P}t_us < {f}.{_P}expires_us)) AS {_P}live_{i}"
                )
                inner += [f"{f}.{_P}f_{i}_{j}" for j in range(len(g.plain))]
                inner += [f"{f}.{key_column(i, s)}" for s in g.keyed_streams]
                joins.append(
                    f"ASOF LEFT JOIN {f} ON s.{_P}id_{i} = {f}.{_P}id AND s.{_P}key >= {f}.{_P}key"
                )
            for s in g.keyed_streams if hidden else ():
                assert s.key is not None
                if g.joins:  # the picked row's key, whatever its deleted or expired state
                    hidden_keys.append(key_column(i, s))
                else:
                    hidden_keys.append(
                        f"CAST(NULL AS {sql_type(declared[s.key])}) AS {key_column(i, s)}"
                    )
            for j, feature in enumerate(g.plain):
                ftype = declared[feature]
                out = quote_ident(self.out_name(g, feature))
                if not g.joins:
                    outer.append(f"CAST(NULL AS {sql_type(ftype)}) AS {out}")
                    continue
                value = f"{_P}f_{i}_{j}"
                if sql_type(ftype) != sql_type(ftype, stored=True):
                    value = f"CAST({value} AS {sql_type(ftype)})"
                outer.append(f"CASE WHEN {_P}live_{i} THEN {value} END AS {out}")
        if hidden:
            outer.append(T_US_COLUMN)
            outer += [id_column(i) for i, g in enumerate(self.groups) if g.aggregations]
            outer += hidden_keys
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
        cols = [
            f"{quote_ident(d.record_identifier_feature_name)} AS {_P}id",
            f"CAST({event_us} AS HUGEINT) * {_SHIFT} + {layout.SEQ} AS {_P}key",
            f"{layout.IS_DELETED} AS {_P}deleted",
            f"{expires} AS {_P}expires_us",
        ]
        cols += [f"{quote_ident(f)} AS {_P}f_{i}_{j}" for j, f in enumerate(g.plain)]
        for s in g.keyed_streams:
            assert s.key is not None
            cols.append(f"{quote_ident(s.key)} AS {key_column(i, s)}")
        where = ""
        if self.as_of_us is not None:
            where = f"\n  WHERE {self._as_of_condition()}"
        return "  SELECT " + ",\n    ".join(cols) + f"\n  FROM {quote_ident(g.name)}" + where

    def _as_of_condition(self) -> str:
        """write_time <= as_of. A literal, not epoch_us(write_time) <= n, so the Parquet reader
        can skip row groups."""
        assert self.as_of_us is not None
        as_of = quote_literal(to_iso(min(max(self.as_of_us, _MIN_US), _MAX_US)))
        return f"{layout.WRITE_TIME} <= TIMESTAMPTZ {as_of}"


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

    `features` maps a group to feature names, plain or aggregation features (None: every
    feature but the record identifier and the event time feature, then every aggregation, in
    declaration order);
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
        aggregations = tuple(a.name for a in group.definition.aggregations)
        if wanted is None:
            keys = (id_name, schema.event_time.name)
            names = tuple(f for f in schema.features if f not in keys) + aggregations
        elif isinstance(wanted, str):
            raise InvalidRequestError(
                f"features['{name}'] must be a list of feature names, not the string '{wanted}'"
            )
        else:
            names = tuple(wanted)
        if not names:
            raise InvalidRequestError(f"features['{name}'] is empty; name at least one feature")
        for f in names:
            if f not in schema.features and f not in aggregations:
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
