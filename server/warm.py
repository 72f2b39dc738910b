"""Compile every Numba kernel a Tessera server loads, once, into Numba's on-disk cache:
`python -m tessera.server.warm` (`make install` runs it). A server process then loads them in
about a second instead of compiling them before it reports ready (~1 min of CPU after a fresh
install: the PutRecords, history and JSON-answer kernels compile when their modules are
imported, the aggregation kernels and the Kafka batch encoder when first loaded)."""

from __future__ import annotations

import time


def compile_kernels() -> None:
    """Import or load every kernel (each compiles, or loads from the cache)."""
    import tessera.server.batch_kernels  # noqa: F401  (compiles its kernels when imported)
    import tessera.server.history_kernels  # noqa: F401  (likewise)
    import tessera.server.record_json_kernels  # noqa: F401  (likewise: the JSON read answers)
    from tessera.ingest import json_batch
    from tessera.server.aggregates import ensure_kernels

    ensure_kernels()
    json_batch.load()  # the Kafka consumer's whole-batch JSON encoding


def main() -> None:
    start = time.monotonic()
    compile_kernels()
    print(f"tessera: kernels compiled or loaded in {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
