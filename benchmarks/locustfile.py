"""Locust users for Tessera's gRPC API: a weighted GetRecord / BatchGetRecord / PutRecord mix on
fixed-seed record ids, one gRPC channel per user, every call reported to Locust.

Against a server with the demo group loaded by this file (`--tessera-setup`):

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 16 -r 4 -t 30s \
        --host 127.0.0.1:50051 --tessera-setup --tessera-http http://127.0.0.1:8080

Against a group loaded by `python -m benchmarks.run --keep-data` (or any group with the
benchmark's schema and ids u00000000...): `--tessera-group bench_users --tessera-ids 0:1000000`.
Records follow benchmarks/data.py (10 features); a GetRecord that finds no record, or another
record than asked for, counts as a failure.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.runners import WorkerRunner

grpc_gevent.init_gevent()  # grpc's I/O on gevent, before any channel exists

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks` from any cwd
from benchmarks import data  # noqa: E402
from tessera.proto.v1 import feature_store_pb2 as pb  # noqa: E402
from tessera.proto.v1 import feature_store_pb2_grpc  # noqa: E402

DEMO_GROUP = "locust_demo"


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    g = parser.add_argument_group("Tessera")
    g.add_argument("--tessera-group", default=DEMO_GROUP, help="feature group to drive")
    g.add_argument("--tessera-ids", default="0:10000",
                   help="record indexes lo:hi; ids are u%%08d of those (benchmarks/data.py)")
    g.add_argument("--tessera-seed", type=int, default=7, help="seed of the ids each user picks")
    g.add_argument("--tessera-batch", type=int, default=100, help="ids per BatchGetRecord")
    g.add_argument("--tessera-weights", default="get=8,batch=1,put=1",
                   help="task weights: get=N,batch=N,put=N (put=0: read only)")
    g.add_argument("--tessera-setup", action="store_true",
                   help="create the group (if missing) and load the --tessera-ids records first")
    g.add_argument("--tessera-http", default="http://127.0.0.1:8080",
                   help="the server's HTTP control plane, for --tessera-setup")


def _id_range(options: Any) -> range:
    lo, hi = (int(x) for x in options.tessera_ids.split(":"))
    return range(lo, hi)


@events.init.add_listener
def _weights(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    weights = {k: int(v) for k, v in (kv.split("=") for kv in opts.tessera_weights.split(","))}
    TesseraUser.tasks = [fn for name, fn in (("get", TesseraUser.get_record),
                                             ("batch", TesseraUser.batch_get_record),
                                             ("put", TesseraUser.put_record))
                         for _ in range(weights.get(name, 0))]
    # At the end of a run, let each user finish the call it is in rather than kill it: an
    # abandoned call is cancelled on the server, and a write cancelled while it waits for the
    # group commit is not a write the server should be made to handle at every test's end.
    environment.stop_timeout = max(environment.stop_timeout or 0.0, 15.0)


@events.test_start.add_listener
def _setup(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None or not opts.tessera_setup or isinstance(environment.runner, WorkerRunner):
        return
    import httpx

    group, ids = opts.tessera_group, _id_range(opts)
    r = httpx.post(f"{opts.tessera_http}/v1/feature-groups",
                   json=data.group_definition(group), timeout=30)
    if r.status_code not in (201, 409):  # 409: it exists already (records are rewritten as is)
        raise RuntimeError(f"creating '{group}' failed: {r.status_code} {r.text}")
    with grpc.insecure_channel(environment.host) as channel:
        put = feature_store_pb2_grpc.FeatureStoreStub(channel).PutRecords
        for lo in range(ids.start, ids.stop, 1000):
            chunk = range(lo, min(lo + 1000, ids.stop))
            req = pb.PutRecordsRequest(feature_group_name=group,
                                       records=[data.record(i) for i in chunk])
            if put(req, timeout=120).written != len(chunk):
                raise RuntimeError(f"setup: PutRecords did not write records {lo}..")
    print(f"tessera setup: group '{group}' has records {ids.start}..{ids.stop - 1}", flush=True)


class TesseraUser(User):
    """One client: its own channel and its own fixed-seed stream of record ids."""

    wait_time = between(0, 0.01)
    _numbers = itertools.count()

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.group_name = opts.tessera_group
        self.ids = _id_range(opts)
        self.batch = opts.tessera_batch
        self.rng = random.Random(opts.tessera_seed * 1_000_003 + next(self._numbers))
        self.channel = grpc.insecure_channel(self.host)
        self.stub = feature_store_pb2_grpc.FeatureStoreStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _pick(self) -> int:
        return self.ids.start + self.rng.randrange(len(self.ids))

    def _call(self, name: str, fn: Callable[[], Any], check: Callable[[Any], str | None]) -> None:
        start = time.perf_counter()
        exc: Exception | None = None
        length = 0
        try:
            resp = fn()
            length = resp.ByteSize()
            problem = check(resp)
            if problem:
                exc = AssertionError(problem)
        except grpc.RpcError as e:
            exc = e
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, exception=exc, context={"group": self.group_name},
        )

    @task(8)
    def get_record(self) -> None:
        i = self._pick()
        rid = data.record_id(i)
        req = pb.GetRecordRequest(feature_group_name=self.group_name, record_identifier=rid)

        def check(resp: pb.GetRecordResponse) -> str | None:
            if not resp.HasField("record"):
                return f"GetRecord {rid}: not found"
            got = next((f.string_value for f in resp.record.features
                        if f.feature_name == "user_id"), None)
            return None if got == rid else f"GetRecord {rid}: got record {got}"

        self._call("GetRecord", lambda: self.stub.GetRecord(req, timeout=10), check)

    @task(1)
    def batch_get_record(self) -> None:
        n = min(self.batch, len(self.ids))
        rids = {data.record_id(self._pick()) for _ in range(n)}
        req = pb.BatchGetRecordRequest()
        req.identifiers.add(feature_group_name=self.group_name, record_identifiers=sorted(rids))

        def check(resp: pb.BatchGetRecordResponse) -> str | None:
            if resp.errors or len(resp.records) != len(rids):
                return (f"BatchGetRecord: {len(resp.records)} of {len(rids)} found, "
                        f"{len(resp.errors)} errors")
            return None

        self._call("BatchGetRecord(100)" if n == 100 else f"BatchGetRecord({n})",
                   lambda: self.stub.BatchGetRecord(req, timeout=10), check)

    @task(1)
    def put_record(self) -> None:
        i = self._pick()  # rewrites record i as it is: reads keep finding what they expect
        req = pb.PutRecordRequest(feature_group_name=self.group_name, record=data.record(i))
        self._call("PutRecord", lambda: self.stub.PutRecord(req, timeout=10),
                   lambda resp: None if resp.applied else f"PutRecord {i}: not applied")
