"""Feature group lifecycle, durability across kill -9, graceful shutdown and TTL: each test runs
its own real server process."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tessera.core.values import to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tests.integration.wire_helpers import Wire, rpc_error
from tests.serverproc import ServerProcess

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


def test_feature_group_lifecycle(server, unique_group_name: str) -> None:
    w = Wire(server.grpc_target, server.http_url)
    name = unique_group_name
    created = w.create_group(name)
    assert created["feature_group_status"] == "Created" and created["version"] == 1
    assert w.http.get(f"/v1/feature-groups/{name}").json()["feature_definitions"] == (
        created["feature_definitions"]
    )
    listed = w.http.get("/v1/feature-groups", params={"name_contains": name}).json()
    assert [g["feature_group_name"] for g in listed["feature_groups"]] == [name]

    # Adding a feature is a new version; the new feature is writable at once.
    resp = w.http.patch(f"/v1/feature-groups/{name}", json={
        "feature_additions": [{"feature_name": "country", "feature_type": "String"}],
        "description": "v2",
    })
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 2 and resp.json()["description"] == "v2"
    w.put(name, {"user_id": "u1", "ts": T0, "country": "NL"})
    assert w.get(name, "u1")["country"] == "NL"

    # Redefining (retyping) an existing feature is refused.
    resp = w.http.patch(f"/v1/feature-groups/{name}", json={
        "feature_additions": [{"feature_name": "clicks", "feature_type": "String"}]})
    assert resp.status_code == 409
    assert "feature 'clicks' already exists" in resp.json()["error"]["message"]

    # Deleting removes the records: a new group of the same name starts empty.
    assert w.http.delete(f"/v1/feature-groups/{name}").status_code == 204
    err = rpc_error(lambda: w.get(name, "u1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    w.create_group(name)
    assert w.get(name, "u1") is None
    assert w.http.get("/openapi.json").json()["info"]["title"] == "Tessera control plane"
    w.close()


def test_every_acknowledged_write_survives_kill_9(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    w.create_group("crash")
    acked: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"w{worker}-{i % 50}"
            try:
                w.put("crash", {"user_id": rid, "ts": T0 + i, "clicks": i})
            except grpc.RpcError:
                return  # the server died: this write was not acknowledged
            with lock:
                acked[rid] = i
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    fresh_server.kill()  # SIGKILL mid-stream
    stop.set()
    for t in threads:
        t.join()
    w.close()
    assert len(acked) > 50

    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    for rid, clicks in acked.items():
        got = w.get("crash", rid)
        # The acknowledged value, or a later write that reached the disk before the kill.
        assert got is not None and got["clicks"] >= clicks, rid
    w.close()


def test_sigterm_finishes_in_flight_calls_and_closes_cleanly(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    w.create_group("graceful")
    records = [to_record({"user_id": f"u{i}", "ts": T0, "clicks": i}) for i in range(20_000)]
    future = w.stub.PutRecords.future(
        pb.PutRecordsRequest(feature_group_name="graceful", records=records), timeout=30
    )
    time.sleep(0.05)
    assert fresh_server.stop() == 0
    assert future.result().written == 20_000  # the in-flight call completed
    w.close()
    log = fresh_server.log()
    assert "stopped cleanly" in log

    fresh_server.start()
    w = Wire(fresh_server.grpc_target, fresh_server.http_url)
    assert w.get("graceful", "u19999")["clicks"] == 19_999
    assert w.http.get("/v1/feature-groups/graceful").status_code == 200  # registry is durable
    w.close()


def test_ttl_expired_records_read_as_not_found_and_are_purged(tmp_path) -> None:
    proc = ServerProcess(
        tmp_path / "data", extra_env={"TESSERA_ONLINE_STORE__TTL_PURGE_INTERVAL_S": "0.2"}
    ).start()
    try:
        w = Wire(proc.grpc_target, proc.http_url)
        w.create_group("ttl", ttl_s=3600)  # group default: an hour
        now = time.time()
        w.put("ttl", {"user_id": "old", "ts": now - 7200, "clicks": 1})  # expired on arrival
        w.put("ttl", {"user_id": "live", "ts": now, "clicks": 2})
        w.put("ttl", {"user_id": "short", "ts": now, "clicks": 3}, ttl_s=1.0)  # per record
        assert w.get("ttl", "old") is None
        assert w.get("ttl", "live")["clicks"] == 2

        resp = w.stub.GetRecord(pb.GetRecordRequest(
            feature_group_name="ttl", record_identifier="short", expiration_time_response=True))
        assert resp.expires_at_us == round(now * 1e6) + 1_000_000
        assert w.get("ttl", "short")["clicks"] == 3
        time.sleep(1.2)
        assert w.get("ttl", "short") is None  # expired: hidden at once

        # The background purge removes expired records (and only those).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = w.http.get("/metrics").text
            line = next(x for x in text.splitlines()
                        if x.startswith("tessera_ttl_purged_index_entries "))
            if float(line.split()[1]) >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the TTL purge did not run")
        w.close()
    finally:
        proc.stop()
    from tessera.core.keys import record_key
    from tessera.server.rocksdb import open_rocksdb

    rocks = open_rocksdb(tmp_path / "data" / "online")
    try:
        keys = {k[4:] for k in rocks.records.keys()}
        assert keys == {b"live"}
        assert record_key(1, "live") in rocks.records
    finally:
        rocks.close()
