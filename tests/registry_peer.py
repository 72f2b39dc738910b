"""Another serving process's registry, for tests: a `RemoteRegistry` over a secondary of its
own whose timer never catches up (a minute), answering lookups read from stdin, one a line:

    schema NAME  -> "found <group id> <features, comma-separated>" or "missing"
    newer NAME   -> the schema it holds, then `newer_schema` of it: "newer <features>" or "none"
    stats        -> "stats <forced refreshes> <reloads>"

Run: python -m tests.registry_peer DATA_DIR SCRATCH_DIR (prints "ready" first)."""

from __future__ import annotations

import sys
from pathlib import Path

from tessera.core.errors import FeatureGroupNotFoundError
from tessera.server.process_store import ProcessOnlineStore
from tessera.server.registry_client import RemoteRegistry


def main() -> None:
    data_dir, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    store = ProcessOnlineStore(data_dir, scratch, catch_up_interval_s=60.0, block_cache_mb=8)
    registry = RemoteRegistry(store.reader, store.writer)
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            command, _, name = line.strip().partition(" ")
            if command == "stats":
                print(f"stats {registry.forced_refreshes} {registry.reloads}", flush=True)
                continue
            try:
                schema = registry.schema(name)
            except FeatureGroupNotFoundError:
                print("missing", flush=True)
                continue
            if command == "schema":
                print(f"found {schema.group_id} {','.join(schema.features)}", flush=True)
            else:
                newer = registry.newer_schema(schema)
                print("none" if newer is None else f"newer {','.join(newer.features)}",
                      flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main()
