from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

_names = itertools.count()


#: `tessera serve --workers N` for N in these: one process, and a supervisor with a writer
#: process and two serving processes (server/supervisor.py).
WORKERS = [pytest.param(1, id="workers1"), pytest.param(2, id="workers2")]


@pytest.fixture(scope="session", params=WORKERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One real server shared by the session (tests use their own feature groups), once per
    process layout."""
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "data",
                         workers=request.param).start()
    yield proc
    proc.stop()


@pytest.fixture(params=WORKERS)
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for crash and restart tests, once per process layout."""
    proc = ServerProcess(tmp_path / "data", workers=request.param)
    yield proc
    proc.kill()


@pytest.fixture
def unique_group_name(request: pytest.FixtureRequest) -> str:
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40].strip("_")
    return f"{base}_{next(_names)}"


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Compile every Numba kernel the server loads at start-up once, in this process, before any
    server starts: the aggregation kernels, the compiled record validation and the history
    columns decoder. Numba caches them on disk, so every server process the tests start loads
    them (under a second) instead of compiling them (~1 min of CPU after a fresh install, which
    a server does before it reports ready). `make install` has usually done it already."""
    from tessera.server.warm import compile_kernels

    compile_kernels()
