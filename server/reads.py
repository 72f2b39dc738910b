"""The read path of GetRecord and BatchGetRecord, on domain types: a group name, record ids,
feature names and a time in; the records' stored wire bytes (and expiries) out, ready for the
servicer to splice into its response (server/wire.py) without decoding them.

A read: the group must exist and have an online store; the feature filter names only features
or aggregations of the group; each record id is normalized to its canonical text; the records
are fetched from the `OnlineStore` (one `get` for one id, one `multi_get` for several); the
aggregation features of the records found are computed as of the read, and one per-record step
(`_shape`) restricts the stored bytes to the filter's features (the only case that decodes) and
appends them. Without a filter or aggregations, the stored bytes are the answer as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tessera.core.errors import InvalidRequestError, TesseraError
from tessera.core.keys import normalize_record_id, record_key
from tessera.core.schema import CompiledSchema
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.aggregates import read_features, stream_keys
from tessera.server.registry import Registry
from tessera.server.store import Hit, OnlineStore, now_us
from tessera.server.writes import no_online_store


class FeatureFilter(NamedTuple):
    """What a read returns of each record (a NamedTuple: built per filtered read, cheaply)."""

    #: The stored features to keep (empty: all of them, sent as stored).
    names: frozenset[str]
    #: The aggregation features to compute (None: none).
    aggregates: frozenset[str] | None

    @property
    def plain(self) -> bool:
        """True when the stored bytes are the answer as they are."""
        return not self.names and self.aggregates is None


_PLAIN = FeatureFilter(frozenset(), None)


def feature_filter(schema: CompiledSchema, names: Sequence[str]) -> FeatureFilter:
    """The filter of a read naming `names` (none: every feature and every aggregation);
    InvalidRequestError for a name that is neither a feature nor an aggregation of the group."""
    plan = schema.aggregations
    if not names:
        return _PLAIN if plan is None else FeatureFilter(frozenset(), frozenset(plan.aggregations))
    # A loop, not set algebra: requests name a few features, and this is per read.
    features = schema.features
    for f in names:
        if f not in features and (plan is None or f not in plan.aggregations):
            raise schema.unknown_feature(f)
    if plan is None:
        return FeatureFilter(frozenset(names), None)
    wanted = frozenset(n for n in names if n in plan.aggregations)
    return FeatureFilter(frozenset(names), wanted or None)


@dataclass(slots=True)
class GroupRead:
    """One group's part of a BatchGetRecord: the records found, in the order asked (missing ones
    are left out, as SageMaker does), and the ids that could not be read, with why."""

    found: list[tuple[str, Hit]] = field(default_factory=list)
    errors: list[tuple[str, TesseraError]] = field(default_factory=list)


class OnlineReader:
    """GetRecord and BatchGetRecord over a registry and an `OnlineStore`."""

    def __init__(self, registry: Registry, store: OnlineStore) -> None:
        self._registry = registry
        self._store = store

    def get_record(
        self, group_name: str, record_id: str, feature_names: Sequence[str], at_us: int
    ) -> Hit | None:
        """The record as it reads at `at_us` (None: absent, deleted or expired). Raises
        FeatureGroupNotFoundError, PreconditionFailedError (no online store) and
        InvalidRequestError (a bad record id or feature name)."""
        schema = self._registry.schema(group_name)
        if not schema.online:
            raise no_online_store(schema)
        rid = normalize_record_id(schema, record_id)
        # The hot path (no filter, no aggregations) skips building a filter.
        if feature_names or schema.aggregations is not None:
            filt = feature_filter(schema, feature_names)
        else:
            filt = _PLAIN
        hit = self._store.get(record_key(schema.group_id, rid), at_us)
        if hit is None or filt is _PLAIN:
            return hit
        extra = b""
        if filt.aggregates is not None:
            (extra,) = self._aggregates(schema, [(rid, hit)], filt.aggregates)
        return _shape(hit[0], filt.names, extra), hit[1]

    def batch_get_record(
        self, group_name: str, record_ids: Sequence[str], feature_names: Sequence[str],
        at_us: int,
    ) -> GroupRead:
        """One group's records as they read at `at_us`. Errors are per record id, never raised:
        a missing group, no online store or a bad feature name fail every id of the group; a bad
        id fails alone."""
        out = GroupRead()
        try:
            schema = self._registry.schema(group_name)
            if not schema.online:
                raise no_online_store(schema)
            filt = feature_filter(schema, feature_names)
        except TesseraError as exc:
            out.errors = [(rid, exc) for rid in record_ids]
            return out
        good: list[str] = []
        for rid in record_ids:
            try:
                good.append(normalize_record_id(schema, rid))
            except InvalidRequestError as exc:
                out.errors.append((rid, exc))
        gid = schema.group_id
        hits = self._store.multi_get([record_key(gid, rid) for rid in good], at_us)
        found = [(rid, hit) for rid, hit in zip(good, hits, strict=True) if hit is not None]
        if filt.plain or not found:
            out.found = found
            return out
        extras: list[bytes] | None = None
        if filt.aggregates is not None:
            extras = self._aggregates(schema, found, filt.aggregates)
        out.found = [
            (rid, (_shape(payload, filt.names, extras[i] if extras else b""), expires_at_us))
            for i, (rid, (payload, expires_at_us)) in enumerate(found)
        ]
        return out

    def _aggregates(
        self, schema: CompiledSchema, found: list[tuple[str, Hit]], wanted: frozenset[str]
    ) -> list[bytes]:
        """The records' aggregation features as of now, encoded to append to their bytes."""
        plan = schema.aggregations
        if plan is None:
            raise RuntimeError(f"feature group '{schema.group_name}' has no aggregations")
        gid = schema.group_id
        keys = [stream_keys(plan, gid, rid, hit[0]) for rid, hit in found]
        stored: list[list[bytes | None]] = []
        present: list[list[bool]] = []
        for s in range(len(plan.streams)):
            column = [k[s] for k in keys]
            values = iter(self._store.get_aggregates([k for k in column if k is not None]))
            stored.append([None if k is None else next(values) for k in column])
            present.append([k is not None for k in column])
        # "Now" is taken after the tiles were read, so it is never before the commit that
        # wrote them (the fold's eviction and write times assume reads come later).
        return read_features(plan, stored, present, now_us(), wanted)


def _shape(payload: memoryview, names: frozenset[str], extra: bytes) -> memoryview:
    """The one per-record step of both reads: the stored record restricted to `names` (all of
    it when empty; decoded only then), followed by its encoded aggregation features `extra`."""
    if names:
        record = pb.Record.FromString(bytes(payload))
        kept = pb.Record(features=[fv for fv in record.features if fv.feature_name in names])
        payload = memoryview(kept.SerializeToString())
    if extra:
        payload = memoryview(bytes(payload) + extra)
    return payload
