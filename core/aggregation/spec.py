"""Aggregation features as a feature group declares them, and their validation.

    aggregations=[{"name": "clicks_sum_1h", "source": "clicks", "function": "sum", "window": "1h"},
                  {"name": "events_7d", "function": "count", "window": "7d"},
                  {"name": "last_5_prices", "source": "price", "function": "last_n", "n": 5,
                   "window": "1d", "key": "merchant_id"}]
    aggregation_config={"tile_size": "1m", "lateness": "31d"}     # both optional

`check()` validates a group's aggregations once, at the boundary, and returns the compiled
`AggregationPlan` (see plan.py) that the online store and the dataset builder run the kernels
with. This module imports nothing heavier than pydantic, and imports `tessera.core.schema` only
inside functions, so `schema.py` may import these models at its top.

Tile size (one per group, every window a multiple of it): the tail of a window is exact to one
tile, so the tile size is the precision. The default is the largest of 1s, 10s, 1m, 5m, 1h, 1d
that divides every window and is at most a tenth of the smallest one (10m -> 1m, 1h -> 5m,
1d and 7d -> 1h, 30d -> 1d, like Chronon's hops), so no window loses more than 10% at its tail.
One size per group keeps all of a key's tiles in ONE RocksDB value read by ONE kernel call that
serves every window in one backward pass; the cost is that a group mixing a short and a long
window (10m and 30d) keeps up to 43,200 one-minute tiles per busy key, so a window may span at
most `MAX_WINDOW_TILES` tiles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from tessera.core.errors import InvalidRequestError

if TYPE_CHECKING:
    from tessera.core.aggregation.plan import AggregationPlan
    from tessera.core.schema import FeatureType

US_PER_UNIT = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
DURATION_RULE = "a whole number and a unit s, m, h or d, e.g. 10m, 1h, 7d"
FUNCTIONS = ("count", "sum", "mean", "min", "max", "last", "last_n")
MAX_AGGREGATIONS = 200
MAX_LAST_N = 100
MAX_WINDOW_US = 366 * US_PER_UNIT["d"]
#: The longest lateness bound: 1,000 years of 365 days, far inside int64 microseconds (the
#: kernels' arithmetic); a longer one would mean "never drop" anyway.
MAX_LATENESS_US = 365_000 * US_PER_UNIT["d"]
#: A window of more tiles than this is refused: its key's value would grow past ~2 MB.
MAX_WINDOW_TILES = 50_000
#: Candidate default tile sizes, largest first.
TILE_LADDER_US = tuple(
    n * US_PER_UNIT[u] for n, u in ((1, "d"), (1, "h"), (5, "m"), (1, "m"), (10, "s"), (1, "s"))
)
#: The default tile is at most this fraction of the smallest window (its tail precision).
DEFAULT_TILE_FRACTION = 10

_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AggregationDefinition(_Model):
    """One aggregation feature: `function` of `source` over the last `window`, per `key`.

    `source` is a numeric scalar feature of the group, or null for a count of events (function
    count only). `key` is the feature to aggregate by; null (or the record identifier) means per
    record id. `n` is required by last_n only (1-100).
    """

    name: str
    function: str
    window: str
    source: str | None = None
    n: int | None = None
    key: str | None = None


class AggregationConfig(_Model):
    """Group-level settings: the tile size (the precision of every window's tail) and the
    lateness bound (an event whose commit time - event time exceeds it is dropped and counted).
    Null means the default: see `default_tile_us` and `default_lateness_us`."""

    tile_size: str | None = None
    lateness: str | None = None


def parse_duration_us(text: str, field: str) -> int:
    """'10m' -> 600_000_000 microseconds; InvalidRequestError naming `field` otherwise."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidRequestError(f"{field} '{text}' is not a duration; allowed: {DURATION_RULE}")
    return int(m.group(1)) * US_PER_UNIT[m.group(2)]


def format_duration(us: int) -> str:
    """The shortest '<int><unit>' spelling of a whole number of seconds in microseconds."""
    for unit in ("d", "h", "m", "s"):
        if us % US_PER_UNIT[unit] == 0:
            return f"{us // US_PER_UNIT[unit]}{unit}"
    return f"{us}us"


def default_tile_us(windows_us: Sequence[int]) -> int:
    """The largest ladder step dividing every window and at most a tenth of the smallest."""
    smallest = min(windows_us)
    for tile in TILE_LADDER_US:
        if tile * DEFAULT_TILE_FRACTION <= smallest and all(w % tile == 0 for w in windows_us):
            return tile
    return TILE_LADDER_US[-1]


def default_lateness_us(windows_us: Sequence[int], tile_us: int) -> int:
    """The largest window plus one tile: an event later than that lies before every window at
    its commit, so the default drops (and counts) only events that could never be counted."""
    return max(windows_us) + tile_us


def check(
    definitions: Sequence[AggregationDefinition],
    feature_types: Mapping[str, FeatureType],
    *,
    record_identifier: str,
    config: AggregationConfig | None = None,
    trusted: bool = False,
) -> AggregationPlan:
    """Validate a group's aggregations against its features' types; return the compiled plan.

    Raises InvalidRequestError with a message naming the aggregation, the field, the bad value
    and what is allowed. An empty list is valid (a plan with no streams). `trusted`: the
    definitions belong to a registered group, so the checks added after groups were first
    stored (the case-insensitive name rule, the tile size and lateness bounds) are skipped: a
    group made under an older rule still compiles, and the registry quarantines it instead.
    """
    from tessera.core.aggregation.plan import AggregationPlan, compile_plan

    config = config or AggregationConfig()
    if len(definitions) > MAX_AGGREGATIONS:
        raise InvalidRequestError(
            f"aggregations has {len(definitions)} entries; the limit is {MAX_AGGREGATIONS}"
        )
    if not definitions:
        return AggregationPlan.empty()
    if not trusted:
        _check_names(definitions, feature_types)
    windows: list[int] = []
    for d in definitions:
        if d.name in feature_types:
            raise InvalidRequestError(
                f"aggregation '{d.name}' has the name of a feature of the group; "
                "aggregation names must differ from feature names"
            )
        _check_function(d, feature_types)
        _check_key(d, feature_types)
        windows.append(_check_window(d))
    names = [d.name for d in definitions]
    if len(set(names)) < len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise InvalidRequestError(f"aggregation '{twice}' is defined twice")
    tile_us = _tile_us(config, windows, trusted)
    for d, w in zip(definitions, windows, strict=True):
        if w % tile_us:
            raise InvalidRequestError(
                f"aggregation '{d.name}': window '{d.window}' is not a multiple of the tile size "
                f"'{format_duration(tile_us)}'; allowed: windows that are whole numbers of tiles"
            )
        if w // tile_us > MAX_WINDOW_TILES:
            raise InvalidRequestError(
                f"aggregation '{d.name}': window '{d.window}' spans {w // tile_us} tiles of "
                f"'{format_duration(tile_us)}'; the limit is {MAX_WINDOW_TILES}: choose a larger "
                "aggregation_config.tile_size"
            )
    if config.lateness is None:
        lateness_us = default_lateness_us(windows, tile_us)
    else:
        lateness_us = parse_duration_us(config.lateness, "aggregation_config.lateness")
        if lateness_us > MAX_LATENESS_US and not trusted:
            raise InvalidRequestError(
                f"aggregation_config.lateness '{config.lateness}' is out of range; allowed: 0s "
                f"to {format_duration(MAX_LATENESS_US)}"
            )
    return compile_plan(
        definitions,
        windows,
        feature_types,
        record_identifier=record_identifier,
        tile_us=tile_us,
        lateness_us=lateness_us,
    )


def _check_names(
    definitions: Sequence[AggregationDefinition], feature_types: Mapping[str, FeatureType]
) -> None:
    """Each name follows the column name rule and differs, in any case, from the others and
    from every feature's (they become columns of one offline table)."""
    from tessera.core.schema import CASE_RULE, check_column_name, fold_name

    features = {fold_name(n): n for n in feature_types}
    seen: dict[str, str] = {}
    for d in definitions:
        check_column_name("aggregation name", d.name)
        key = fold_name(d.name)
        if key in features and features[key] != d.name:
            raise InvalidRequestError(
                f"aggregation '{d.name}' differs from feature '{features[key]}' only in case; "
                f"aggregation names must differ from feature names: {CASE_RULE}"
            )
        if key in seen:
            if seen[key] == d.name:
                raise InvalidRequestError(f"aggregation '{d.name}' is defined twice")
            raise InvalidRequestError(
                f"aggregation '{d.name}' and aggregation '{seen[key]}' differ only in case; "
                f"{CASE_RULE}"
            )
        seen[key] = d.name


def _check_function(d: AggregationDefinition, feature_types: Mapping[str, FeatureType]) -> None:
    where = f"aggregation '{d.name}'"
    if d.function not in FUNCTIONS:
        raise InvalidRequestError(
            f"{where}: function '{d.function}' is not known; allowed: {', '.join(FUNCTIONS)}"
        )
    if d.source is None:
        if d.function != "count":
            raise InvalidRequestError(
                f"{where}: function '{d.function}' needs a source feature; only 'count' counts "
                "events without one"
            )
    elif d.source not in feature_types:
        raise InvalidRequestError(
            f"{where}: source feature '{d.source}' is not in the group; "
            f"known: {', '.join(feature_types)}"
        )
    elif not feature_types[d.source].is_numeric_scalar:
        numeric = [name for name, t in feature_types.items() if t.is_numeric_scalar]
        raise InvalidRequestError(
            f"{where}: source feature '{d.source}' has type {feature_types[d.source]}; allowed: "
            f"an Integral or Fractional scalar feature ({', '.join(numeric) or 'none here'})"
        )
    if d.function == "last_n":
        if d.n is None or not 1 <= d.n <= MAX_LAST_N:
            raise InvalidRequestError(
                f"{where}: function 'last_n' needs n, a whole number from 1 to {MAX_LAST_N}; "
                f"got {d.n}"
            )
    elif d.n is not None:
        raise InvalidRequestError(f"{where}: n is only for function 'last_n', not '{d.function}'")


def _check_key(d: AggregationDefinition, feature_types: Mapping[str, FeatureType]) -> None:
    if d.key is None:
        return
    where = f"aggregation '{d.name}'"
    if d.key not in feature_types:
        raise InvalidRequestError(
            f"{where}: key feature '{d.key}' is not in the group; known: {', '.join(feature_types)}"
        )
    ktype = feature_types[d.key]
    if ktype.collection is not None or ktype.scalar.value not in ("Integral", "String"):
        raise InvalidRequestError(
            f"{where}: key feature '{d.key}' has type {ktype}; allowed: Integral or String"
        )


def _check_window(d: AggregationDefinition) -> int:
    field = f"aggregation '{d.name}': window"
    window_us = parse_duration_us(d.window, field)
    if not 0 < window_us <= MAX_WINDOW_US:
        raise InvalidRequestError(f"{field} '{d.window}' is out of range; allowed: 1s to 366d")
    return window_us


def _tile_us(config: AggregationConfig, windows: Sequence[int], trusted: bool) -> int:
    if config.tile_size is None:
        return default_tile_us(windows)
    tile_us = parse_duration_us(config.tile_size, "aggregation_config.tile_size")
    if tile_us == 0:
        raise InvalidRequestError("aggregation_config.tile_size must be positive, got '0s'")
    if tile_us > MAX_WINDOW_US and not trusted:
        raise InvalidRequestError(
            f"aggregation_config.tile_size '{config.tile_size}' is out of range; allowed: 1s "
            f"to {format_duration(MAX_WINDOW_US)} (and a divisor of every window)"
        )
    return tile_us
