"""The schema cache of one topic's consumer: the feature group's schema as the sink last gave it.

Threads: the poll loop reads and refreshes it (on a timer, and when a batch has schema errors);
the batch writer refreshes it too (when the store refuses a batch). A lock makes each refresh
and read whole; a read never waits on the sink (the fetch happens outside the lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tessera.core.errors import TesseraError
from tessera.core.schema import CompiledSchema
from tessera.ingest.sinks import Sink

log = logging.getLogger(__name__)

#: After a schema error, the schema is fetched again at most this often (a feature may have
#: been added since the last fetch).
SCHEMA_RECHECK_S = 1.0


class SchemaCache:
    """The current schema of `feature_group`, fetched through `sink`."""

    def __init__(
        self, sink: Sink, feature_group: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sink = sink
        self._feature_group = feature_group
        self._clock = clock
        self._lock = threading.Lock()
        self._schema: CompiledSchema | None = None
        self._fetched_at = 0.0

    def load(self, stop: threading.Event, initial_s: float, max_s: float) -> bool:
        """Fetch the schema, retrying with backoff until it is there; False if `stop` is set
        first."""
        delay = initial_s
        while not stop.is_set():
            if self.refresh():
                return True
            stop.wait(delay)
            delay = min(max_s, delay * 2)
        return False

    def refresh(self) -> bool:
        """Fetch the schema again; False (the old one kept) when the sink cannot give it."""
        with self._lock:
            self._fetched_at = self._clock()
        try:
            schema = self._sink.schema(self._feature_group)
        except TesseraError as exc:
            log.warning(
                "ingest: cannot get the schema of '%s': %s", self._feature_group, exc.message
            )
            return False
        except Exception:
            log.exception("ingest: cannot get the schema of '%s'", self._feature_group)
            return False
        with self._lock:
            self._schema = schema
        return True

    def current(self) -> CompiledSchema:
        with self._lock:
            schema = self._schema
        if schema is None:
            raise RuntimeError("the schema is not loaded")
        return schema

    def age_s(self) -> float:
        """Seconds since the last fetch was attempted."""
        with self._lock:
            return self._clock() - self._fetched_at

    def is_stale(self) -> bool:
        """True when a schema error is worth a fetch (the last one is SCHEMA_RECHECK_S old)."""
        return self.age_s() >= SCHEMA_RECHECK_S
