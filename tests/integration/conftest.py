"""Fixtures of the wire-level integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.wire_helpers import Wire
from tests.serverproc import ServerProcess


@pytest.fixture
def wire(server: ServerProcess) -> Iterator[Wire]:
    """A channel, stub and HTTP client on the session's server."""
    w = Wire(server.grpc_target, server.http_url)
    yield w
    w.close()


_PER_PROCESS_METRICS = (
    "/metrics is per process: a scrape shows the serving process that answered it, not the one "
    "that served the gRPC call, nor the writer process's counters (metrics are not aggregated "
    "across the processes of --workers N yet)")
_ONE_BUSY_PROCESS = (
    "the test's premise is one busy process: with two serving processes the short read may "
    "land on the idle one and answer within its deadline")
_COMPACTION = (
    "compaction is not served by serving processes yet: it swaps folders under the flusher's "
    "lock, which lives in the writer process")

#: Tests of the shared `server` / `fresh_server` that cannot pass with --workers 2 yet, and why.
WORKERS2_XFAIL = {
    "test_aggregations.py::test_events_later_than_the_bound_are_dropped_and_counted":
        _PER_PROCESS_METRICS,
    "test_compact_bounds.py::test_compact_accepts_min_files_in_bounds": _COMPACTION,
    "test_deadlines.py::test_server_answers_deadline_exceeded_for_a_read_past_its_deadline":
        _PER_PROCESS_METRICS,
    "test_deadlines.py::test_sdk_raises_deadline_exceeded_when_the_deadline_is_spent":
        _ONE_BUSY_PROCESS,
    "test_deadlines.py::test_async_sdk_raises_deadline_exceeded_when_the_deadline_is_spent":
        _ONE_BUSY_PROCESS,
    "test_read_your_writes.py::test_a_read_with_the_token_returns_the_write":
        _PER_PROCESS_METRICS,
    "test_read_your_writes.py::test_a_token_from_the_future_is_failed_precondition_at_once":
        _PER_PROCESS_METRICS,
    "test_read_your_writes.py::test_the_async_client_keeps_and_passes_its_token":
        _PER_PROCESS_METRICS,
    "test_server_rpcs.py::test_metrics_count_requests_and_latency_per_rpc":
        _PER_PROCESS_METRICS,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.nodeid.endswith("[workers2]"):
            continue
        test = item.nodeid.split("/")[-1].rsplit("[", 1)[0]
        reason = WORKERS2_XFAIL.get(test)
        if reason is not None:
            # not strict: some pass by chance (the call and the scrape on one process)
            item.add_marker(pytest.mark.xfail(reason=f"--workers 2: {reason}", strict=False))
