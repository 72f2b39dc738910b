"""The dataset builder equals a brute-force reference on random histories.

Histories mix ties on event time, deletes, group TTL and per-row expiry (set, null, derived),
out-of-order event times and late writes (a higher seq with an older event time), rows split over
several files and event dates, and a schema version added midway; spines hold absent ids,
times before any event, null times and duplicate rows; `as_of` cuts between writes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.client.offline import OfflineStore
from tessera.core.schema import FeatureGroup
from tests.offline_fixtures import (
    BASE_WRITE_US,
    make_group,
    reference_point_in_time,
    write_history,
)

S = 1_000_000
IDS = ["a", "b"]
SPINE_IDS = [*IDS, "zz"]  # "zz" never has a row


def users_group(ttl_s: int | None, *, with_score: bool) -> FeatureGroup:
    features = {"id": "String", "ts": "Fractional", "clicks": "Integral", "name": "String"}
    if with_score:
        features["score"] = "Fractional"
    return make_group("users", features, ttl_s=ttl_s, version=2 if with_score else 1)


ITEMS = make_group(
    "items", {"item_id": "String", "ts": "Fractional", "price": "Fractional"}, record_id="item_id"
)


@st.composite
def histories(draw: st.DrawFn, unit_us: int, id_key: str) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 16))
    seqs = draw(st.permutations(list(range(1, n + 1))))
    rows = []
    for seq in seqs:  # the rows' write order is unrelated to their event times
        event_us = draw(st.integers(0, 6)) * unit_us + draw(st.sampled_from([0, 0, 1, unit_us - 1]))
        row: dict[str, Any] = {
            id_key: draw(st.sampled_from(IDS)),
            "tessera_event_time": event_us,
            "tessera_seq": seq,
            "is_deleted": draw(st.sampled_from([False, False, False, True])),
        }
        expiry = draw(st.sampled_from(["default", "default", "null", "explicit"]))
        if expiry == "null":
            row["tessera_expires_at"] = None
        elif expiry == "explicit":
            row["tessera_expires_at"] = event_us + draw(st.integers(0, 6)) * unit_us
        rows.append(row)
    return rows


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    # Half a day apart spreads rows over several event_date partitions; a second does not.
    unit_us = draw(st.sampled_from([S, 43_200 * S]))
    ttl_units = draw(st.sampled_from([None, 2, 5]))
    users = draw(histories(unit_us, "id"))
    for r in users:
        r["clicks"] = draw(st.none() | st.integers(-3, 3))
        r["name"] = draw(st.none() | st.sampled_from(["x", "y", ""]))
        r["score"] = draw(st.none() | st.floats(-1, 1, allow_nan=False))
    items = draw(st.none() | histories(unit_us, "item_id"))  # None: the group has no files
    for r in items or []:
        r["price"] = draw(st.none() | st.floats(0, 10, allow_nan=False))
    # Most spine rows sit at and around the instants where a row's answer changes (its event
    # time, its expiry), for that row's id; the others are anywhere, or null.
    ttl_us = None if ttl_units is None else ttl_units * unit_us
    spine = []
    for i in range(draw(st.integers(0, 14))):
        anchors = users + (items or [])
        if anchors and draw(st.integers(0, 4)) > 0:
            r = draw(st.sampled_from(anchors))
            e = r["tessera_event_time"]
            expires = r.get("tessera_expires_at", e + ttl_us if ttl_us else None)
            instants = [e - 1, e, e + 1] + ([] if expires is None else [expires - 1, expires])
            t_us = draw(st.sampled_from(instants))
            user_id = r.get("id") or draw(st.sampled_from(SPINE_IDS))
            item_id = r.get("item_id") or draw(st.sampled_from(SPINE_IDS))
        else:
            t_us = draw(st.none() | st.integers(-unit_us, 10 * unit_us))
            user_id = draw(st.sampled_from(SPINE_IDS))
            item_id = draw(st.sampled_from(SPINE_IDS))
        spine.append({"id": user_id, "item": item_id, "t_us": t_us, "label": i})
    if spine and draw(st.booleans()):
        spine += draw(st.lists(st.sampled_from(spine), max_size=4))  # duplicate rows
    return {
        "unit_us": unit_us,
        "ttl_s": None if ttl_units is None else ttl_units * unit_us // S,
        "users": users,
        "items": items,
        "spine": spine,
        "v1_rows": draw(st.integers(0, len(users))),  # written before "score" existed
        "rows_per_file": draw(st.sampled_from([None, 1, 3])),
        "seq_order": draw(st.booleans()),
        "threads": draw(st.sampled_from([1, 2])),
        "as_of_seq": draw(st.none() | st.integers(0, len(users) + 1)),
        "prefix": draw(st.booleans()),
    }


_dirs = itertools.count()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("pit_properties")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sc=scenarios())
def test_builder_equals_brute_force_reference(sc: dict[str, Any], base_dir: Path) -> None:
    root = base_dir / f"s{next(_dirs)}"
    v1 = users_group(sc["ttl_s"], with_score=False)
    v2 = users_group(sc["ttl_s"], with_score=True)
    rpf, so = sc["rows_per_file"], sc["seq_order"]
    old, new = sc["users"][: sc["v1_rows"]], sc["users"][sc["v1_rows"] :]
    # The files of version 1 have no "score" column at all (a feature added later).
    history = write_history(
        root,
        v1,
        [{k: v for k, v in r.items() if k != "score"} for r in old],
        rows_per_file=rpf,
        seq_order=so,
    )
    history = [{**r, "score": None} for r in history]
    history += write_history(root, v2, new, rows_per_file=rpf, seq_order=so)
    if not sc["users"]:
        (root / "users").mkdir(parents=True, exist_ok=True)
        (root / "users" / "_group.json").write_text(v2.model_dump_json())
    items_history: list[dict[str, Any]] = []
    if sc["items"] is None:
        (root / "items").mkdir(parents=True)
        (root / "items" / "_group.json").write_text(ITEMS.model_dump_json())
    else:
        items_history = write_history(root, ITEMS, sc["items"], rows_per_file=rpf, seq_order=so)

    spine = pa.table(
        {
            "id": pa.array([r["id"] for r in sc["spine"]], pa.string()),
            "item": pa.array([r["item"] for r in sc["spine"]], pa.string()),
            "t": pa.array([r["t_us"] for r in sc["spine"]], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "label": pa.array([r["label"] for r in sc["spine"]], pa.int64()),
        }
    )
    as_of_us = None if sc["as_of_seq"] is None else BASE_WRITE_US + sc["as_of_seq"] * 1000
    # "ts" (the event time feature) is set on delete markers too: it must read as null there.
    user_features = ["ts", "clicks", "name", "score"]
    with OfflineStore(root, progress=False, threads=sc["threads"]) as off:
        got = off.dataset(
            spine,
            timestamp="t",
            features={"users": user_features, "items": ["price"]},
            on={"items": "item"},
            as_of=None if as_of_us is None else as_of_us / S,
            prefix_group=sc["prefix"],
        ).to_arrow()

    users_ref = reference_point_in_time(
        history, v2, user_features, [(r["id"], r["t_us"]) for r in sc["spine"]], as_of_us=as_of_us
    )
    items_ref = reference_point_in_time(
        items_history,
        ITEMS,
        ["price"],
        [(r["item"], r["t_us"]) for r in sc["spine"]],
        as_of_us=as_of_us,
    )
    p = "users__" if sc["prefix"] else ""
    q = "items__" if sc["prefix"] else ""
    rows = got.to_pylist()
    assert len(rows) == len(sc["spine"])
    for i, (row, s, u, it) in enumerate(zip(rows, sc["spine"], users_ref, items_ref, strict=True)):
        assert (row["id"], row["item"], row["label"]) == (s["id"], s["item"], s["label"]), i
        want = {**{p + k: v for k, v in u.items()}, q + "price": it["price"]}
        assert {k: row[k] for k in want} == want, (i, s)
