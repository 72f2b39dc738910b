"""server/process_metrics.py: one exposition of every process's metrics, labelled by process;
endpoints that do not answer are skipped and counted (real Unix sockets)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tessera.server.process_metrics import MetricsEndpoint, ServiceMetrics, merge


def _registry(calls: int) -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("t_calls_total", "calls", ["method"], registry=reg).labels("Get").inc(calls)
    Histogram("t_seconds", "latency", buckets=(0.1,), registry=reg).observe(0.05 * calls)
    Gauge("t_pending", "pending", registry=reg).set(calls)
    return reg


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_merge_labels_every_sample_with_its_process_and_keeps_each_family_once() -> None:
    out = merge({"serving-1": generate_latest(_registry(1)),
                 "writer": generate_latest(_registry(2))},
                {"serving-1": True, "writer": True, "consumer": False})
    got = _samples(out)
    assert got[("t_calls_total", (("method", "Get"), ("process", "serving-1")))] == 1.0
    assert got[("t_calls_total", (("method", "Get"), ("process", "writer")))] == 2.0
    assert got[("t_seconds_count", (("process", "writer"),))] == 1.0
    assert got[("t_seconds_bucket", (("le", "0.1"), ("process", "serving-1")))] == 1.0
    assert got[("t_pending", (("process", "writer"),))] == 2.0
    assert got[("tessera_metrics_process_up", (("process", "consumer"),))] == 0.0
    assert got[("tessera_metrics_process_up", (("process", "writer"),))] == 1.0
    assert got[("tessera_metrics_processes_unreachable", ())] == 1.0
    assert out.decode().count("# TYPE t_calls_total counter") == 1


def test_an_unreadable_exposition_is_skipped_and_counted() -> None:
    out = merge({"serving-1": generate_latest(_registry(1)), "writer": b"t_calls_total{oops 1\n"},
                {"serving-1": True, "writer": True})
    got = _samples(out)
    assert got[("tessera_metrics_process_up", (("process", "writer"),))] == 0.0
    assert not any(dict(labels).get("process") == "writer" and name == "t_calls_total"
                   for name, labels in got)


def test_scrape_gathers_endpoints_and_skips_the_silent_and_the_missing(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts, never answers
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)

    async def main() -> bytes:
        endpoint = MetricsEndpoint(tmp_path / "writer.sock", _registry(7))
        await endpoint.start()
        try:
            scraper = ServiceMetrics("serving-1", _registry(1), {
                "writer": tmp_path / "writer.sock", "serving-2": tmp_path / "silent.sock",
                "consumer": tmp_path / "absent.sock"}, timeout_s=0.5)
            return await scraper.scrape()
        finally:
            await endpoint.stop()

    try:
        got = _samples(asyncio.run(main()))
    finally:
        silent.close()
    assert got[("t_calls_total", (("method", "Get"), ("process", "writer")))] == 7.0
    assert got[("t_calls_total", (("method", "Get"), ("process", "serving-1")))] == 1.0
    assert got[("tessera_metrics_processes_unreachable", ())] == 2.0
    assert got[("tessera_metrics_process_up", (("process", "serving-2"),))] == 0.0
    assert not (tmp_path / "writer.sock").exists()  # removed by stop
