"""Correctness checks of a benchmark run: real responses decoded with grpcio and compared to the
records that were put, and the server's own per-status-code counters (h2load cannot read
grpc-status, so errors are counted on the server side)."""

from __future__ import annotations

import re

import grpc
import httpx

from benchmarks import data
from tessera.proto.v1 import feature_store_pb2 as pb

GET = "/tessera.v1.FeatureStore/GetRecord"
BATCH_GET = "/tessera.v1.FeatureStore/BatchGetRecord"
PUT_RECORDS = "/tessera.v1.FeatureStore/PutRecords"
ECHO = "/tessera.v1.Diagnostics/Echo"

_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.e+-]+)$', re.M)


class CheckFailed(RuntimeError):
    """A benchmark's result is wrong: its figures must not be reported as valid."""


def scrape(http_url: str) -> dict[tuple[str, ...], float]:
    """Counter samples of /metrics: {(metric, label=value, ...): value}."""
    text = httpx.get(f"{http_url}/metrics", timeout=30).raise_for_status().text
    out: dict[tuple[str, ...], float] = {}
    for name, labels, value in _SAMPLE.findall(text):
        out[(name, *sorted(labels.split(",")))] = float(value)
    return out


def unlabeled(http_url: str, metric: str) -> float | None:
    """The value of a metric without labels (a plain gauge), or None if the server has none."""
    text = httpx.get(f"{http_url}/metrics", timeout=30).raise_for_status().text
    m = re.search(rf"^{re.escape(metric)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def grpc_calls(samples: dict[tuple[str, ...], float]) -> dict[str, dict[str, int]]:
    """tessera_grpc_requests_total as {method: {code: count}}."""
    out: dict[str, dict[str, int]] = {}
    for key, value in samples.items():
        if key[0] != "tessera_grpc_requests_total":
            continue
        labels = dict(kv.split("=", 1) for kv in key[1:])
        method, code = labels["method"].strip('"'), labels["code"].strip('"')
        out.setdefault(method, {})[code] = int(value)
    return out


def calls_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    """Per method and code, calls counted between two scrapes (nonzero only)."""
    out: dict[str, dict[str, int]] = {}
    for method, codes in after.items():
        for code, n in codes.items():
            d = n - before.get(method, {}).get(code, 0)
            if d:
                out.setdefault(method, {})[code] = d
    return out


def errors_in(delta: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {m: {c: n for c, n in codes.items() if c != "OK"}
            for m, codes in delta.items() if any(c != "OK" for c in codes)}


def records_written(samples: dict[tuple[str, ...], float], group: str) -> int:
    key = ("tessera_records_written_total", f'feature_group="{group}"', 'outcome="applied"')
    return int(samples.get(key, 0))


class Checker:
    """Sends one request the way the benchmark does, through grpcio, and checks the answer."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)])

    def close(self) -> None:
        self._channel.close()

    def _call(self, path: str, body: bytes) -> bytes:
        return self._channel.unary_unary(path)(body, timeout=30)

    def get_record(self, body: bytes) -> int:
        """Check a GetRecord body's answer is the record put; return the response size."""
        rid = pb.GetRecordRequest.FromString(body).record_identifier
        raw = self._call(GET, body)
        resp = pb.GetRecordResponse.FromString(raw)
        if not resp.HasField("record") or not data.matches(data.index_of(rid), resp.record):
            raise CheckFailed(f"GetRecord {rid}: the response is not the record put")
        return len(raw)

    def batch_get_record(self, body: bytes) -> None:
        req = pb.BatchGetRecordRequest.FromString(body)
        want = list(req.identifiers[0].record_identifiers)
        resp = pb.BatchGetRecordResponse.FromString(self._call(BATCH_GET, body))
        got = {r.record_identifier: r.record for r in resp.records}
        if resp.errors or resp.unprocessed_identifiers or set(got) != set(want):
            raise CheckFailed(f"BatchGetRecord: {len(got)} of {len(want)} records, "
                              f"{len(resp.errors)} errors, "
                              f"{len(resp.unprocessed_identifiers)} unprocessed")
        bad = [rid for rid, rec in got.items() if not data.matches(data.index_of(rid), rec)]
        if bad:
            raise CheckFailed(f"BatchGetRecord: records differ from those put: {bad[:5]}")

    def put_records(self, body: bytes) -> None:
        n = len(pb.PutRecordsRequest.FromString(body).records)
        resp = pb.PutRecordsResponse.FromString(self._call(PUT_RECORDS, body))
        if resp.written != n:
            raise CheckFailed(f"PutRecords: wrote {resp.written} of {n}")

    def echo(self, body: bytes) -> int:
        raw = self._call(ECHO, body)
        if raw != body:
            raise CheckFailed("Echo: the response is not the request")
        return len(raw)

    def sample_gets(self, indexes: list[int]) -> None:
        for i in indexes:
            self.get_record(data.get_request(i))
