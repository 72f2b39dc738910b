from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.client import OfflineStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The offline store's folder (not created: a test may check a store that does not exist)."""
    return tmp_path / "offline"


@pytest.fixture
def store(root: Path) -> Iterator[OfflineStore]:
    root.mkdir(parents=True, exist_ok=True)
    with OfflineStore(root, progress=False) as off:
        yield off
