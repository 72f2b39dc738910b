"""The operator web UI at `/ui` and the two JSON endpoints only it needed.

The UI is plain HTML, CSS and ES-module JavaScript in `server/ui/static/` (no build step, no
CDN: every byte is served from here, so it works air-gapped). It is one page with hash routes
(`/ui#/groups`, `#/group/NAME`, `#/record`, `#/offline`, `#/ingest`, `#/stats`, `#/drift`)
that calls the HTTP API the way any client does, with `Authorization: Bearer <key>` when the
operator gave one (kept in sessionStorage): what a page shows is what its caller may read.

The assets are OPEN (server/http_auth.py RULES lists each path: the HTTP edge checks exact
paths); the data is not. The endpoints added here:

- `GET /v1/whoami` (AUTHENTICATED): the caller's name, kind and permissions, so the UI hides
  admin buttons from a caller without admin (the server refuses the call anyway);
- `GET /v1/ingest/dead-letters` (AUTHENTICATED, topics of readable groups only): the latest
  dead letters of the consumer `tessera serve` runs itself (settings `ingest`, which the
  composition root leaves at `app.state.ingest`), read from the tail of each dead-letter topic:
  their error class, reason, source and time (Tessera's headers, ingest/dlq.py), never the
  message's key or value. A consumer run apart (`tessera ingest`) is not known here;
- `GET /v1/offline-store` (AUTHENTICATED, readable groups only): per group its partitions with
  files, rows and bytes (Parquet footers), the last flush (newest file's mtime) and the last
  write time (the `write_time` column's maximum from the footers' statistics). Nothing but
  footers is read, each once (`_FOOTERS`): cheap enough to load with the page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaException, TopicPartition
from fastapi import FastAPI, Query, Request, Response

from tessera.core import offline_layout as layout
from tessera.core.catalog import Catalog
from tessera.core.errors import StorageError
from tessera.ingest import dlq
from tessera.ingest.config import IngestConfig
from tessera.ingest.consumer import consumer_config
from tessera.server.auth.permissions import LOCAL, Action, Principal
from tessera.server.registry import Registry

#: Served assets: URL path -> (file in server/ui/static, media type). Each is declared OPEN in
#: server/http_auth.py RULES under the same path.
ASSETS: dict[str, tuple[str, str]] = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/api.js": ("api.js", "text/javascript; charset=utf-8"),
    "/ui/pages.js": ("pages.js", "text/javascript; charset=utf-8"),
    "/ui/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/ui/ui.css": ("ui.css", "text/css; charset=utf-8"),
}

_HEADERS = {
    # The UI's own origin only: no inline script, no third-party anything.
    "content-security-policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def _static_dir() -> Path:
    return Path(str(resources.files("tessera.server"))) / "ui" / "static"


def _principal(request: Request) -> Principal:
    principal = request.scope.get("tessera.principal")
    return LOCAL if principal is None else principal


def _asset_route(app: FastAPI, path: str, file: str, media_type: str) -> None:
    body = (_static_dir() / file).read_bytes()  # read once: the assets never change at run time

    async def asset() -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    asset.__doc__ = f"The operator UI's {file} (no credentials needed: it holds no data)."
    app.add_api_route(path, asset, methods=["GET"], tags=["ui"], name=f"ui:{file}",
                      include_in_schema=False)


def register_ui_routes(app: FastAPI, registry: Registry, catalog: Catalog | None) -> None:
    """The UI's assets and its JSON endpoints on `app`."""
    for path, (file, media_type) in ASSETS.items():
        _asset_route(app, path, file, media_type)

    @app.get("/v1/whoami", tags=["operations"])
    async def whoami(request: Request) -> dict[str, Any]:
        """Who the caller is: its name, how it authenticated and its permissions (`admin`,
        `read:GLOB`, `write:GLOB`); `admin` says whether it may call the admin routes."""
        principal = _principal(request)
        return {"name": principal.name, "kind": principal.kind, "admin": principal.is_admin,
                "permissions": [str(p) for p in principal.permissions]}

    @app.get("/v1/ingest/dead-letters", tags=["ingest"])
    async def dead_letters(
        request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> dict[str, Any]:
        """The latest `limit` dead letters of each topic this server consumes (of groups the
        caller may read), newest first: topic, feature group, error class, reason, source
        partition and offset, failed_at. `configured` is false when this server runs no
        consumer (then the list is empty). 503 when the broker does not answer."""
        config: IngestConfig | None = getattr(request.app.state, "ingest", None)
        if config is None:
            return {"configured": False, "dead_letters": []}
        principal = _principal(request)
        topics = [t for t in config.topics if principal.can(Action.READ, t.feature_group)]
        letters = await asyncio.to_thread(_latest_dead_letters, config, topics, limit)
        return {"configured": True, "dead_letters": letters}

    @app.get("/v1/offline-store", tags=["offline store"])
    async def offline_store(request: Request) -> dict[str, Any]:
        """The offline store's groups the caller may read: per group its partitions (event
        date, files, rows, bytes), totals, `last_flush` (ISO time of the newest file) and
        `last_write` (the latest `write_time` in its files). Groups without files list none.
        `root` is null when the offline store is not a local folder (then nothing is listed)."""
        principal = _principal(request)
        names = [g.name for g in registry.list() if principal.can(Action.READ, g.name)]
        root = None if catalog is None or "://" in catalog.root else Path(catalog.root)
        groups = await asyncio.to_thread(_scan, root, names) if root is not None else {}
        return {"root": None if root is None else str(root), "groups": groups}


#: A file's footer facts by group folder: path -> (mtime_ns, size, rows, latest write_time).
#: A file never changes once renamed into place (a compaction replaces it under a new name), so
#: a page load reads only the footers of files it has not seen (~180 us of CPU each).
_Footer = tuple[int, int, int, dt.datetime | None]
_FOOTERS: dict[str, dict[str, _Footer]] = {}


_KAFKA_TIMEOUT_S = 5.0


def _latest_dead_letters(config: IngestConfig, topics: list[Any], limit: int
                         ) -> list[dict[str, Any]]:
    """The last `limit` messages of each partition of each topic's dead-letter topic, newest
    first, `limit` per topic. A reader of its own: assigned partitions, no group, no commits."""
    if not topics:
        return []
    conf = {**consumer_config(config, topics[0]), "group.id": "tessera-ui-dead-letters",
            "client.id": "tessera-ui", "enable.auto.commit": False}
    try:
        consumer = Consumer(conf)
    except KafkaException as exc:
        raise StorageError(f"dead letters: cannot read from Kafka: {exc}") from exc
    try:
        out: list[dict[str, Any]] = []
        for topic in topics:
            out += _tail(consumer, topic.dlq_topic, topic.feature_group, limit)[:limit]
        return sorted(out, key=lambda d: d["failed_at"] or "", reverse=True)
    except KafkaException as exc:
        raise StorageError(f"dead letters: Kafka did not answer: {exc}") from exc
    finally:
        consumer.close()


def _tail(consumer: Consumer, topic: str, group: str, limit: int) -> list[dict[str, Any]]:
    meta = consumer.list_topics(topic, timeout=_KAFKA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None:
        return []  # no dead letter yet: the topic may not exist
    starts: list[TopicPartition] = []
    ends: dict[int, int] = {}
    for partition in meta.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                   timeout=_KAFKA_TIMEOUT_S)
        if high > low:
            starts.append(TopicPartition(topic, partition, max(low, high - limit)))
            ends[partition] = high
    if not starts:
        return []
    consumer.assign(starts)
    letters: list[dict[str, Any]] = []
    remaining = sum(high - tp.offset for tp, high in zip(starts, ends.values(), strict=True))
    deadline = time.monotonic() + _KAFKA_TIMEOUT_S
    while remaining > 0 and time.monotonic() < deadline:
        for msg in consumer.consume(remaining, timeout=0.2):
            if msg.error() is not None:
                continue
            remaining -= 1
            headers = _headers(msg.headers())
            letters.append({
                "topic": headers.get(dlq.SOURCE_TOPIC), "feature_group": group,
                "error_class": headers.get(dlq.ERROR_CLASS),
                "reason": headers.get(dlq.ERROR_REASON),
                "partition": headers.get(dlq.SOURCE_PARTITION),
                "offset": headers.get(dlq.SOURCE_OFFSET), "failed_at": headers.get(dlq.FAILED_AT),
            })
    consumer.unassign()
    return sorted(letters, key=lambda d: d["failed_at"] or "", reverse=True)


def _headers(raw: Any) -> dict[str, str]:
    pairs: list[tuple[str, bytes | None]] = list(raw or [])
    return {k: (v or b"").decode("utf-8", "replace") for k, v in pairs}


def _scan(root: Path, names: list[str]) -> dict[str, Any]:
    return {name: _scan_group(layout.group_dir(root, name)) for name in names}


def _footer(path: str, stat: os.stat_result, known: dict[str, _Footer]) -> _Footer:
    seen = known.get(path)
    if seen is not None and seen[0] == stat.st_mtime_ns and seen[1] == stat.st_size:
        return seen
    meta = pq.ParquetFile(path).metadata
    return (stat.st_mtime_ns, stat.st_size, meta.num_rows, _max_write_time(meta))


def _scan_group(folder: Path) -> dict[str, Any]:
    known = _FOOTERS.get(str(folder), {})
    seen: dict[str, _Footer] = {}
    partitions: list[dict[str, Any]] = []
    last_flush = 0.0
    last_write: dt.datetime | None = None
    prefix = f"{layout.EVENT_DATE}="
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not (entry.is_dir() and entry.name.startswith(prefix)):
            continue
        files = rows = size = 0
        for file in os.scandir(entry.path):
            if file.name.startswith(".") or not file.name.endswith(".parquet"):
                continue  # temporaries are dot-names, renamed into place when complete
            try:
                stat = file.stat()
                footer = seen[file.path] = _footer(file.path, stat, known)
            except (OSError, ValueError):
                continue  # removed by a compaction between the listing and the read
            files += 1
            rows += footer[2]
            size += stat.st_size
            last_flush = max(last_flush, stat.st_mtime)
            written = footer[3]
            if written is not None and (last_write is None or written > last_write):
                last_write = written
        partitions.append({"event_date": entry.name[len(prefix):], "files": files,
                           "rows": rows, "bytes": size})
    _FOOTERS[str(folder)] = seen  # files gone (compacted, group deleted) drop out
    return {
        "partitions": partitions,
        "files": sum(p["files"] for p in partitions),
        "rows": sum(p["rows"] for p in partitions),
        "bytes": sum(p["bytes"] for p in partitions),
        "last_flush": _iso(dt.datetime.fromtimestamp(last_flush, dt.UTC)) if last_flush else None,
        "last_write": None if last_write is None else _iso(last_write),
    }


def _max_write_time(meta: pq.FileMetaData) -> dt.datetime | None:
    names = meta.schema.names
    if layout.WRITE_TIME not in names:
        return None
    column = names.index(layout.WRITE_TIME)
    best: dt.datetime | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            continue
        value = stats.max
        if isinstance(value, dt.datetime):
            value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            best = value if best is None or value > best else best
    return best


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
