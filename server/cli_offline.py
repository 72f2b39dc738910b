"""The offline store's commands: `tessera sql`, `tessera dataset`, `tessera import`,
`tessera compact`. `sql` and `dataset` read the Parquet files directly (no server needed);
`import` and `compact` go through a running server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_OFFLINE_ROOT = Path("tessera-data") / "offline"


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK's security arguments from the client flags (--api-key, --tls-ca, --tls-cert,
    --tls-key): FeatureStoreClient(..., **client_options(args))."""
    return {"api_key": args.api_key, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert,
            "tls_key": args.tls_key}


def _post(args: argparse.Namespace, base_url: str, path: str, **kwargs: Any) -> Any:
    """POST `path` of the server at `base_url` (the default http:// URL becomes https with
    --tls-ca) with the client flags' API key and TLS; the httpx.Response. A connection failure
    is a StorageError saying what it most likely means (a TLS port, a refused certificate)."""
    import httpx

    from tessera.client._admin import transport_errors
    from tessera.client._security import client_security
    from tessera.client.sync import DEFAULT_HTTP_URL

    security = client_security(**client_options(args))
    url = security.http_url(base_url.rstrip("/"), DEFAULT_HTTP_URL)
    with httpx.Client(base_url=url, headers=security.http_headers,
                      verify=security.http_verify(), timeout=None) as http, \
            transport_errors(url, security):
        return http.post(path, **kwargs)


def _sql(args: argparse.Namespace) -> int:
    from tessera.core.sql_results import format_result, json_result, render_text_table

    if args.http:
        # A text table is made here from the Parquet answer, as for a local query.
        wire = "parquet" if args.format == "table" else args.format
        request: dict[str, object] = {"query": args.query, "format": wire}
        if args.timeout is not None:
            request["timeout_s"] = args.timeout
        resp = _post(args, args.http, "/v1/sql", json=request)
        if resp.status_code != 200:
            try:
                message = resp.json().get("error", {}).get("message", resp.text)
            except ValueError:
                message = resp.text
            print(f"tessera: {message}", file=sys.stderr)
            return 2
        if args.format == "table":
            import io

            import pyarrow.parquet as pq

            # ParquetFile.read, not read_table: read_table's thread pool on an in-memory file
            # can abort the interpreter at exit (terminate called without an active exception).
            text = render_text_table(pq.ParquetFile(io.BytesIO(resp.content)).read(),
                                     max_rows=args.max_rows)
            _emit(text, args.output)
        elif args.output:
            Path(args.output).write_bytes(resp.content)
        elif args.format == "parquet":
            sys.stdout.buffer.write(resp.content)
        else:
            print(resp.text, end="" if resp.text.endswith("\n") else "\n")
        return 0
    from tessera.client.offline import OfflineStore

    with OfflineStore(args.offline_root) as off:
        table = off.sql(args.query, timeout_s=args.timeout)
        if args.format == "json":
            _emit(json_result(table, table.num_rows, False).decode(), args.output)
            return 0
        out = format_result(table, args.format, args.output, max_rows=args.max_rows)
    if isinstance(out, bytes):
        sys.stdout.buffer.write(out)
    elif out is not None:
        print(out, end="" if out.endswith("\n") else "\n")
    return 0


def _emit(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


def _features(specs: list[str]) -> dict[str, list[str] | None]:
    """'users:clicks,ctr' -> {'users': ['clicks', 'ctr']}; 'users' -> every feature."""
    out: dict[str, list[str] | None] = {}
    for spec in specs:
        group, _, names = spec.partition(":")
        out[group] = [n for n in names.split(",") if n] if names else None
    return out


def _dataset(args: argparse.Namespace) -> int:
    from tessera.client.offline import OfflineStore

    on = dict(pair.split("=", 1) for pair in args.on) if args.on else None
    with OfflineStore(args.offline_root, memory_limit=args.memory_limit,
                      progress=None if args.progress else False) as off:
        ds = off.dataset(args.spine, timestamp=args.timestamp, features=_features(args.features),
                         on=on, as_of=args.as_of, prefix_group=args.prefix_group)
        rows = ds.to_parquet(args.output)
    print(f"wrote {rows} rows to {args.output}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from tessera.client import FeatureStoreClient
    from tessera.client.importer import import_table

    with FeatureStoreClient(grpc=args.grpc, http=args.http, **client_options(args)) as fs:
        result = import_table(fs, args.group, args.file, batch_size=args.batch_size)
    print(f"imported {result.written} rows of {args.file} into '{args.group}'")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    resp = _post(args, args.http, f"/v1/feature-groups/{quote(args.group, safe='')}/compact",
                 params={"min_files": args.min_files})
    if resp.status_code != 200:
        print(f"tessera: compaction failed: {resp.text}", file=sys.stderr)
        return 2
    r = resp.json()
    print(f"compacted {r['partitions_compacted']} partitions: {r['files_before']} files -> "
          f"{r['files_after']} ({r['rows']} rows)")
    return 0


def register(sub: argparse._SubParsersAction, client_args: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add the offline commands to the `tessera` parser."""
    sql = sub.add_parser("sql", help="run a read-only SQL query over the offline store's views")
    sql.add_argument("query", help="one SELECT; each feature group is a view of its name")
    sql.add_argument("--offline-root", default=DEFAULT_OFFLINE_ROOT,
                     help="offline store path or URI (default ./tessera-data/offline)")
    sql.add_argument("--http", help="ask a running server instead (its base URL)")
    sql.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                     help="with --http: API key (default $TESSERA_API_KEY)")
    sql.add_argument("--tls-ca", type=Path,
                     help="with --http: CA bundle (PEM) to verify the server (TLS)")
    sql.add_argument("--tls-cert", type=Path, help="client certificate (PEM; mutual TLS)")
    sql.add_argument("--tls-key", type=Path, help="client certificate's key (PEM)")
    sql.add_argument("--format", choices=("table", "csv", "parquet", "json"), default="table")
    sql.add_argument("--output", help="write the result here instead of stdout")
    sql.add_argument("--max-rows", type=int, default=100, help="rows shown as a table")
    sql.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="stop the query after this long (with --http: at most the server's "
                          "sql.timeout_s)")
    sql.set_defaults(func=_sql)

    imp = sub.add_parser("import", parents=[client_args],
                         help="backfill a Parquet or CSV file into a group (history + latest)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--group", required=True, help="feature group name")
    imp.add_argument("--batch-size", type=int, default=1000)
    imp.set_defaults(func=_import)

    compact = sub.add_parser("compact", parents=[client_args],
                             help="merge a group's small offline files (results do not change)")
    compact.add_argument("group")
    compact.add_argument("--min-files", type=int, default=2,
                         help="compact partitions with at least this many files")
    compact.set_defaults(func=_compact)

    ds = sub.add_parser("dataset", help="build a point-in-time training dataset (Parquet)")
    ds.add_argument("--spine", required=True,
                    help="Parquet file of record ids, timestamps and labels, or a SELECT")
    ds.add_argument("--timestamp", required=True, help="the spine's timestamp column")
    ds.add_argument("--features", action="append", required=True, metavar="GROUP[:F1,F2]",
                    help="a group and its features (all when none given); repeatable")
    ds.add_argument("--on", action="append", metavar="GROUP=COLUMN",
                    help="the spine column holding a group's record ids (default: its name)")
    ds.add_argument("--as-of", help="ignore writes after this time (ISO-8601 or epoch seconds)")
    ds.add_argument("--prefix-group", action="store_true", help="name columns <group>__<feature>")
    ds.add_argument("--output", required=True, help="the Parquet file to write")
    ds.add_argument("--offline-root", default=DEFAULT_OFFLINE_ROOT)
    ds.add_argument("--memory-limit", default="4GB", help="DuckDB memory limit; it spills beyond")
    ds.add_argument("--progress", action="store_true", help="show a progress bar")
    ds.set_defaults(func=_dataset)
