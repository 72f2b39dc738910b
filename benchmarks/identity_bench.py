"""What resolving a caller costs (server/auth: key store, JWT, SigV4), in process, per call.

    python -m benchmarks.identity_bench [--calls N] [--blocks B]

CPU microseconds per `authenticate` / `authenticate_sigv4` (process CPU time over a block of
calls, median and min of the blocks), each call checked to resolve the expected principal:
- an API key seen before (the hot path: the cache and a clock read), next to the same with the
  key store stat'ed on every call (what the index did before its 0.1 s check interval) and a
  bare `os.stat` of keys.json, measured in the same blocks, alternating;
- an API key seen for the first time (SHA-256 and the index lookup);
- a JWT seen before, and verified afresh (RS256 2048-bit, ES256);
- a SigV4-signed request (botocore's signer; the whole verification);
- a key store write (create + revoke, without the 0.1 s settle), milliseconds.
Writes benchmarks/results/identity.json (with the load average: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.jwt import JwksSource, JwtVerifier
from tessera.server.auth.keys import KeyIndex, KeyStore

OUT = Path(__file__).parent / "results" / "identity.json"


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def _blocks(cases: dict[str, Callable[[], object]], calls: int, blocks: int) -> dict[str, Any]:
    """Each case `blocks` times, the cases alternating within a round (noise hits all)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(blocks):
        for name, fn in cases.items():
            samples[name].append(_per_call_us(fn, calls))
    return {name: {"median_us": round(statistics.median(v), 3), "min_us": round(min(v), 3),
                   "blocks_us": [round(x, 3) for x in v]} for name, v in samples.items()}


def _jwks_file(folder: Path, rsa_key: Any, ec_key: Any) -> Path:
    keys = []
    for private, kid, alg, algo in ((rsa_key, "r1", "RS256", RSAAlgorithm),
                                    (ec_key, "e1", "ES256", ECAlgorithm)):
        keys.append({**json.loads(algo.to_jwk(private.public_key())), "kid": kid, "alg": alg})
    path = folder / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path


def run(calls: int, blocks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tessera-identity-") as tmp:
        data = Path(tmp)
        store = KeyStore(data, settle_s=0)
        for i in range(100):  # a store of a realistic size
            store.create(f"svc-{i}", ["read:*"])
        token = store.create("reader", ["read:users_*"]).secret
        sig = store.create("boto", ["read:*"], sigv4=True)
        access_key_id, secret = sig.secret_line.split(" ")

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        verifier = JwtVerifier(JwksSource(str(_jwks_file(data, rsa_key, ec_key))), "iss", "aud")
        auth = KeyAuthenticator(KeyIndex(data), verifier)
        index = auth.keys
        now = int(time.time())
        claims = {"sub": "svc", "iss": "iss", "aud": "aud", "exp": now + 3600,
                  "permissions": ["read:*"]}
        rs256 = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r1"})
        es256 = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e1"})

        req = AWSRequest(method="POST", url="http://127.0.0.1:8080/BatchGetRecord",
                         data=b'{"Identifiers": []}', headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(access_key_id, secret), "sagemaker", "us-east-1").add_auth(req)
        sig_headers = [(k.lower().encode(), v.encode() if isinstance(v, str) else v)
                       for k, v in req.headers.items()] + [(b"host", b"127.0.0.1:8080")]
        header = f"Bearer {token}"

        def expect(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
            got = fn().name
            if got != name:
                raise SystemExit(f"resolved {got!r}, expected {name!r}")
            return fn

        def api_key_stat_each_call() -> Any:
            index._next_check = 0.0  # the check every call made before the interval
            return auth.authenticate(header)

        def api_key_first_seen() -> Any:
            auth._api_keys.clear()
            return auth.authenticate(header)

        def jwt_rs256_verify() -> Any:
            verifier._verified.clear()
            return auth.authenticate(f"Bearer {rs256}")

        def jwt_es256_verify() -> Any:
            verifier._verified.clear()
            return auth.authenticate(f"Bearer {es256}")

        hot = _blocks({
            "api_key_cached": expect("reader", lambda: auth.authenticate(header)),
            "api_key_cached_stat_each_call": expect("reader", api_key_stat_each_call),
            "os_stat_keys_json": lambda: os.stat(str(index.path)),
        }, calls, blocks)
        cold = _blocks({
            "api_key_first_seen": expect("reader", api_key_first_seen),
            "jwt_cached": expect("svc", lambda: auth.authenticate(f"Bearer {rs256}")),
            "sigv4_verify": expect("boto", lambda: auth.authenticate_sigv4(
                "POST", "/BatchGetRecord", "", sig_headers, b'{"Identifiers": []}')),
        }, max(calls // 10, 100), blocks)
        crypto = _blocks({
            "jwt_rs256_verify": expect("svc", jwt_rs256_verify),
            "jwt_es256_verify": expect("svc", jwt_es256_verify),
        }, max(calls // 200, 20), blocks)

        writes = []
        for i in range(20):
            start = time.perf_counter()
            store.create(f"w{i}", ["read:x"])
            store.revoke(f"w{i}")
            writes.append((time.perf_counter() - start) / 2 * 1e3)
    cached = hot["api_key_cached"]["median_us"]
    stat_each = hot["api_key_cached_stat_each_call"]["median_us"]
    return {
        "machine": {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                    "git_commit": _git_commit()},
        "config": {"calls_per_block": calls, "blocks": blocks, "keys_in_store": 103},
        "cpu_us_per_call": {**hot, **cold, **crypto},
        "stat_each_call_over_cached": round(stat_each / cached, 1) if cached else None,
        "key_store_write_ms": {"median": round(statistics.median(writes), 2),
                               "max": round(max(writes), 2)},
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per block (hot path)")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = run(args.calls, args.blocks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v["median_us"] for k, v in result["cpu_us_per_call"].items()}
    print(json.dumps({"cpu_us_per_call_median": summary,
                      "stat_each_call_over_cached": result["stat_each_call_over_cached"],
                      "key_store_write_ms": result["key_store_write_ms"],
                      "load_average": result["machine"]["load_average"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
