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


# Which tessera packages each package may import: exactly DESIGN.md's arrows (proto <- core <-
# client, core <- server, ingest -> client + core, server -> ingest). The server does not import
# the client SDK.
ALLOWED = {
    "proto": {"proto"},
    "core": {"proto", "core"},
    "client": {"proto", "core", "client"},
    "ingest": {"proto", "core", "client", "ingest"},
    "server": {"proto", "core", "ingest", "server"},
}

# The command-line modules compose everything (`tessera demo` and `tessera dataset` call the SDK,
# `tessera ingest` runs the standalone consumer): they alone may also import the client.
COMMAND_LINE = {"server/cli.py", "server/cli_offline.py", "server/cli_stats.py", "server/demo.py"}
COMMAND_LINE_ALLOWED = ALLOWED["server"] | {"client"}


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
            name = path.relative_to(root).as_posix()
            allowed = COMMAND_LINE_ALLOWED if name in COMMAND_LINE else ALLOWED[package]
            for imported in _tessera_imports(path) - allowed:
                violations.append(f"{path.relative_to(root)} imports tessera.{imported}")
    assert not violations, "\n".join(violations)


def test_the_command_line_exception_names_existing_modules_only() -> None:
    root = Path(__file__).resolve().parents[2]
    assert all((root / name).is_file() for name in COMMAND_LINE), "a stale exception"


def _client_modules_loaded_by(statements: str) -> list[str]:
    code = (
        "import sys\n"
        f"{statements}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['tessera', 'client']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_server_app_does_not_load_the_client() -> None:
    assert _client_modules_loaded_by("import tessera.server.app") == []


def test_the_embedded_ingest_path_does_not_load_the_client() -> None:
    # What `tessera serve` loads when it consumes Kafka itself, and every server module but the
    # command-line ones.
    root = Path(__file__).resolve().parents[2]
    modules = sorted(
        f"tessera.server.{p.stem}" for p in (root / "server").glob("*.py")
        if f"server/{p.name}" not in COMMAND_LINE and p.name != "__main__.py"  # runs the CLI
    )
    statements = "\n".join(
        [f"import {m}" for m in modules]
        + ["import tessera.ingest.runner", "import tessera.ingest.consumer",
           "from tessera.ingest import run_consumers, IngestMetrics, Sink, SinkRecord"]
    )
    assert _client_modules_loaded_by(statements) == []


def test_the_standalone_sink_does_load_the_client() -> None:
    # The check above can fail: the one ingest module built on the SDK is seen loading it.
    assert "tessera.client" in _client_modules_loaded_by("import tessera.ingest.grpc_sink")
