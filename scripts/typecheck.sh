#!/usr/bin/env bash
# mypy over the tessera.* packages. The folders are mapped to tessera.* by pyproject.toml, which
# mypy cannot follow through an editable install, so a tree of symlinks stands in for the package.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/tessera
mkdir -p "$tree"
for d in core server client ingest; do ln -sfn "../../../$d" "$tree/$d"; done
ln -sfn ../../../proto/tessera "$tree/proto"
MYPYPATH=build/typecheck exec "${PYTHON:-.venv/bin/python}" -m mypy \
  -p tessera.core -p tessera.server -p tessera.client -p tessera.ingest
