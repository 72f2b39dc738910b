"""tessera.ingest: Kafka topics into feature groups.

A consumer-group member per topic decodes messages (JSON, Protobuf), maps their fields to
features, validates them with PutRecord's rules, batches them, writes each batch through a
`Sink` until durable, dead-letters bad messages, and only then commits offsets (at least once).

Standalone, through a server's gRPC API: `tessera ingest ...` (see `tessera.ingest.cli`).
Embedded in a server, straight into its store::

    stop = threading.Event()
    run_consumers(config, EmbeddedSink(registry, store), stop)   # until stop.set()

Importing this package does not import confluent_kafka (the `ingest` extra); running does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tessera.ingest.config import IngestConfig, TopicConfig, config_from_dict, load_config

if TYPE_CHECKING:
    from tessera.ingest.grpc_sink import GrpcSink
    from tessera.ingest.metrics import IngestMetrics
    from tessera.ingest.runner import IngestFailedError, run_consumers
    from tessera.ingest.sinks import NullSink, SchemaChangedError, Sink, SinkRecord

_LAZY = {
    "IngestMetrics": "tessera.ingest.metrics",
    "IngestFailedError": "tessera.ingest.runner",
    "run_consumers": "tessera.ingest.runner",
    "GrpcSink": "tessera.ingest.grpc_sink",
    "NullSink": "tessera.ingest.sinks",
    "SchemaChangedError": "tessera.ingest.sinks",
    "Sink": "tessera.ingest.sinks",
    "SinkRecord": "tessera.ingest.sinks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tessera.ingest' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "GrpcSink",
    "IngestConfig",
    "IngestFailedError",
    "IngestMetrics",
    "NullSink",
    "SchemaChangedError",
    "Sink",
    "SinkRecord",
    "TopicConfig",
    "config_from_dict",
    "load_config",
    "run_consumers",
]
