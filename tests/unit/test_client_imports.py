"""tessera.client imports with the client's dependencies only, and never imports the server."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_client_imports_without_server_dependencies() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("rocksdict", "numba", "fastapi", "uvicorn", "duckdb"):
            sys.modules[name] = None  # importing it now raises ImportError
        import tessera.client
        from tessera.client import FeatureStoreClient, AsyncFeatureStoreClient, BatchGetResult
        loaded = sorted(m for m in sys.modules if m.startswith("tessera.server"))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
