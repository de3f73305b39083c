#!/usr/bin/env bash
# Installs llama.cpp's Python binding and its OpenAI-compatible server (llama-cpp-python[server],
# built from PyPI's source package: cmake and a C++ compiler, about 10-20 minutes on 2 cores the
# first time) into a cached venv, for the GGUF export and remote-engine tests. Idempotent: prints
# `python=PATH` (the venv's interpreter) as its last line once the packages import.
set -euo pipefail
VERSION=0.3.36
VENV="${FORESIGHT_LLAMA_VENV:-$HOME/.cache/foresight/venv-llama}"
PY="$VENV/bin/python"
if [ -x "$PY" ] && "$PY" -c "import llama_cpp, llama_cpp.server, uvicorn; assert llama_cpp.__version__ == '$VERSION'" 2>/dev/null; then
  echo "python=$PY"
  exit 0
fi
python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
# The CPU build only: no examples, tests or tools of llama.cpp beyond what the binding loads.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=ON}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
"$PY" -m pip install -q "llama-cpp-python[server]==$VERSION"
"$PY" -c "import llama_cpp, llama_cpp.server, uvicorn; print('llama_cpp', llama_cpp.__version__)"
echo "python=$PY"
