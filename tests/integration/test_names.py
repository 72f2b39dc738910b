"""Names that used to brick the server, against a real `tessera serve`: each is refused with a
status and a message naming it, nothing of it is left behind, and the server keeps serving and
restarts on its data dir. A data dir holding groups made under the older rule still opens: the
groups are quarantined, keep serving, and deleting them (HTTP or SDK) fixes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.client import FeatureStoreClient
from tessera.core.schema import FeatureGroup
from tessera.server.registry import group_key
from tessera.server.rocksdb import open_rocksdb
from tests.integration.wire_helpers import Wire, rpc_error
from tests.serverproc import ServerProcess

LONG_NAME = "a" + "_" * 4998 + "b"  # 5,000 characters, all allowed ones


def _body(name: str, features: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "feature_group_name": name,
        "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts",
        "feature_definitions": [
            {"feature_name": "id", "feature_type": "String"},
            {"feature_name": "ts", "feature_type": "Fractional"},
            *({"feature_name": f, "feature_type": "Integral"}
              for f in (["clicks"] if features is None else features)),
        ],
    }
    body.update(overrides)
    return body


# (case, body, status, message in the error)
REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("features differing in case", _body("g1", ["clicks", "Clicks"]), 422,
     "feature 'Clicks' and feature 'clicks' differ only in case; names are compared "
     "case-insensitively"),
    *((f"reserved {f}", _body("g1", ["clicks", f]), 422,
       f"feature_name '{f}' is reserved for the offline store's columns")
      for f in ("WRITE_TIME", "IS_DELETED", "Event_Date", "TESSERA_SEQ")),
    ("feature ID beside the record identifier id", _body("g1", ["ID"]), 422,
     "feature 'ID' and feature 'id' differ only in case"),
    ("aggregation named like a feature", _body(
        "g1", aggregations=[{"name": "CLICKS", "function": "count", "window": "1h"}]), 422,
     "aggregation 'CLICKS' differs from feature 'clicks' only in case"),
    ("group name with a trailing newline", _body("users\n"), 422,
     "feature_group_name 'users\\n' is not valid; allowed: 1-64 characters"),
    ("feature name with a trailing newline", _body("g1", ["v\n"]), 422,
     "feature_name 'v\\n' is not valid"),
    ("5,000-character group name", _body(LONG_NAME), 422,
     "feature_group_name 'a_______________________________________________________________...' "
     "(5,000 characters) is not valid; allowed: 1-64 characters"),
    ("TTL of 10^30", _body("g1", online_store_config={
        "ttl_duration": {"unit": "Seconds", "value": 10**30}}), 422,
     f"online_store_config.ttl_duration {10**30} Seconds is out of range; allowed: 1 second to "
     "31,536,000,000 seconds"),
    ("aggregation lateness past int64", _body("g1", aggregations=[
        {"name": "n", "function": "count", "window": "1h"}],
        aggregation_config={"lateness": "999999999d"}), 422,
     "aggregation_config.lateness '999999999d' is out of range"),
]


def _post(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800, which is valid JSON (httpx's json= cannot
    # encode one).
    return http.post("/v1/feature-groups", content=json.dumps(body).encode(),
                     headers={"content-type": "application/json"})


@pytest.mark.parametrize(("case", "body", "status", "message"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_a_name_or_duration_breaking_the_rule_is_refused_with_its_reason(
    wire: Wire, case: str, body: dict[str, Any], status: int, message: str
) -> None:
    resp = _post(wire.http, body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]
    names = [g["feature_group_name"] for g in wire.http.get("/v1/feature-groups").json()[
        "feature_groups"]]
    assert body["feature_group_name"] not in names


def test_a_lone_surrogate_in_a_group_name_is_422(wire: Wire) -> None:
    resp = _post(wire.http, _body("users\ud800"))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"].startswith(
        "feature_group_name 'users\\ud800' is not valid")


def test_group_names_differing_only_in_case_are_a_conflict(
    wire: Wire, unique_group_name: str
) -> None:
    assert _post(wire.http, _body(unique_group_name)).status_code == 201
    resp = _post(wire.http, _body(unique_group_name.upper()))
    assert resp.status_code == 409
    assert resp.json()["error"]["message"] == (
        f"feature group '{unique_group_name.upper()}' differs from the existing group "
        f"'{unique_group_name}' only in case; names are compared case-insensitively, as the "
        "offline store's SQL compares them")
    assert wire.http.get(f"/v1/feature-groups/{unique_group_name.upper()}").status_code == 404


def test_a_feature_added_in_another_case_is_a_conflict(wire: Wire, unique_group_name: str) -> None:
    assert _post(wire.http, _body(unique_group_name)).status_code == 201
    resp = wire.http.patch(f"/v1/feature-groups/{unique_group_name}", json={
        "feature_additions": [{"feature_name": "CLICKS", "feature_type": "Integral"}]})
    assert resp.status_code == 409
    assert "feature 'CLICKS' differs from the group's feature 'clicks' only in case" in (
        resp.json()["error"]["message"])


def test_a_records_ttl_past_the_bound_is_invalid_argument(
    wire: Wire, unique_group_name: str
) -> None:
    assert _post(wire.http, _body(unique_group_name)).status_code == 201
    err = rpc_error(lambda: wire.put(unique_group_name, {"id": "a", "ts": 1.0}, ttl_s=1e30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl_s 1e+30 is out of range" in (err.details() or "")


def test_after_every_refusal_the_server_serves_and_restarts(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    try:
        for _, body, status, _message in REFUSED:
            assert _post(w.http, body).status_code == status
        assert _post(w.http, _body("users\ud800")).status_code == 422
        assert _post(w.http, _body("Users")).status_code == 201
        assert _post(w.http, _body("USERS")).status_code == 409
        assert w.put("Users", {"id": "u1", "ts": 1.0, "clicks": 3})
        listed = w.http.get("/v1/feature-groups").json()["feature_groups"]
        assert [g["feature_group_name"] for g in listed] == ["Users"]
    finally:
        w.close()
    assert fresh_server.stop() == 0
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    try:
        assert w.get("Users", "u1")["clicks"] == 3
        assert "quarantined" not in w.http.get("/v1/feature-groups/Users").json()
    finally:
        w.close()
    offline = fresh_server.data_dir / "offline"
    assert sorted(p.name for p in offline.iterdir() if not p.name.startswith(".")) == ["Users"]


def _rename_in_registry(data_dir: Path, old: str, new: str) -> None:
    """What an older rule let through: the group `old` stored as `new`, same id and records
    (key layout: group/<name> -> FeatureGroup JSON)."""
    rocks = open_rocksdb(data_dir / "online", block_cache_mb=8, write_buffer_mb=4)
    try:
        group = FeatureGroup.model_validate_json(rocks.registry[group_key(old)])
        definition = group.definition.model_copy(update={"feature_group_name": new})
        del rocks.registry[group_key(old)]
        rocks.registry[group_key(new)] = group.model_copy(
            update={"definition": definition}).model_dump_json().encode()
    finally:
        rocks.close()


def _metric(http: httpx.Client, name: str) -> float:
    """The gauge `name`: with --workers N each process reports its view of the registry (the
    writer's, the owner's; the serving processes' secondaries catch up within milliseconds),
    so the value once every process agrees."""
    deadline = time.monotonic() + 5
    while True:
        text = http.get("/metrics").text
        values = {s.value for family in text_string_to_metric_families(text)
                  for s in family.samples if s.name == name}
        if len(values) == 1:
            return values.pop()
        assert time.monotonic() < deadline, f"the processes disagree on {name}: {values}"
        time.sleep(0.05)


def test_a_data_dir_with_groups_of_the_older_rule_opens_and_the_fix_works(
    fresh_server: ServerProcess,
) -> None:
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    try:
        for name in ("good", "long", "newline", "Cased"):
            assert _post(w.http, _body(name)).status_code == 201
            assert w.put(name, {"id": "u1", "ts": 1.0, "clicks": 7})
    finally:
        w.close()
    assert fresh_server.stop() == 0
    _rename_in_registry(fresh_server.data_dir, "long", LONG_NAME + "_c")  # 5,002 characters
    _rename_in_registry(fresh_server.data_dir, "newline", "newline\n")
    _rename_in_registry(fresh_server.data_dir, "Cased", "GOOD")

    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    long_name = LONG_NAME + "_c"
    try:
        listed = {g["feature_group_name"]: g for g in
                  w.http.get("/v1/feature-groups").json()["feature_groups"]}
        assert set(listed) == {"good", long_name, "newline\n", "GOOD"}
        assert "quarantined" not in listed["good"]
        assert "(5,002 characters) is not valid" in listed[long_name]["quarantined"]
        assert "'newline\\n' is not valid" in listed["newline\n"]["quarantined"]
        assert "differs only in case from the older group 'good'" in listed["GOOD"]["quarantined"]
        assert _metric(w.http, "tessera_feature_groups_quarantined") == 3
        assert "feature group 'GOOD' is quarantined" in fresh_server.log()
        # Every group keeps serving its records, the quarantined ones too.
        for name in listed:
            assert w.get(name, "u1")["clicks"] == 7
        assert w.put("good", {"id": "u2", "ts": 2.0, "clicks": 1})

        # The fix: delete them, over HTTP or with the SDK, whatever their names.
        assert w.http.delete(f"/v1/feature-groups/{long_name}").status_code == 204
        with FeatureStoreClient(grpc=fresh_server.grpc_target, http=fresh_server.http_url) as fs:
            fs.delete_feature_group("newline\n")
            fs.delete_feature_group("GOOD")
        assert _metric(w.http, "tessera_feature_groups_quarantined") == 0
        assert [g["feature_group_name"] for g in
                w.http.get("/v1/feature-groups").json()["feature_groups"]] == ["good"]
    finally:
        w.close()
    assert fresh_server.stop() == 0
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    try:
        assert _metric(w.http, "tessera_feature_groups_quarantined") == 0
        assert w.get("good", "u2")["clicks"] == 1
        assert _post(w.http, _body("GOOD")).status_code == 409
    finally:
        w.close()


def _tessera(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera.server", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_tessera_groups_rename_fixes_a_quarantined_group_keeping_its_records(
    fresh_server: ServerProcess,
) -> None:
    data = str(fresh_server.data_dir)
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    try:
        for name in ("long", "newline"):
            assert _post(w.http, _body(name)).status_code == 201
            assert w.put(name, {"id": "u1", "ts": 1.0, "clicks": 5})
    finally:
        w.close()
    assert fresh_server.stop() == 0
    long_name = LONG_NAME + "_c"
    _rename_in_registry(fresh_server.data_dir, "long", long_name)
    _rename_in_registry(fresh_server.data_dir, "newline", "newline\n")
    for folder in ("long", "newline"):  # as if the older server had made these groups
        shutil.rmtree(fresh_server.data_dir / "offline" / folder)
    fresh_server.start()  # publishes their folders: .unnamed/<id> for the long name
    assert fresh_server.stop() == 0
    long_id = 1  # the first group of this data dir

    listed = _tessera("groups", "list", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    assert f"#{long_id}\t'{long_name[:64]}...' (5,002 characters)\tQUARANTINED: " in listed.stdout
    running = fresh_server.start()
    refused = _tessera("groups", "rename", f"#{long_id}", "long_fixed", "--data-dir", data)
    assert refused.returncode == 2 and "stop it first" in refused.stderr
    assert running.stop() == 0
    bad = _tessera("groups", "rename", "newline\n", "Bad Name", "--data-dir", data)
    assert bad.returncode == 2 and "feature_group_name 'Bad Name' is not valid" in bad.stderr
    for old, new in ((f"#{long_id}", "long_fixed"), ("newline\n", "newline")):
        done = _tessera("groups", "rename", old, new, "--data-dir", data)
        assert done.returncode == 0, done.stderr
    offline = fresh_server.data_dir / "offline"
    assert not (offline / ".unnamed" / str(long_id)).exists()
    assert json.loads((offline / "long_fixed" / "_group.json").read_text())[
        "definition"]["feature_group_name"] == "long_fixed"

    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    try:
        listed_now = w.http.get("/v1/feature-groups").json()["feature_groups"]
        assert sorted(g["feature_group_name"] for g in listed_now) == ["long_fixed", "newline"]
        assert all("quarantined" not in g for g in listed_now)
        assert _metric(w.http, "tessera_feature_groups_quarantined") == 0
        assert w.get("long_fixed", "u1")["clicks"] == 5 and w.get("newline", "u1")["clicks"] == 5
    finally:
        w.close()
