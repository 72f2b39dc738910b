"""Raw gRPC / HTTP helpers for tests that exercise the wire contract directly (no SDK)."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tessera.core.values import from_record, to_record
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.proto.v1 import feature_store_pb2_grpc as pb_grpc
from tessera.server.front import PROCESS_SERVICE

USERS_FEATURES = [
    {"feature_name": "user_id", "feature_type": "String"},
    {"feature_name": "ts", "feature_type": "Fractional"},
    {"feature_name": "clicks", "feature_type": "Integral"},
    {"feature_name": "ctr", "feature_type": "Fractional"},
    {"feature_name": "name", "feature_type": "String"},
    {"feature_name": "tags", "feature_type": "String", "collection_type": "List"},
    {"feature_name": "ids", "feature_type": "Integral", "collection_type": "Set"},
    {"feature_name": "scores", "feature_type": "Fractional", "collection_type": "List"},
    {
        "feature_name": "emb",
        "feature_type": "Fractional",
        "collection_type": "Vector",
        "collection_config": {"vector_config": {"dimension": 4}},
    },
]


class Wire:
    """A channel, a stub and an HTTP client on one server."""

    def __init__(self, grpc_target: str, http_url: str) -> None:
        self.channel = grpc.insecure_channel(grpc_target)
        self.stub = pb_grpc.FeatureStoreStub(self.channel)
        self.http = httpx.Client(base_url=http_url, timeout=10)

    def close(self) -> None:
        self.channel.close()
        self.http.close()

    def create_group(
        self,
        name: str,
        features: list[dict[str, Any]] | None = None,
        ttl_s: int | None = None,
        record_identifier: str = "user_id",
        event_time: str = "ts",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "feature_group_name": name,
            "record_identifier_feature_name": record_identifier,
            "event_time_feature_name": event_time,
            "feature_definitions": features or USERS_FEATURES,
        }
        if ttl_s is not None:
            body["online_store_config"] = {
                "enable_online_store": True,
                "ttl_duration": {"unit": "Seconds", "value": ttl_s},
            }
        resp = self.http.post("/v1/feature-groups", json=body)
        if resp.status_code != 201:
            raise AssertionError(f"create failed: {resp.status_code} {resp.text}")
        return resp.json()

    def put(self, group: str, values: dict[str, Any], ttl_s: float | None = None) -> bool:
        req = pb.PutRecordRequest(feature_group_name=group, record=to_record(values))
        if ttl_s is not None:
            req.ttl_s = ttl_s
        return self.stub.PutRecord(req, timeout=10).applied

    def get(self, group: str, record_id: str, features: list[str] | None = None) -> Any:
        resp = self.stub.GetRecord(
            pb.GetRecordRequest(
                feature_group_name=group, record_identifier=record_id, feature_names=features
            ),
            timeout=10,
        )
        return from_record(resp.record) if resp.HasField("record") else None

    def delete(self, group: str, record_id: str, event_time: str, hard: bool = False) -> bool:
        mode = pb.DELETION_MODE_HARD_DELETE if hard else pb.DELETION_MODE_SOFT_DELETE
        return self.stub.DeleteRecord(
            pb.DeleteRecordRequest(
                feature_group_name=group,
                record_identifier=record_id,
                event_time=event_time,
                deletion_mode=mode,
            ),
            timeout=10,
        ).applied


def rpc_error(call: Any) -> grpc.RpcError:
    """Run `call` and return the RpcError it raised (failing if it did not raise)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("expected the call to fail with a gRPC error")


def metric_total(text: str, sample: str, **labels: str) -> float | None:
    """The sum of the samples named `sample` with exactly `labels` in a /metrics exposition,
    over every `process` unless `labels` names one (--workers N labels each process's samples;
    --workers 1 does not); None when there is no such sample."""
    by_process = "process" in labels
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels == (
            s.labels if by_process else {k: v for k, v in s.labels.items() if k != "process"})
    ]
    return sum(found) if found else None


Metadata = tuple[tuple[str, str], ...] | None


def pid_of(channel: grpc.Channel, metadata: Metadata = None) -> int:
    """The pid of the serving process this channel's connection landed on (--workers N);
    `metadata`: the credentials a server with --auth needs."""
    return int(channel.unary_unary(f"/{PROCESS_SERVICE}/Pid")(b"", timeout=10,
                                                              metadata=metadata))


def channels_on_each(grpc_target: str, processes: int, tries: int = 64,
                     metadata: Metadata = None) -> dict[int, grpc.Channel]:
    """One channel per serving process of --workers `processes` (the kernel spreads new
    connections over them), by pid."""
    found: dict[int, grpc.Channel] = {}
    for i in range(tries):
        # a channel option of its own: grpc shares subchannels (connections) otherwise
        ch = grpc.insecure_channel(grpc_target, options=[("tessera.test.channel", i)])
        pid = pid_of(ch, metadata)
        if pid in found:
            ch.close()
        else:
            found[pid] = ch
        if len(found) == processes:
            break
    return found
