#!/usr/bin/env bash
# Installs the Python packages the LSP integration tests use (pytest-lsp and friends).
# Idempotent: does nothing when they are already importable. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if "$PY" -c 'import pytest, pytest_lsp, pygls, lsprotocol; from lsprotocol.types import InlineCompletionParams' 2>/dev/null; then
  echo "lsp test deps: already installed"
  exit 0
fi
"$PY" -m pip install --quiet --disable-pip-version-check -r tests/lsp/requirements.txt
"$PY" -c 'import pytest_lsp; from lsprotocol.types import InlineCompletionParams' && echo "lsp test deps: installed"
