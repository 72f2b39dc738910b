"""The `tessera` command line: serve, demo, and quick put / get."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pydantic

from tessera.server import cli_groups, cli_keys, cli_offline, cli_stats, safe_default
from tessera.server.settings import (
    AuthSettings,
    OfflineStoreSettings,
    ServerSettings,
    Settings,
    TlsSettings,
)


def _settings(args: argparse.Namespace) -> Settings:
    base = Settings()  # environment (TESSERA_*) and defaults
    server = {k: v for k, v in (("host", args.host), ("grpc_port", args.grpc_port),
                                ("http_port", args.http_port),
                                ("workers", getattr(args, "workers", None))) if v is not None}
    # Validated like the environment's values (model_copy alone would not check them).
    update: dict[str, object] = {
        "server": ServerSettings.model_validate({**base.server.model_dump(), **server})
    }
    if args.data_dir is not None:
        update["data_dir"] = args.data_dir
    if getattr(args, "offline_flush_interval_s", None) is not None:
        update["offline_store"] = OfflineStoreSettings.model_validate(
            {**base.offline_store.model_dump(),
             "flush_interval_s": args.offline_flush_interval_s}
        )
    tls = {k: v for k, v in (("cert", args.tls_cert), ("key", args.tls_key),
                             ("client_ca", args.tls_client_ca)) if v is not None}
    if tls:
        update["tls"] = TlsSettings.model_validate({**base.tls.model_dump(), **tls})
    auth = {k: v for k, v in (("enabled", args.auth or None),
                              ("insecure_no_auth", args.insecure_no_auth or None),
                              ("jwt_jwks", args.jwt_jwks), ("jwt_issuer", args.jwt_issuer),
                              ("jwt_audience", args.jwt_audience),
                              ("jwt_permissions_claim", args.jwt_permissions_claim),
                              ("audit_log", args.audit_log)) if v is not None}
    if auth:
        update["auth"] = AuthSettings.model_validate({**base.auth.model_dump(), **auth})
    return base.model_copy(update=update)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    host = settings.server.host
    refused = safe_default.refusal(settings)  # a non-loopback host without --auth
    if refused is not None:
        print(f"tessera: {refused}", file=sys.stderr)
        return 2
    if args.demo and (settings.auth.enabled or settings.tls.cert is not None):
        print("tessera: --demo runs against a loopback server without --auth and TLS "
              "(run `tessera demo --api-key ... --tls-ca ...` against this one instead)",
              file=sys.stderr)
        return 2
    safe_default.warn_while_exposed(settings)  # --insecure-no-auth: now and every minute
    scheme = settings.http_scheme

    def on_ready(grpc_port: int, http_port: int) -> None:
        print(f"tessera: serving gRPC{' (TLS)' if scheme == 'https' else ''} on "
              f"{host}:{grpc_port}, HTTP on {scheme}://{host}:{http_port} "
              f"(data in {settings.data_dir}); Ctrl-C stops", flush=True)
        if args.demo:
            from tessera.server.demo import run_demo

            run_demo(f"{host}:{grpc_port}", f"http://{host}:{http_port}")
            print("tessera: demo done; the server keeps serving until Ctrl-C", flush=True)

    if settings.server.workers > 1:
        return _serve_processes(settings, args.ready_file, on_ready)
    from tessera.server.app import BoundPorts, serve
    from tessera.server.roles import RoleFailedError

    async def on_ready_async(ports: BoundPorts) -> None:
        await asyncio.to_thread(on_ready, ports.grpc_port, ports.http_port)

    try:
        asyncio.run(serve(settings, ready_file=args.ready_file, on_ready=on_ready_async))
    except (OSError, RoleFailedError) as exc:  # start-up (a port in use, ...) or a role died
        print(f"tessera: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_processes(
    settings: Settings, ready_file: Path | None, on_ready: Callable[[int, int], None]
) -> int:
    """`--workers N`: a supervisor, a writer process and N serving processes."""
    from tessera.server.supervisor import SupervisorError, run

    try:
        run(settings, ready_file, lambda ports: on_ready(ports.grpc_port, ports.http_port))
    except SupervisorError as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tessera.server.demo import run_demo

    run_demo(args.grpc, args.http, **cli_offline.client_options(args))
    return 0


def _put(args: argparse.Namespace) -> int:
    from tessera.client import FeatureStoreClient

    record = json.loads(args.record)
    with FeatureStoreClient(grpc=args.grpc, http=None, **cli_offline.client_options(args)) as fs:
        applied = fs.put_record(args.group, record, ttl_s=args.ttl_s)
    print("applied" if applied else "kept the stored record (it has a newer event time)")
    return 0


def _get(args: argparse.Namespace) -> int:
    from tessera.client import FeatureStoreClient

    features = args.features.split(",") if args.features else None
    with FeatureStoreClient(grpc=args.grpc, http=None, **cli_offline.client_options(args)) as fs:
        record = fs.get_record(args.group, args.record_id, features=features)
    if record is None:
        print(f"no record '{args.record_id}' in '{args.group}'", file=sys.stderr)
        return 1
    print(json.dumps(record, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera feature store")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (gRPC runtime + HTTP control plane)")
    serve.add_argument("--data-dir", type=Path, help="data directory (default ./tessera-data)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 = any free)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8080; 0 = any free)")
    serve.add_argument("--workers", type=int,
                       help="serving processes sharing the ports, in front of a writer process "
                            "(default: the number of cores; 1: one process, for laptops and "
                            "tests; TESSERA_SERVER__WORKERS)")
    serve.add_argument("--offline-flush-interval-s", type=float,
                       help="most seconds before a write reaches the offline store (default 30)")
    serve.add_argument("--ready-file", type=Path,
                       help="write {grpc_port, http_port, pid} as JSON here once serving")
    serve.add_argument("--demo", action="store_true",
                       help="once serving, run the demo against this server")
    security = serve.add_argument_group("security (README: Security)")
    security.add_argument("--tls-cert", type=Path,
                          help="server certificate (PEM): TLS on both ports")
    security.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    security.add_argument("--tls-client-ca", type=Path,
                          help="CA bundle (PEM) client certificates must chain to (mutual TLS)")
    security.add_argument("--auth", action="store_true",
                          help="every data and control call needs credentials (API key, JWT, "
                               "SigV4); /healthz and /readyz never do")
    security.add_argument("--insecure-no-auth", action="store_true",
                          help="serve a non-loopback --host with authentication off")
    security.add_argument("--jwt-jwks", help="JWKS of the JWT issuer: a file path or a URL")
    security.add_argument("--jwt-issuer", help="the JWTs' expected `iss`")
    security.add_argument("--jwt-audience", help="the JWTs' expected `aud`")
    security.add_argument("--jwt-permissions-claim",
                          help="the claim holding permissions (read:GLOB, write:GLOB, admin)")
    security.add_argument("--audit-log",
                          help="where audit lines go (default <data-dir>/audit.log; - = stdout)")
    serve.set_defaults(func=_serve)

    client_args = argparse.ArgumentParser(add_help=False)
    client_args.add_argument("--grpc", default="127.0.0.1:50051", help="gRPC address")
    client_args.add_argument("--http", default="http://127.0.0.1:8080", help="HTTP base URL")
    client_args.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                             help="API key (default $TESSERA_API_KEY)")
    client_args.add_argument("--tls-ca", type=Path,
                             help="CA bundle (PEM) to verify the server (TLS)")
    client_args.add_argument("--tls-cert", type=Path, help="client certificate (PEM; mutual TLS)")
    client_args.add_argument("--tls-key", type=Path, help="client certificate's key (PEM)")

    demo = sub.add_parser("demo", parents=[client_args],
                          help="create a group, write records and read them back")
    demo.set_defaults(func=_demo)

    put = sub.add_parser("put", parents=[client_args], help="put one record given as JSON")
    put.add_argument("group")
    put.add_argument("record", help='e.g. \'{"user_id": "u1", "ts": 1700000000.0, "clicks": 3}\'')
    put.add_argument("--ttl-s", type=float)
    put.set_defaults(func=_put)

    get = sub.add_parser("get", parents=[client_args], help="get one record as JSON")
    get.add_argument("group")
    get.add_argument("record_id")
    get.add_argument("--features", help="comma-separated feature names")
    get.set_defaults(func=_get)
    cli_offline.register(sub, client_args)
    cli_groups.register(sub)  # `tessera groups list|rename` on a stopped server's data
    cli_keys.register(sub)  # `tessera keys create|list|revoke` (README: Security)
    cli_stats.register(sub)  # `tessera stats GROUP`: statistics and drift (offline store)

    from tessera.ingest.cli import register as register_ingest

    register_ingest(sub)  # `tessera ingest`: Kafka topics into feature groups
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per SDK call otherwise
    args = build_parser().parse_args(argv)
    from tessera.core.errors import TesseraError

    try:
        return int(args.func(args))
    except TesseraError as exc:
        print(f"tessera: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 2
    except pydantic.ValidationError as exc:  # an option out of range
        print(f"tessera: invalid option: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
