"""Prometheus metrics of the server (served at /metrics by the HTTP app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)

GRPC_REQUESTS = Counter(
    "tessera_grpc_requests_total",
    "gRPC requests by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
GRPC_LATENCY = Histogram(
    "tessera_grpc_request_duration_seconds",
    "Server-side gRPC request latency by method.",
    ["method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "tessera_http_requests_total",
    "Control plane HTTP requests by route and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "tessera_http_request_duration_seconds",
    "Control plane HTTP latency by route.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RECORDS_WRITTEN = Counter(
    "tessera_records_written_total",
    "Records made durable in the online store, by feature group and outcome "
    "(applied, or stale: older than the stored record).",
    ["feature_group", "outcome"],
    registry=REGISTRY,
)
AGGREGATE_EVENTS_TOO_LATE = Counter(
    "tessera_aggregate_events_too_late_total",
    "Puts left out of a group's aggregation features because they arrived later than its "
    "lateness bound (commit time - event time > aggregation_config.lateness).",
    ["feature_group"],
    registry=REGISTRY,
)
GROUP_COMMITS = Gauge(
    "tessera_online_group_commits",
    "Durable (fsync'd) write batches committed by the online store since start.",
    registry=REGISTRY,
)
GROUP_COMMIT_OPS = Gauge(
    "tessera_online_group_commit_ops",
    "Mutations committed by the online store since start (ops / commits = mean batch size).",
    registry=REGISTRY,
)
TTL_PURGED = Gauge(
    "tessera_ttl_purged_index_entries",
    "Expiry index entries processed by the background TTL purge since start.",
    registry=REGISTRY,
)
FEATURE_GROUPS = Gauge(
    "tessera_feature_groups", "Feature groups in the registry.", registry=REGISTRY
)
OUTBOX_PENDING = Gauge(
    "tessera_offline_outbox_pending_rows",
    "History rows committed but not yet written to the offline store's Parquet files.",
    registry=REGISTRY,
)
OFFLINE_ROWS = Gauge(
    "tessera_offline_rows_written",
    "History rows written to Parquet since start.",
    registry=REGISTRY,
)
FEATURE_GROUPS_QUARANTINED = Gauge(
    "tessera_feature_groups_quarantined",
    "Feature groups that break today's name or bound rules (made under an older rule); they "
    "keep serving, and deleting or renaming them fixes it (README, Limits).",
    registry=REGISTRY,
)
OFFLINE_VIEWS_BROKEN = Gauge(
    "tessera_offline_views_broken",
    "Offline feature groups without a SQL view (see /readyz for which and why); the other "
    "groups' views are not affected.",
    registry=REGISTRY,
)
SQL_QUERIES = Counter(
    "tessera_sql_queries_total",
    "POST /v1/sql queries by outcome (ok, invalid, too_large, timeout, cancelled, error).",
    ["outcome"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "tessera_auth_failures_total",
    "Calls refused for their credentials (UNAUTHENTICATED / 401), by reason: missing, "
    "malformed, unknown_key, revoked, expired, bad_signature, wrong_issuer, wrong_audience, "
    "bad_permissions, jwt_not_configured.",
    ["reason"],
    registry=REGISTRY,
)
FEATURE_DRIFT_PSI = Gauge(
    "tessera_feature_drift_psi",
    "The latest PSI computed for a feature (GET /v1/feature-groups/{group}/drift): its window "
    "against its baseline; with --workers N the latest of every serving process's.",
    ["group", "feature"],
    registry=REGISTRY,
)
FEATURE_DRIFT_COMPUTED = Gauge(
    "tessera_feature_drift_computed_timestamp_seconds",
    "When tessera_feature_drift_psi of a feature was last computed (seconds since the epoch).",
    ["group", "feature"],
    registry=REGISTRY,
)
#: Families that describe the service, not a process: /metrics of --workers N shows each
#: series once, the value of the process that computed it last (`latest_drift`).
_DRIFT_FAMILIES = (FEATURE_DRIFT_PSI._name, FEATURE_DRIFT_COMPUTED._name)


def latest_drift(families: dict[str, Metric], process_label: str) -> None:
    """In a merged exposition (server/process_metrics.py), keep one series per (group,
    feature) of the drift gauges: the one of the process whose computation is the latest, with
    no process label; summing or listing every process's would show stale PSIs."""
    stamps = families.get(FEATURE_DRIFT_COMPUTED._name)
    if stamps is None:
        return
    latest: dict[tuple[str, str], tuple[float, str]] = {}
    for s in stamps.samples:
        key = (s.labels.get("group", ""), s.labels.get("feature", ""))
        if key not in latest or s.value > latest[key][0]:
            latest[key] = (s.value, s.labels.get(process_label, ""))
    for name in _DRIFT_FAMILIES:
        family = families.get(name)
        if family is None:
            continue
        kept = []
        for s in family.samples:
            key = (s.labels.get("group", ""), s.labels.get("feature", ""))
            if key in latest and s.labels.get(process_label) == latest[key][1]:
                labels = {k: v for k, v in s.labels.items() if k != process_label}
                kept.append(s._replace(labels=labels))
        family.samples[:] = kept
