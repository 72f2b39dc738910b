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


@pytest.fixture(scope="session", autouse=True)
def aggregation_kernels() -> None:
    """Compile the aggregation kernels once, in this process, before any server starts: Numba
    caches them on disk, so every server process the tests start loads them (~0.3 s) instead of
    compiling them (~20 s each, which a server does before it reports ready)."""
    from tessera.core.aggregation.warmup import warm_up

    warm_up()
