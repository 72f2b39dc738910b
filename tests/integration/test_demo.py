"""`make run`'s demo, against a real server: what it prints is what the server did."""

from __future__ import annotations

import pytest

from tessera.server.demo import run_demo
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("compiled_kernels")]


def test_the_demo_runs_and_can_run_again(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    run_demo(server.grpc_target, server.http_url)
    first = capsys.readouterr().out
    assert "put_records wrote 1000 records in bulk" in first
    assert "applied=False (the newer record stays" in first
    # u1: its put (clicks 3, ctr 0.1) and the older one (clicks 99, no ctr) are both events.
    assert "clicks: 3, " in first and "clicks_sum_1h: 102, events_1h: 2, ctr_mean_1d: 0.1" in first
    assert "u2: clicks=2, u500: clicks=500 ('nobody' is simply absent)" in first
    assert "soft-deleted u2; get u2 -> None" in first
    run_demo(server.grpc_target, server.http_url)
    again = capsys.readouterr().out
    assert "deleted the previous run's feature group 'demo_users'" in again
    assert "clicks_sum_1h: 102, events_1h: 2" in again  # a new group: its aggregates start over
