#!/usr/bin/env bash
# Installs what the LSP integration tests use: the Python packages (pytest-lsp and friends) and
# headless Neovim 0.12 (scripts/install_nvim.sh, shared with the editor tests). Idempotent: each part does nothing when it
# is already there. Called by .ci/run (through scripts/test) before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if "$PY" -c 'import pytest, pytest_lsp, pygls, lsprotocol; from lsprotocol.types import InlineCompletionParams' 2>/dev/null; then
  echo "lsp test deps: python packages already installed"
else
  "$PY" -m pip install --quiet --disable-pip-version-check -r tests/lsp/requirements.txt
  "$PY" -c 'import pytest_lsp; from lsprotocol.types import InlineCompletionParams'
  echo "lsp test deps: python packages installed"
fi
if [ "${FORESIGHT_SKIP_NVIM:-0}" != 1 ]; then
  scripts/install_nvim.sh >&2
  echo "lsp test deps: neovim at ${FORESIGHT_CACHE:-$HOME/.cache/foresight}/bin/nvim-0.12"
fi
