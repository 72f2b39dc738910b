"""tessera.client imports without the server's heavy dependencies installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BLOCKED = ["rocksdict", "numba", "fastapi", "uvicorn", "duckdb", "confluent_kafka"]


def test_client_imports_without_server_dependencies() -> None:
    code = (
        "import sys\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None  # makes `import name` fail\n"
        "import tessera.client\n"
        "from tessera.client import FeatureStoreClient, AsyncFeatureStoreClient\n"
        "assert not any(m.startswith('tessera.server') for m in sys.modules), 'server imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Which tessera packages each package may import (DESIGN.md: proto <- core <- client,
# core <- server, ingest -> client + core, server -> ingest).
ALLOWED = {
    "proto": {"proto"},
    "core": {"proto", "core"},
    "client": {"proto", "core", "client"},
    "ingest": {"proto", "core", "client", "ingest"},
    "server": {"proto", "core", "client", "ingest", "server"},
}


def _tessera_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tessera" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_packages_import_only_in_the_allowed_direction() -> None:
    root = Path(__file__).resolve().parents[2]
    folders = {"proto": root / "proto" / "tessera", "core": root / "core",
               "client": root / "client", "ingest": root / "ingest", "server": root / "server"}
    violations = []
    for package, folder in folders.items():
        for path in folder.rglob("*.py"):
            for imported in _tessera_imports(path) - ALLOWED[package]:
                violations.append(f"{path.relative_to(root)} imports tessera.{imported}")
    assert not violations, "\n".join(violations)
