"""`/metrics` of `tessera serve --workers N`: every scrape shows the whole service.

Each child process (writer, history, serving-1..N, consumer: server/supervisor.py) runs a
`MetricsEndpoint`: a Unix socket `<data_dir>/run/metrics/<process>.sock`. A client connects;
the endpoint writes its process's registry as Prometheus text and closes (connecting is the
request: nothing to parse, nothing to version). A thread of its own, so a busy event loop
does not hold other processes' scrapes.

The serving process that answers `GET /metrics` (`ServiceMetrics.scrape`) reads every other
process's endpoint at once (at most `timeout_s` each, concurrently), parses each exposition
with prometheus_client's parser and renders them all, its own included, as one exposition in
which every sample carries a `process` label (`writer`, `serving-1`, `consumer`, ...).

Why a label per process and not sums: gauges do not add up (each serving process reports
`tessera_feature_groups` of the same registry; the writer's `tessera_offline_outbox_pending_rows`
is the writer's alone), while counters and histograms per process are summed by PromQL
exactly (`sum without (process) (rate(...))`), and counter resets of a restarted child stay
per series, where `rate()` handles them; summed in Tessera, a restart would look like a counter
going backwards. A per-process series also shows a stuck or overloaded process.

A process that does not answer (dead, restarting, slower than `timeout_s`) is skipped; the
scrape still answers, with `tessera_metrics_process_up{process=...}` 0 for it (1 for those
gathered) and `tessera_metrics_processes_unreachable`, the number skipped.

`--workers 1` does not use this module: its `/metrics` is its registry, unlabelled, as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tessera.server import metrics
from tessera.server.settings import Settings
from tessera.server.writer_ipc import reachable

log = logging.getLogger(__name__)

PROCESS_LABEL = "process"
WRITER, HISTORY, CONSUMER = "writer", "history", "consumer"


def serving_name(index: int) -> str:
    return f"serving-{index}"


def endpoint_path(run_dir: Path, process: str) -> Path:
    """Where `process` exposes its metrics."""
    return run_dir / "metrics" / f"{process}.sock"


def service_processes(settings: Settings) -> list[str]:
    """The processes of the service `settings` describe (the supervisor's layout)."""
    names = [WRITER, HISTORY, *(serving_name(i) for i in range(1, settings.server.workers + 1))]
    if settings.ingest is not None:
        names.append(CONSUMER)
    return names


class MetricsEndpoint:
    """Serves `registry`'s exposition on the Unix socket `path` (module docstring); a role."""

    def __init__(self, path: Path, registry: CollectorRegistry, send_timeout_s: float = 5.0):
        self.name = "metrics endpoint"
        self.path = path
        self._registry = registry
        self._send_timeout_s = send_timeout_s
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a killed predecessor
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with reachable(self.path) as name:
                listener.bind(name)
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, args=(listener,),
                                        name="tessera-metrics-endpoint", daemon=True)
        self._thread.start()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            with conn:
                try:
                    conn.settimeout(self._send_timeout_s)
                    conn.sendall(generate_latest(self._registry))
                except OSError as exc:  # the scraper gave up: its loss
                    log.debug("metrics endpoint: sending failed: %s", exc)
                except Exception:  # a failing collector must not end the endpoint
                    log.exception("metrics endpoint: rendering the metrics failed")

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self.path.unlink(missing_ok=True)

    async def died(self) -> str:
        while self._thread is None or self._thread.is_alive():
            await asyncio.sleep(0.5)
        return "the metrics endpoint stopped accepting"


async def read_endpoint(path: Path, timeout_s: float) -> bytes:
    """One process's exposition (OSError or TimeoutError when it does not answer in time)."""

    async def read() -> bytes:
        with reachable(path) as name:
            reader, writer = await asyncio.open_unix_connection(name)
        try:
            return await reader.read()
        finally:
            writer.close()

    return await asyncio.wait_for(read(), timeout_s)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(expositions: dict[str, bytes], up: dict[str, bool]) -> bytes:
    """One exposition of every process's (`process` label added to each sample), with
    `tessera_metrics_process_up` and `tessera_metrics_processes_unreachable` from `up`."""
    up = dict(up)
    families: dict[str, Metric] = {}
    for process, text in expositions.items():
        try:  # parsed whole first: a process's samples are all in, or none
            parsed = list(text_string_to_metric_families(text.decode("utf-8")))
        except ValueError:  # a truncated answer (the process died while sending): skipped
            log.warning("the metrics of the %s process are unreadable: skipped", process)
            up[process] = False
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
            merged.samples.extend(
                s._replace(labels={**s.labels, PROCESS_LABEL: process}) for s in family.samples)
    metrics.latest_drift(families, PROCESS_LABEL)  # service-wide gauges: shown once
    gathered = Metric("tessera_metrics_process_up",
                      "1 when this scrape gathered the process's metrics, 0 when it did not "
                      "answer in time (dead, restarting or overloaded).", "gauge")
    for process, ok in up.items():
        gathered.add_sample(gathered.name, {PROCESS_LABEL: process}, 1.0 if ok else 0.0)
    unreachable = Metric("tessera_metrics_processes_unreachable",
                         "Processes whose metrics this scrape could not gather.", "gauge")
    unreachable.add_sample(unreachable.name, {}, float(sum(not ok for ok in up.values())))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), gathered, unreachable]))
    return generate_latest(registry)


class ServiceMetrics:
    """What a serving process answers `GET /metrics` with (module docstring)."""

    def __init__(self, own: str, registry: CollectorRegistry, peers: dict[str, Path],
                 timeout_s: float = 1.0) -> None:
        self.own = own
        self._registry = registry
        self._peers = peers  # process -> its endpoint
        self._timeout_s = timeout_s

    @classmethod
    def for_serving(cls, settings: Settings, run_dir: Path, index: int,
                    registry: CollectorRegistry) -> ServiceMetrics:
        own = serving_name(index)
        peers = {p: endpoint_path(run_dir, p) for p in service_processes(settings) if p != own}
        return cls(own, registry, peers)

    async def scrape(self) -> bytes:
        names = list(self._peers)
        answers = await asyncio.gather(
            *(read_endpoint(self._peers[n], self._timeout_s) for n in names),
            return_exceptions=True)
        expositions = {self.own: generate_latest(self._registry)}
        up = {self.own: True}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, bytes):
                expositions[name] = answer
                up[name] = True
            else:
                log.debug("metrics of the %s process not gathered: %r", name, answer)
                up[name] = False
        return await asyncio.to_thread(merge, expositions, up)
