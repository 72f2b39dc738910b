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
