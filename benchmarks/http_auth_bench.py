"""The cost of authentication at the HTTP edge, one command:

    .venv/bin/python -m benchmarks.http_auth_bench [--quick]

Two parts:

- `edge` (in this process, no sockets, so other work on the machine blurs it least): the
  `FastRouter` (server/http_fast.py) answering a fast route whose handler returns a constant,
  driven as ASGI, with authentication off, with `--auth` and a bearer API key (the real
  `KeyAuthenticator` over a real key store: the store's stat, the token's hash lookup, the
  route's cached permission check) and with a SigV4-signed SageMaker GetRecord (the signature
  verified over the raw path, query and headers: botocore signed it). Thread CPU per request of
  each, in alternating blocks, median of the rounds; `added_us` is what authentication adds to
  a request.
- `rest` (two real `tessera serve --workers 1` servers side by side with the same records, one
  with authentication off, one with `--auth`): REST GetRecord (JSON, HTTP/1.1) and the SageMaker
  GetRecord route driven by h2load at c=1 and c=16, segments interleaved (the order rotates
  each round); on the --auth server with `Authorization: Bearer <key>`, and the SageMaker route
  with a SigV4 signature made once per round (valid for 5 minutes, replayed). Per cell:
  calls/s, p50/p99, server CPU per call, the CPU used by other processes meanwhile; the ratios
  auth/off per round are the figures that survive noise.

Checks: every answer of every segment is HTTP 200 (rest_bench.h2load_http); the --auth server
refuses a request without a key (401) and a SigV4 request with a wrong secret (403); the record
read back through each route is the one written. Writes benchmarks/results/http_auth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from benchmarks import data, report, verify
from benchmarks.rest_bench import _busy_s, _children_cpu_s, _tree_cpu_s, h2load_http
from benchmarks.segments import Cell
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.keys import KeyIndex, KeyStore
from tessera.server.auth.permissions import Action
from tessera.server.http_auth import needs, per_item
from tessera.server.http_fast import JSON, FastRequest, FastResponse, FastRouter
from tests.serverproc import ServerProcess

GROUP = "auth_http_bench"
PUT_RECORDS = "/tessera.v1.FeatureStore/PutRecords"
FULL = {"records": 10_000, "rounds": 3, "segment_s": 3.0, "warmup_s": 1.0, "edge_calls": 20_000,
        "edge_rounds": 7}
QUICK = {"records": 2_000, "rounds": 2, "segment_s": 1.5, "warmup_s": 0.5, "edge_calls": 5_000,
         "edge_rounds": 3}
CONCURRENCIES = (1, 16)
_OK = FastResponse(200, JSON, b'{"record":{}}')


def _say(msg: str) -> None:
    print(f"[http-auth] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def _sigv4_headers(url: str, access_key_id: str, secret: str) -> dict[str, str]:
    """The headers botocore signs a GET of `url` with (SigV4, service sagemaker)."""
    request = AWSRequest(method="GET", url=url, headers={})
    SigV4Auth(Credentials(access_key_id, secret), "sagemaker", "us-east-1").add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


# --- the edge, in process -------------------------------------------------------------------------


def _handler(req: FastRequest) -> FastResponse:
    return _OK


def _router(auth: Authenticator) -> FastRouter:
    router = FastRouter(auth=auth)
    router.add("GET", "/v1/feature-groups/{group}/records/{record_id}", _handler, body=False,
               rule=needs(Action.READ, "group"))
    router.add("GET", "/FeatureGroup/{FeatureGroupName}", _handler, body=False,
               rule=per_item(Action.READ))
    return router


def _scope(path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "query_string": query, "headers": headers}


async def _drive(router: FastRouter, scope: dict[str, Any], n: int) -> float:
    """Thread CPU seconds of `n` requests through `router` (every answer checked: 200)."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    t0 = time.thread_time()
    for _ in range(n):
        await router(dict(scope), receive, send)
    spent = time.thread_time() - t0
    if set(statuses) != {200}:
        raise verify.CheckFailed(f"the edge answered {sorted(set(statuses))}")
    return spent


def edge(mode: dict[str, Any], work: Path) -> dict[str, Any]:
    store = KeyStore(work / "edge")
    token = store.create("reader", ["read:auth_*"]).secret
    sig = store.create("boto", ["read:auth_*"], sigv4=True)
    assert sig.info.access_key_id is not None
    on = _router(KeyAuthenticator(KeyIndex(work / "edge"), None))
    off = _router(OPEN_ACCESS)
    path = f"/v1/feature-groups/{GROUP}/records/u1"
    sm_path, sm_query = f"/FeatureGroup/{GROUP}", b"RecordIdentifierValueAsString=u1"
    host = [(b"host", b"127.0.0.1:8080")]
    signed = _sigv4_headers(f"http://127.0.0.1:8080{sm_path}?{sm_query.decode()}",
                            sig.info.access_key_id, sig.secret)
    cases = {
        "off": (off, _scope(path, b"", host)),
        "bearer": (on, _scope(path, b"", [*host, (b"authorization", f"Bearer {token}".encode())])),
        "off_sagemaker": (off, _scope(sm_path, sm_query, host)),
        "sigv4": (on, _scope(sm_path, sm_query, [*host, *((k.encode(), v.encode())
                                                          for k, v in signed.items())])),
    }
    n, per_case = mode["edge_calls"], {name: [] for name in cases}  # type: dict[str, list[float]]
    loop = asyncio.new_event_loop()
    try:
        for router, scope in cases.values():  # warm-up
            loop.run_until_complete(_drive(router, scope, 500))
        for rnd in range(mode["edge_rounds"]):
            order = list(cases)
            order = order[rnd % len(order):] + order[:rnd % len(order)]
            for name in order:
                router, scope = cases[name]
                per_case[name].append(loop.run_until_complete(_drive(router, scope, n)) / n * 1e6)
    finally:
        loop.close()
    us = {name: round(statistics.median(v), 2) for name, v in per_case.items()}
    return {"calls_per_block": n, "us_per_request": us,
            "us_per_request_by_round": {k: [round(x, 2) for x in v] for k, v in per_case.items()},
            "added_us": {"bearer": round(us["bearer"] - us["off"], 2),
                         "sigv4": round(us["sigv4"] - us["off_sagemaker"], 2)}}


# --- real servers ---------------------------------------------------------------------------------


def _load(proc: ServerProcess, n: int, token: str | None) -> None:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=proc.http_url, timeout=30, headers=headers) as http:
        made = http.post("/v1/feature-groups", json=data.group_definition(GROUP, offline=False))
        if made.status_code != 201:
            raise RuntimeError(f"creating {GROUP}: {made.status_code} {made.text}")
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(proc.grpc_target) as channel:
        put = channel.unary_unary(PUT_RECORDS)
        for lo in range(0, n, 1000):
            put(data.put_records_request(range(lo, min(n, lo + 1000)), GROUP),
                metadata=metadata, timeout=60)


def _check(off: ServerProcess, on: ServerProcess, token: str, sigv4: tuple[str, str],
           keys: list[int]) -> None:
    bearer = {"authorization": f"Bearer {token}"}
    for k in keys:
        path = f"/v1/feature-groups/{GROUP}/records/{data.record_id(k)}"
        a = httpx.get(off.http_url + path, timeout=10)
        b = httpx.get(on.http_url + path, headers=bearer, timeout=10)
        if a.status_code != 200 or a.json() != b.json():
            raise verify.CheckFailed(f"record {k} differs: {a.text[:200]} / {b.text[:200]}")
        sm = f"{on.http_url}/FeatureGroup/{GROUP}?RecordIdentifierValueAsString={data.record_id(k)}"
        signed = httpx.get(sm, headers=_sigv4_headers(sm, *sigv4), timeout=10)
        if signed.status_code != 200 or "Record" not in signed.json():
            raise verify.CheckFailed(f"SigV4 GetRecord({k}): {signed.status_code} {signed.text}")
    if httpx.get(on.http_url + path, timeout=10).status_code != 401:
        raise verify.CheckFailed("the --auth server answered a request without a key")
    wrong = httpx.get(sm, headers=_sigv4_headers(sm, sigv4[0], "x" * 40), timeout=10)
    if wrong.status_code != 403:
        raise verify.CheckFailed(f"a wrong SigV4 secret got {wrong.status_code}")


def rest(mode: dict[str, Any], work: Path) -> dict[str, Any]:
    n = mode["records"]
    rng = random.Random(20261129)
    keys = [rng.randrange(n) for _ in range(mode["rounds"])]
    store = KeyStore(work / "on")
    admin = store.create("bench-admin", ["admin"]).secret
    token = store.create("bench-reader", ["read:auth_*"]).secret
    sig = store.create("bench-boto", ["read:auth_*"], sigv4=True)
    assert sig.info.access_key_id is not None
    sigv4 = (sig.info.access_key_id, sig.secret)
    off = ServerProcess(work / "off", workers=1).start(timeout_s=120)
    on = ServerProcess(work / "on", workers=1,
                       extra_env={"TESSERA_AUTH__ENABLED": "true"}).start(timeout_s=120)
    try:
        _load(off, n, None)
        _load(on, n, admin)
        _check(off, on, token, sigv4, keys)
        cases = ("rest_off", "rest_bearer", "sagemaker_off", "sagemaker_sigv4")
        cells = {(name, c): Cell(name, c) for name in cases for c in CONCURRENCIES}
        for rnd, k in enumerate(keys):
            rid = data.record_id(k)
            for c in CONCURRENCIES:
                shift = rnd % len(cases)
                for name in cases[shift:] + cases[:shift]:
                    proc = on if name.endswith(("bearer", "sigv4")) else off
                    if name.startswith("rest"):
                        url = f"{proc.http_url}/v1/feature-groups/{GROUP}/records/{rid}"
                    else:
                        url = (f"{proc.http_url}/FeatureGroup/{GROUP}"
                               f"?RecordIdentifierValueAsString={rid}")
                    headers = []
                    if name == "rest_bearer":
                        headers = [f"authorization: Bearer {token}"]
                    elif name == "sagemaker_sigv4":
                        headers = [f"{h}: {v}" for h, v in _sigv4_headers(url, *sigv4).items()
                                   if h != "host"]
                    pids = [proc.proc.pid]  # type: ignore[union-attr]
                    cpu0, busy0, gen0, w0 = (_tree_cpu_s(pids), _busy_s(), _children_cpu_s(),
                                             time.monotonic())
                    seg = h2load_http(url, "h1", c, headers, None, mode["segment_s"],
                                      mode["warmup_s"], work / "h2")
                    seg.wall_s = time.monotonic() - w0
                    seg.server_cpu_s = _tree_cpu_s(pids) - cpu0
                    seg.generator_cpu_s = _children_cpu_s() - gen0
                    seg.other_cpu_s = max(0.0, _busy_s() - busy0 - seg.server_cpu_s
                                          - seg.generator_cpu_s)
                    seg.server_calls = round(seg.latencies_us.size / seg.seconds * seg.wall_s)
                    cells[(name, c)].add(seg)
                _say(f"round {rnd + 1} c={c}: " + ", ".join(
                    f"{name} {cells[(name, c)].rates()[-1]:,.0f}/s" for name in cases))
    finally:
        on.stop(timeout_s=60)
        off.stop(timeout_s=60)
    out: dict[str, Any] = {"records": n, "keys": keys, "cells": {
        name: {str(c): cells[(name, c)].summary() for c in CONCURRENCIES} for name in cases}}
    ratios: dict[str, Any] = {}
    for auth_case, base in (("rest_bearer", "rest_off"), ("sagemaker_sigv4", "sagemaker_off")):
        for c in CONCURRENCIES:
            a, b = cells[(auth_case, c)], cells[(base, c)]
            by_round = [x / y for x, y in zip(a.rates(), b.rates(), strict=True) if y]
            sa, sb = a.summary(), b.summary()
            ratios[f"{auth_case}_c{c}"] = {
                "throughput_ratio_by_round": [round(r, 3) for r in by_round],
                "throughput_ratio_median": round(statistics.median(by_round), 3),
                "server_cpu_us_per_call": [sb.get("server_cpu_us_per_call"),
                                           sa.get("server_cpu_us_per_call")],
            }
    out["ratios"] = ratios
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", nargs="*", default=(), choices=("edge", "rest"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/http_auth.json"))
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="tessera-http-auth-"))
    result: dict[str, Any] = {"machine": report.machine(), "mode": "quick" if args.quick
                              else "full", "config": {**mode, "concurrencies": CONCURRENCIES}}
    try:
        if "edge" not in args.skip:
            result["edge"] = edge(mode, work)
            _say(f"edge: {result['edge']['us_per_request']}")
        if "rest" not in args.skip:
            result["rest"] = rest(mode, work)
            _say(f"rest: {json.dumps(result['rest']['ratios'])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
