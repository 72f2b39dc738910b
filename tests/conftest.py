from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server process shared by the session (tests use their own feature groups)."""
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server process of the test's own, for crash and restart tests."""
    proc = ServerProcess(tmp_path / "data")
    yield proc
    proc.kill()


@pytest.fixture
def unique_group_name(request: pytest.FixtureRequest) -> str:
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40].strip("_")
    return f"{base}_{next(_names)}"


@pytest.fixture(scope="session")
def aggregation_kernels() -> None:
    """Compile the aggregation kernels once, in this process: Numba caches them on disk, so the
    server processes the tests start load them (~0.3 s) instead of compiling (~15 s each)."""
    from tessera.core.aggregation.warmup import warm_up

    warm_up()
