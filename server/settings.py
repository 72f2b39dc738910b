"""Tessera's settings: one frozen object, built by the CLI only (env prefix TESSERA_, nested
sections with '__', e.g. TESSERA_SERVER__GRPC_PORT=50052). Embedded defaults need no config."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tessera.ingest.config import IngestConfig


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


MAX_WORKERS = 256


def default_workers() -> int:
    """`server.workers` unless set: the number of cores (at least 1, at most MAX_WORKERS)."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    http_port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    # Serving processes accepting gRPC and HTTP on the same ports (SO_REUSEPORT), in front of
    # one writer process (server/supervisor.py); 1: everything in one process (server/app.py).
    # Default: one per core.
    workers: int = Field(default_factory=default_workers, ge=1, le=MAX_WORKERS)


class OnlineStoreSettings(_Section):
    block_cache_mb: int = Field(512, ge=8)
    write_buffer_mb: int = Field(64, ge=4)
    # Group commit: at most this many records are made durable by one fsync'd write.
    max_commit_records: int = Field(20_000, ge=1)
    # How often expired records are purged in the background (reads hide them at once).
    ttl_purge_interval_s: float = Field(30.0, gt=0)
    ttl_purge_batch: int = Field(10_000, ge=1)
    # --workers N: how often a serving process's secondary catches up with the writer's
    # primary without being asked (server/secondary.py: ~10 ms of staleness for ~4% of a core);
    # a read with a write token catches up at once.
    catch_up_interval_s: float = Field(0.010, gt=0, le=60)


class OfflineStoreSettings(_Section):
    # Where Parquet history goes; default: <data_dir>/offline.
    root: Path | None = None
    # A committed write reaches Parquet within this delay (and at shutdown).
    flush_interval_s: float = Field(30.0, gt=0, le=3600)
    # Flush early once this many rows are pending; also the most rows one flush writes.
    flush_max_rows: int = Field(200_000, ge=1)


class SqlSettings(_Section):
    """`POST /v1/sql`: queries run in worker processes, in the SQL sandbox."""

    # A query running longer is interrupted and answers 504.
    timeout_s: float = Field(60.0, gt=0, le=86_400)
    # Longer query texts answer 413 before DuckDB parses them (parsing holds the interpreter).
    max_query_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Larger encoded results (json, csv or parquet) answer 422.
    max_result_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Queries run at once (one worker process each); more wait for a free one.
    workers: int = Field(1, ge=1, le=64)
    # Per worker: DuckDB spills to <data_dir>/tmp beyond this; 0 threads: the CPU count less
    # one (a core left to serving).
    memory_limit: str = "1GB"
    threads: int = Field(0, ge=0, le=1024)


class TlsSettings(_Section):
    """TLS on the gRPC and HTTP ports (both or neither): PEM files. `client_ca` turns on mutual
    TLS: a client must present a certificate signed by it."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None


class AuthSettings(_Section):
    """Who may call (server/auth). Off: every caller is the local admin, which only a loopback
    address allows unless `insecure_no_auth` says so explicitly."""

    # On: every data and control call needs credentials (API key, JWT or SigV4); /healthz and
    # /readyz never do.
    enabled: bool = False
    # Serve a non-loopback address with authentication off (logged as a warning every minute).
    insecure_no_auth: bool = False
    # JWT / OIDC bearer tokens: the issuer's JWKS (a file path or an http(s) URL), the expected
    # `iss` and `aud`, and the claim holding permission strings (`read:GLOB`, `write:GLOB`,
    # `admin`).
    jwt_jwks: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_permissions_claim: str = "permissions"
    # One JSON line per admin action, key change and denied call; default <data_dir>/audit.log;
    # "-" writes them to stdout.
    audit_log: str | None = None
    # /metrics needs credentials (any valid principal) when authentication is on.
    protect_metrics: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TESSERA_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    data_dir: Path = Path("tessera-data")
    server: ServerSettings = ServerSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    offline_store: OfflineStoreSettings = OfflineStoreSettings()
    sql: SqlSettings = SqlSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    # Kafka topics `tessera serve` consumes itself (embedded, writing straight to the store);
    # as JSON in TESSERA_INGEST, e.g. {"bootstrap_servers": "...", "topics": [...]}.
    ingest: IngestConfig | None = None

    @property
    def http_scheme(self) -> str:
        """"https" when the ports serve TLS, else "http" (for the URLs Tessera prints)."""
        return "https" if self.tls.cert is not None else "http"

    @property
    def offline_root(self) -> Path:
        return self.offline_store.root or self.data_dir / "offline"


def run_dir(data_dir: Path) -> Path:
    """Where `tessera serve --workers N`'s supervisor and children keep their run-time files
    (settings, ready files, secondaries, metrics endpoints): scratch, rebuilt at every start."""
    return data_dir / "run"
