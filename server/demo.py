"""`tessera demo`: a short tour against a running server, printing what it does."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tessera.client import FeatureStoreClient


def run_demo(grpc: str, http: str, api_key: str | None = None, tls_ca: Path | None = None,
             tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """The tour against the server at `grpc` and `http`; the API key and TLS files as for
    FeatureStoreClient."""

    def say(text: str) -> None:
        print(f"demo: {text}", flush=True)

    group = "demo_users"
    with FeatureStoreClient(grpc=grpc, http=http, api_key=api_key, tls_ca=tls_ca,
                            tls_cert=tls_cert, tls_key=tls_key) as fs:
        if any(g["feature_group_name"] == group for g in fs.list_feature_groups()):
            fs.delete_feature_group(group)
            say(f"deleted the previous run's feature group '{group}'")
        fs.create_feature_group(
            group,
            record_identifier="user_id",
            event_time="ts",
            features={"user_id": "String", "ts": "Fractional", "clicks": "Integral",
                      "ctr": "Fractional", "tags": "List[String]", "emb": "Vector[4]"},
            description="users of the Tessera demo",
            aggregations=[
                {"name": "clicks_sum_1h", "source": "clicks", "function": "sum", "window": "1h"},
                {"name": "events_1h", "function": "count", "window": "1h"},
                {"name": "ctr_mean_1d", "source": "ctr", "function": "mean", "window": "1d"},
            ],
        )
        say(f"created feature group '{group}': user_id (String), ts (Fractional event time), "
            "clicks, ctr, tags, emb (Vector[4]), and aggregations clicks_sum_1h, events_1h, "
            "ctr_mean_1d")
        now = time.time()
        fs.put_record(group, {"user_id": "u1", "ts": now, "clicks": 3, "ctr": 0.1,
                              "tags": ["new"], "emb": [0.1, 0.2, 0.3, 0.4]})
        say("put u1 with clicks=3")
        n = fs.put_records(group, (
            {"user_id": f"u{i}", "ts": now, "clicks": i, "ctr": i / 100, "tags": ["bulk"],
             "emb": np.full(4, i / 10, dtype=np.float32)}
            for i in range(2, 1002)
        ))
        say(f"put_records wrote {n} records in bulk")
        applied = fs.put_record(group, {"user_id": "u1", "ts": now - 1800, "clicks": 99})
        say(f"put u1 with an event time 30 minutes older: applied={applied} (the newer record "
            "stays; the put still counts in u1's aggregates)")
        record = fs.get_record(group, "u1")
        say(f"get u1 -> {_show(record)}")
        batch = fs.batch_get_record({group: ["u2", "u500", "nobody"]}, features=["clicks"])
        say("batch_get u2, u500, nobody -> "
            + ", ".join(f"{r['record_identifier']}: clicks={r['record']['clicks']}"
                        for r in batch.records)
            + " ('nobody' is simply absent)")
        fs.delete_record(group, "u2", event_time=time.time(), mode="soft")
        say(f"soft-deleted u2; get u2 -> {fs.get_record(group, 'u2')}")
    say("done: the group stays; try `tessera get demo_users u1`")


def _show(record: dict[str, object] | None) -> str:
    if record is None:
        return "None"
    return "{" + ", ".join(
        f"{k}: {[round(float(x), 4) for x in v] if isinstance(v, np.ndarray) else v!r}"
        for k, v in record.items()
    ) + "}"
