"""Tessera's performance suite: `python -m benchmarks.run` (see benchmarks/README.md)."""
