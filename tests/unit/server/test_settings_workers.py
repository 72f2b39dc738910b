"""`server.workers` defaults to the number of cores; `--workers 1` / the environment override."""

from __future__ import annotations

import os

import pytest

from tessera.server.settings import MAX_WORKERS, ServerSettings, Settings


def test_workers_default_to_the_number_of_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_SERVER__WORKERS", raising=False)
    assert Settings().server.workers == max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@pytest.mark.parametrize(("cores", "workers"), [(None, 1), (1, 1), (8, 8), (1024, MAX_WORKERS)])
def test_workers_default_is_at_least_one_and_at_most_the_bound(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, workers: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert ServerSettings().workers == workers


def test_the_environment_sets_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_SERVER__WORKERS", "1")
    assert Settings().server.workers == 1
