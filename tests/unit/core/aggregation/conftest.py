from __future__ import annotations

import pytest

from tessera.core.aggregation.warmup import WarmUp, warm_up


@pytest.fixture(scope="session", autouse=True)
def warmed() -> WarmUp:
    """Compile (or load) the kernels once for the whole session, as the server does."""
    return warm_up()
